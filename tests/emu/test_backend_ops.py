"""The runner times every container call it makes to an agent (``emulator_lag.ops``).

No root: the testbed is a stand-in that answers the container calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from overlaysim.agent.control import ControlError
from overlaysim.emu.backend import EmuBackend
from overlaysim.scenario.loader import load_scenario
from overlaysim.world.container import Container

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"


class SlowTestbed:
    """Answers ``task``/``disconnect``/``connect`` after ``delay`` seconds."""

    underlay = SimpleNamespace()

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fail = False

    def call(self, host: str, op: str, **args: Any) -> Any:
        self.calls.append((host, op, args))
        time.sleep(self.delay)
        if self.fail:
            raise ControlError("BadRequest", "no such container")
        if op == "task":
            return {
                "netns": "ns",
                "networks": [{"network": n, "ip": "10.0.0.9"} for n in args["networks"]],
            }
        if op == "connect":
            return {"ip": "10.0.1.9"}
        return {}


def test_container_calls_are_timed_with_host_verb_container_and_network() -> None:
    tb = SlowTestbed(0.05)
    backend = EmuBackend(load_scenario(QUICKSTART), tb)  # type: ignore[arg-type]
    c = Container("c1", "h2")
    backend.attach(c, ["web"], ())  # before the timeline: set-up, not timed
    assert backend.agent_ops() == []
    backend.t0 = time.monotonic() - 10.0
    c.live = True
    backend.attach(c, ["db"], ())
    backend.detach(c, "db", live=True, last=False)
    tb.fail = True
    with pytest.raises(ControlError):  # a refused call took its time too
        backend.detach(c, "web", live=True, last=True, stay=True)
    ops = backend.agent_ops()
    assert [(o.host, o.op, o.container, o.network) for o in ops] == [
        ("h2", "connect", "c1", "db"),
        ("h2", "disconnect", "c1", "db"),
        ("h2", "disconnect", "c1", "web"),
    ]
    assert all(o.took_s >= 0.05 and 10.0 <= o.at < 11.0 for o in ops)
    assert ops[0].at < ops[1].at < ops[2].at
    # the agent got the same requests as before (the world plays the leave later)
    assert tb.calls[3] == (
        "h2",
        "disconnect",
        {"container": "c1", "network": "web", "stay": True},
    )
    tb.fail = False
    backend.leave_network("h2", "web")  # a host's own call: no container
    last = backend.agent_ops()[-1]
    assert (last.host, last.op, last.container, last.network) == ("h2", "leave_network", "", "web")
    assert tb.calls[-1] == ("h2", "leave_network", {"network": "web"})
