"""The emulator's service-DNS metrics are the simulator's: collect() replays agent lines
through the same DnsTracker and gives the same rows for the same facts."""

from __future__ import annotations

from typing import Any

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
    EntryEventKind.DELETE: "delete",
    EntryEventKind.TOMBSTONE: "delete",
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
        if row[2] == "node_restart":  # a restarted agent logs "start" before it is ready
            logs[row[3]].append({"t": row[0] - 1e-6, "node": row[3], "kind": "start"})
    return world, logs


def test_collect_replays_the_same_dns_rows_as_the_simulator():
    world, logs = _sim_with_agent_lines()
    sim_rows = world.dns_tracker.finish()
    truth = EventLog()
    truth.rows.extend(r for r in world.events.rows if r[2] != "entry_commit")
    out = collect(truth, logs, t0=0.0, t_end=50.0)
    assert out.dns_note == ""
    assert out.dns == sim_rows
    metrics = {r["metric"] for r in sim_rows}
    assert metrics == {"dns_convergence_s", "stale_dns_window_s"}
    assert all(r["status"] == "converged" for r in sim_rows)


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
