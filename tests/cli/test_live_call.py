"""Reaching a testbed's agents: what the user sees when one is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlaysim.emu.live import LiveTestbed
from overlaysim.errors import UserError


def test_an_agent_out_of_reach_is_one_line_naming_its_host(tmp_path: Path) -> None:
    sock = str(tmp_path / "h1.sock")  # never created: no agent listens there
    tb = LiveTestbed(run_id="r", owner_pid=1, manager="h1", hosts={"h1": {"control": sock}})
    with pytest.raises(UserError, match=f"cannot reach the agent of h1 at {sock}"):
        tb.call_manager("network_ls")
    with pytest.raises(UserError, match="host 'h9' is not in the running testbed"):
        tb.call("h9", "status")


def test_the_address_book_of_a_running_testbed_names_each_agent() -> None:
    import os
    from types import SimpleNamespace

    u = SimpleNamespace(underlay_ip=lambda h: f"10.0.0.{h[1:]}", pid=lambda h: 100 + int(h[1:]))
    tb = SimpleNamespace(
        underlay=u, manager_host="h1", prefix="osimx", sock=lambda h: Path(f"/run/x/{h}.sock")
    )
    live = LiveTestbed.of(tb, ("h1", "h2"), "run-1", topology="star.yaml")  # type: ignore[arg-type]
    assert (live.run_id, live.owner_pid, live.manager) == ("run-1", os.getpid(), "h1")
    assert (live.topology, live.prefix) == ("star.yaml", "osimx")
    assert live.hosts["h2"] == {
        "control": "/run/x/h2.sock",
        "underlay_ip": "10.0.0.2",
        "pid": "102",
    }
