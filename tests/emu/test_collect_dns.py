"""The emulator's service-DNS metrics are the simulator's: collect() replays agent lines
through the same DnsTracker and gives the same rows for the same facts."""

from __future__ import annotations

from typing import Any

import pytest

from overlaysim.core.events import EntryEventKind
from overlaysim.emu.collect import NO_DNS_VALUES, collect
from overlaysim.metrics.records import EventLog
from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.steps import Crash, Restart, ServiceCreate, ServiceScale, ServiceUpdate
from overlaysim.scenario.timeline import plan
from overlaysim.sim.runner import SimWorld

_OPS = {
    EntryEventKind.CREATE: "add",
    EntryEventKind.UPDATE: "update",
    EntryEventKind.REFRESH: "refresh",
    EntryEventKind.DELETE: "delete",
    EntryEventKind.TOMBSTONE: "delete",
    EntryEventKind.REFRESH: "refresh",
}


def _sim_with_agent_lines() -> tuple[SimWorld, dict[str, list[dict[str, Any]]]]:
    """A simulated service run, and its table events written as agents would log them."""
    sc = validate_scenario(
        {
            "name": "svc",
            "duration": 60,
            "topology": {"generator": "star", "hosts": 5},
            "networks": [{"name": "app", "subnet": "10.20.0.0/24"}],
            "containers": [{"name": "client", "host": "h5", "networks": ["app"]}],
        }
    )
    the_plan = plan(sc, 3)
    the_plan.steps = [
        ServiceCreate(at=1, name="web", network="app", replicas=3),
        ServiceCreate(at=2, name="rr", network="app", replicas=2, endpoint_mode="dnsrr"),
        ServiceScale(at=6, service="web", replicas=1),
        Crash(at=10, host="h1"),
        ServiceUpdate(at=20, service="rr", endpoint_mode="vip"),
        Restart(at=30, host="h1"),
    ]
    world = SimWorld(sc, 3, services=True)
    logs: dict[str, list[dict[str, Any]]] = {h: [] for h in sc.resolved_topology.hosts}
    recorder = world.cluster.observer
    seen = recorder.entry_event

    def entry_event(t, host, ev):  # type: ignore[no-untyped-def]
        seen(t, host, ev)
        logs[host].append(
            {
                "t": t,
                "node": host,
                "kind": "entry_seen",
                "network": ev.network,
                "table": ev.table,
                "key": ev.key,
                "op": _OPS[ev.kind],
                "owner": ev.owner,
                # as the agent logs it: the value of endpoint entries, when there is one
                **({"value": dict(ev.value)} if ev.value else {}),
            }
        )

    recorder.entry_event = entry_event  # type: ignore[method-assign]
    world.start(the_plan)
    world.env.run(until=50)
    for row in world.events.rows:
        if row[2] == "node_restart":  # stamped as the runner's node_restart (emulation)
            logs[row[3]].append({"t": row[0], "node": row[3], "kind": "start"})
        if row[2] == "entry_commit":  # the owners' commits, as agents log them
            t, node, _, _, network, key, op, _ = row
            logs[node].append(
                {
                    "t": t,
                    "node": node,
                    "kind": "entry_commit",
                    "network": network,
                    "key": key,
                    "op": op,
                }
            )
    return world, logs


def test_collect_replays_the_same_dns_rows_as_the_simulator():
    world, logs = _sim_with_agent_lines()
    sim_rows = world.dns_tracker.finish()
    truth = EventLog()
    truth.rows.extend(r for r in world.events.rows if r[2] != "entry_commit")
    out = collect(truth, logs, t0=0.0, t_end=50.0)
    assert out.dns_note == ""
    # the simulator's tasks commit at the step's instant: retiming changes at the last
    # commit of their tasks moves nothing
    assert out.dns == sim_rows
    metrics = {r["metric"] for r in sim_rows}
    assert metrics == {"dns_convergence_s", "stale_dns_window_s"}
    assert all(r["status"] == "converged" for r in sim_rows)


def test_a_change_is_timed_at_the_last_commit_of_its_tasks():
    """The emulator places tasks one by one: a scale from 0 to 2 that starts at 10 s and
    commits its tasks at 10.5 s and 11.2 s is a change at 11.2 s."""
    truth = EventLog()
    for h in ("h1", "h2", "h3"):
        truth.add(0.0, "node_start", subject=h)
        truth.add(0.0, "net_attach", node=h, network="app")
    ips = ["10.0.0.5", "10.0.0.6"]
    detail = {"ips": ips, "targets": ["h1", "h2", "h3"], "added": ["s.1", "s.2"], "removed": []}
    truth.add(10.0, "service_tasks", subject="s", network="app", detail=detail)
    task = {"service": "s", "mode": "dnsrr", "svc_gen": "1"}

    def seen(t: float, node: str, key: str, ip: str, owner: str) -> dict[str, Any]:
        value = {"name": key, "ip": ip, "mac": "02:42:0a:00:00:05", "vtep": owner}
        value |= {**task, "slot": key[-1]}
        return {"t": t, "node": node, "kind": "entry_seen", "network": "app",
                "table": "endpoints", "key": key, "op": "add", "owner": owner, "value": value}  # fmt: skip

    logs = {
        "h1": [
            {"t": 10.5, "node": "h1", "kind": "entry_commit", "network": "app", "key": "s.1", "op": "add"},
            seen(10.5, "h1", "s.1", ips[0], "h1"),
            seen(11.3, "h1", "s.2", ips[1], "h2"),
        ],
        "h2": [
            {"t": 11.2, "node": "h2", "kind": "entry_commit", "network": "app", "key": "s.2", "op": "add"},
            seen(10.6, "h2", "s.1", ips[0], "h1"),
            seen(11.2, "h2", "s.2", ips[1], "h2"),
        ],
        "h3": [seen(10.7, "h3", "s.1", ips[0], "h1"), seen(11.5, "h3", "s.2", ips[1], "h2")],
    }  # fmt: skip
    (row,) = collect(truth, logs, t0=0.0, t_end=20.0).dns
    assert row["t"] == 11.2 and row["status"] == "converged"
    assert row["value_s"] == pytest.approx(0.3)  # h3 answered both at 11.5


def test_collect_says_why_there_are_no_dns_rows_when_agents_log_no_values():
    world, logs = _sim_with_agent_lines()
    for lines in logs.values():
        for line in lines:
            line.pop("value", None)
    truth = EventLog()
    truth.rows.extend(world.events.rows)
    out = collect(truth, logs, t0=0.0, t_end=50.0)
    assert out.dns is None and out.dns_note == NO_DNS_VALUES


def test_collect_of_a_run_without_services_has_no_dns_rows():
    truth = EventLog()
    truth.add(0.0, "node_start", subject="h1")
    out = collect(truth, {"h1": []}, t0=0.0, t_end=5.0)
    assert out.dns is None and out.dns_note == ""
