"""Scenario services with ``publish`` and ``command`` on real agents (as root).

The World plays ``service_create`` with a published port and a task command on a
3-host star: each task runs the command (a tiny server answering with its hostname),
every host's underlay address answers on the published port (the routing mesh), a
crashed and restarted host answers again by itself, and ``service_rm`` takes the
mesh away and puts ``ip_forward`` back everywhere; a rolling update keeps its task's host
on the network (the delayed leave is cancelled, as in the simulator) and ``service_rm``
has the host leave it ``detach_delay`` later. Both run once per attachment (``veth``,
Docker's bridge, and ``macvlan``, no bridge): the mesh, VIPs and task commands must not
depend on how containers hang off the network. About 60 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import booted_world
from service_probes import knock, server

from overlaysim.emu.runner import EmuWorld
from overlaysim.scenario.steps import Crash, Restart, ServiceCreate, ServiceRm, ServiceUpdate

pytestmark = pytest.mark.emu

SCENARIO = {
    "name": "svc-world",
    "seed": 3,
    "duration": 600,
    "profile": "local",
    "topology": {"generator": "star", "hosts": 3},
    "managers": ["h1"],
    "networks": [{"name": "app", "subnet": "10.37.0.0/24"}],
}

MARK = "svc-world-server"  # in the command line, to find leftover processes
SERVER = server(MARK)


@pytest.fixture(scope="module", params=["veth", "macvlan"])
def world(request: pytest.FixtureRequest) -> Iterator[EmuWorld]:
    """The booted testbed, ``app`` with each attachment; afterwards nothing with its
    prefix, and no task command, may remain."""
    nets = [{**SCENARIO["networks"][0], "attachment": request.param}]  # type: ignore[index]
    with booted_world({**SCENARIO, "networks": nets}, 3) as w:
        yield w
    ps = subprocess.run(["pgrep", "-fa", MARK], capture_output=True, text=True)
    assert ps.stdout == "", ps.stdout  # no task command survived


def _knock(w: EmuWorld, src: str, port: int, n: int, hosts: list[str]) -> dict[str, dict]:
    ips = [w.testbed.underlay.underlay_ip(h) for h in hosts]
    out = knock(w.testbed.underlay, src, port, n, ips)
    return {h: out[ip] for h, ip in zip(hosts, ips, strict=True)}


def _until_tasks_answer(w: EmuWorld, host: str, tasks: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        seen = _knock(w, "h1", 8095, 6, [host])[host]
        if set(seen) <= tasks:
            return seen
        assert time.monotonic() < deadline, (host, seen)
        time.sleep(0.3)


def _forwarding(w: EmuWorld, host: str) -> str:
    return w.testbed.underlay.cmd(host, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()


def _apply(w: EmuWorld, step) -> None:  # type: ignore[no-untyped-def]
    """Apply ``step`` and play its later pieces (a service's next tasks) at their times,
    as the runner's driver does (``World.timeline``)."""
    w.apply(step)
    for at, work in w.timeline([]):
        time.sleep(max(0.0, at - w.backend.now()))
        work()


def test_published_port_and_task_command_from_a_scenario_step(world: EmuWorld) -> None:
    w = world
    hosts = ["h1", "h2", "h3"]
    before = {h: _forwarding(w, h) for h in hosts}
    _apply(
        w,
        ServiceCreate(
            at=w.backend.now(),
            name="web",
            network="app",
            replicas=2,
            publish=("8095:8080",),
            command=(sys.executable, "-c", SERVER),
        ),
    )
    assert w.skipped == []
    svc = w.services.by_name["web"]
    assert svc.ingress_vip is not None and svc.publish == ((8095, 8080),)
    tasks = {"web.1", "web.2"}
    for h in hosts:  # every host's underlay address, tasks on two of them
        seen = _until_tasks_answer(w, h, tasks, 20)
        print(f"{h}:8095 -> {seen}")
    spread = _knock(w, "h2", 8095, 12, hosts)
    assert {who for per in spread.values() for who in per} == tasks, spread  # both used
    # a host without a task crashes and restarts: it takes the mesh from the manager
    idle = next(h for h in hosts if h not in {w.containers[n].host for n in tasks})
    w.apply(Crash(at=w.backend.now(), host=idle))
    w.apply(Restart(at=w.backend.now(), host=idle))
    print(f"{idle} after restart: {_until_tasks_answer(w, idle, tasks, 30)}")
    _apply(w, ServiceRm(at=w.backend.now(), service="web"))
    assert w.skipped == []
    for h in hosts:
        tables = w.testbed.underlay.cmd(h, ["nft", "list", "tables"]).stdout
        assert "_ingress" not in tables, (h, tables)
    assert {h: _forwarding(w, h) for h in hosts} == before
    ps = subprocess.run(["pgrep", "-f", MARK], capture_output=True, text=True)
    assert [p for p in ps.stdout.split() if int(p) != os.getpid()] == [], ps.stdout


def _net_rows(w: EmuWorld, since: int, host: str) -> list[tuple[float, str]]:
    rows = w.events.rows[since:]
    return [(r[0], r[2]) for r in rows if r[2] in ("net_attach", "net_detach") and r[1] == host]


def test_a_replacement_keeps_its_host_on_the_network_and_rm_leaves_later(world: EmuWorld) -> None:
    w = world
    _apply(w, ServiceCreate(at=w.backend.now(), name="one", network="app", replicas=1))
    host = w.containers["one.1"].host
    assert "app" in w.testbed.call(host, "tables")
    mark = len(w.events.rows)
    # the task is removed (its host's last container on app) and its successor starts
    # detach_delay later, the instant the host's leave was due: the host stays on app
    _apply(w, ServiceUpdate(at=w.backend.now(), service="one", endpoint_mode="dnsrr"))
    assert w.skipped == []
    assert _net_rows(w, mark, host) == []
    assert "one.1" in w.testbed.call(host, "tables").get("app", {})
    mark = len(w.events.rows)
    begun = w.backend.now()
    _apply(w, ServiceRm(at=begun, service="one"))
    assert w.skipped == []
    leaves = _net_rows(w, mark, host)
    assert [kind for _, kind in leaves] == ["net_detach"]
    assert leaves[0][0] >= begun + w.timing.detach_delay  # never earlier than the World says
    assert "app" not in w.testbed.call(host, "tables")  # the agent left when told
