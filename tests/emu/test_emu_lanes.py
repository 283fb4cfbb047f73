"""The emulator's timeline does not wait for one host's slow steps (no root).

The world plays the emulator's backend over a testbed whose "agents" are ``sleep``
processes: a new agent answers after ``ANSWER_S`` (a real one takes about a second),
a container takes ``TASK_S``. The test plays a timed plan with the runner's own
``play`` and reads the lags the world measured: steps on other hosts are not delayed
by a restart, a step on the restarting host waits for it (each host's order kept),
and both the step's applied time and the agent's start time are recorded.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from overlaysim.emu.runner import EmuWorld, play
from overlaysim.emu.testbed import Testbed, TestbedError
from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.steps import Attach, Crash, Detach, Restart
from overlaysim.scenario.timeline import plan

ANSWER_S = 1.2  # a fresh agent's time to answer on its control socket
TASK_S = 0.05  # an agent's time to create a container


class FakeUnderlay:
    def __init__(self, tmp: Path) -> None:
        self.record = SimpleNamespace(path=tmp / "underlay.jsonl")
        self.plan = SimpleNamespace(prefix="osimzz")
        self.hosts = ["h1", "h2", "h3", "h4"]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.links: list[tuple[str, str, str]] = []  # (op, host, thread name)
        self.impairments = SimpleNamespace(
            crash_links=lambda h: self.links.append(("crash", h, _thread())),
            restore_links=lambda h: self.links.append(("restore", h, _thread())),
        )

    def underlay_ip(self, host: str) -> str:
        return "10.0.0." + host[1:]

    def spawn_agent(self, host: str, argv: Any, stderr: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "60"])
        self.procs.append(proc)
        return proc


def _thread() -> str:
    return threading.current_thread().name


SCENARIO = {
    "name": "lanes",
    "duration": 5,
    "topology": {"generator": "star", "hosts": 4},
    "networks": [{"name": "web", "subnet": "10.10.0.0/24"}],
    "containers": [{"name": "c1", "host": "h1", "networks": ["web"]}],
}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    underlay = FakeUnderlay(tmp_path)
    tb = Testbed(underlay, managers=["h1"], fork_agents=True)  # type: ignore[arg-type]
    calls: list[tuple[float, str, str, dict[str, Any]]] = []
    fail: dict[str, BaseException] = {}

    def call(self: Testbed, host: str, op: str, **args: Any) -> Any:
        calls.append((time.monotonic(), host, op, args))
        if op == "manager" and args["call"] == "network_create":
            spec = args["args"]["spec"]
            return {"name": spec["name"], "vni": 4097, "subnet": spec["subnet"], "gateway": ""}
        if op == "task":
            if args["container"] in fail:
                raise fail[args["container"]]
            time.sleep(TASK_S)
            n = sum(1 for c in calls if c[2] == "task")
            nets = [{"network": net, "ip": f"10.10.0.{n + 1}"} for net in args["networks"]]
            return {"netns": f"ns-{args['container']}", "networks": nets}
        return {}

    def wait_ready(self: Testbed, hosts: Any, timeout: float = 60.0) -> dict[str, float]:
        out = {}
        for h in hosts:
            spawned = self.agents[h].spawned
            while time.monotonic() < spawned + ANSWER_S:
                if not self.agents[h].running():
                    raise TestbedError(f"the agent on {h} exited")
                time.sleep(0.02)
            out[h] = spawned + 0.1  # its log's start line: soon after the spawn
        return out

    monkeypatch.setattr(Testbed, "call", call)
    monkeypatch.setattr(Testbed, "wait_ready", wait_ready)
    monkeypatch.setattr(Testbed, "wait_formed", lambda self, hosts, timeout=60.0: 0.0)
    monkeypatch.setattr(Testbed, "_clean_kernel", lambda self, host: None)
    monkeypatch.setattr(Testbed, "argv", lambda self, host, seeds, keyed=True: ["sleep"])
    sc = validate_scenario(SCENARIO)
    w = EmuWorld(sc, 1, tb)
    w.boot(plan(sc, 1))
    w.fake = SimpleNamespace(underlay=underlay, calls=calls, fail=fail)  # type: ignore[attr-defined]
    yield w
    tb.stop(timeout=1.0)
    w.close()
    for p in underlay.procs:
        p.kill()
        p.wait()


def _lag(world: EmuWorld, action: str, at: float) -> float:
    (lag,) = [x.lag_s for x in world.lags if x.action == action and x.at == at]
    return lag


def test_steps_after_a_restart_are_not_delayed_and_the_restarted_host_keeps_its_order(
    world: EmuWorld,
) -> None:
    t0 = world.emu.t0
    assert t0 is not None
    world.emu.t0 = time.monotonic()  # the timeline starts now (boot took real time)
    steps = [
        Crash(at=0.1, host="h2"),
        Restart(at=0.3, host="h2"),
        Attach(at=0.4, container="c5", host="h3", network="web"),
        Attach(at=0.5, container="c6", host="h2", network="web"),  # waits for h2
        Detach(at=0.6, container="c5", network="web"),
        Attach(at=0.7, container="c7", host="h4", network="web"),
    ]
    play(world, steps, duration=0.8)
    world.settle()

    (start,) = world.starts
    took = start.done - start.applied  # the restart's real duration, measured here
    assert took >= ANSWER_S
    others = [_lag(world, "attach", 0.4), _lag(world, "detach", 0.6), _lag(world, "attach", 0.7)]
    assert max(others) < took / 4, (others, took)  # before: each waited out the restart
    assert _lag(world, "restart", 0.3) < took / 4
    # the step on h2 itself ran after its restart, not before (its lag counts the wait)
    assert _lag(world, "attach", 0.5) >= start.done - 0.5 - 0.05
    tasks = [(t, host, a["container"]) for t, host, op, a in world.fake.calls if op == "task"]  # type: ignore[attr-defined]
    c6 = next(t for t, _, name in tasks if name == "c6")
    assert c6 >= t0 + 0 and c6 >= world.emu.t0 + start.done - 0.05
    assert world.containers["c6"].live and "c5" not in world.containers
    # the lags are in the plan's order, one per step
    assert [x.at for x in world.lags] == [s.at for s in steps]

    # the applied time and the agent's start are both in the ground truth
    (row,) = [r for r in world.events.rows if r[2] == "node_restart"]
    assert row[0] == pytest.approx(start.started)
    assert '"applied"' in row[7] and start.applied == pytest.approx(0.3, abs=0.1)
    assert start.applied < start.started <= start.done
    # links come back on the timeline's thread (impairments change only there)
    restores = [x for x in world.fake.underlay.links if x[0] == "restore"]  # type: ignore[attr-defined]
    assert restores == [("restore", "h2", threading.main_thread().name)]


def test_an_error_on_a_lane_surfaces_once_and_a_refusal_is_a_skip(world: EmuWorld) -> None:
    world.emu.t0 = time.monotonic()
    world.fake.fail["c8"] = OSError("agent gone")  # type: ignore[attr-defined]
    world.fake.fail["c9"] = RuntimeError("a bug")  # type: ignore[attr-defined]
    play(world, [Attach(at=0.0, container="c8", host="h3", network="web")], duration=0.1)
    assert [s["container"] for s in world.skipped] == ["c8"]
    assert "OSError: agent gone" in world.skipped[0]["reason"]
    world.apply(Attach(at=0.1, container="c9", host="h3", network="web"))
    with pytest.raises(RuntimeError, match="a bug"):
        world.settle()
    world.settle()  # raised once


def test_stopping_during_a_restart_leaves_no_agent_behind(world: EmuWorld) -> None:
    world.emu.t0 = time.monotonic()
    world.apply(Crash(at=0.0, host="h3"))
    world.apply(Restart(at=0.0, host="h3"))
    world.apply(Restart(at=0.0, host="h4"))  # h4 runs: skipped, not started twice
    time.sleep(0.2)  # the new agent on h3 is spawned and not answering yet
    world.testbed.stop(timeout=0.1)  # before it answers
    errors = world.close()
    assert errors == []  # the lane's failure is a refusal, recorded as a skip
    assert any(s.get("host") == "h3" and "exited" in s["reason"] for s in world.skipped), (
        world.skipped
    )
    assert all(p.poll() is not None for p in world.fake.underlay.procs)  # type: ignore[attr-defined]
    with pytest.raises(TestbedError, match="stopping"):
        world.testbed.start_agent("h3", [])
