"""A re-add whose content a target already holds converges there, in both runtimes.

The case the fidelity scenario showed: h2 restarted while h8 was down (not yet declared
dead) and took h8's previous-boot entry in its first sync. h8 restarts and re-adds the
same container (same IP, MAC and VTEP); h2 accepts the new version before membership
tells it of h8's new boot. The tables' view does not change, yet h2 now holds the
committed version: the simulator's recorder and the agent's log lines (read by the
emulator's collect) must both count h2 as converged at that moment.
"""

from __future__ import annotations

import random

import pytest

from overlaysim.agent.dataplane import NetInfo
from overlaysim.agent.logging import EventLog as AgentLog
from overlaysim.agent.programmer import Programmer
from overlaysim.core.config import TableConfig
from overlaysim.core.endpoint import ENDPOINTS
from overlaysim.core.events import EntryEvent, EntryEventKind
from overlaysim.core.tables import Tables
from overlaysim.core.wire import Entry, TableGossip
from overlaysim.emu.collect import collect
from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.metrics.records import EventLog
from overlaysim.metrics.traffic import TrafficCounter
from overlaysim.sim.runner import _Recorder

NET = "app"
VALUE = {"name": "c-h8-1", "ip": "10.0.0.8", "mac": "02:42:0a:00:00:08", "vtep": "10.98.0.8"}
T_COMMIT, T_NEW = 2.0, 2.15
APP = NetInfo(name=NET, vni=4096, subnet="10.0.0.0/24", gateway="10.0.0.1", mtu=1450)


def _entry(epoch: int, ltime: int) -> Entry:
    return Entry(
        network=NET,
        table=ENDPOINTS,
        key="c-h8-1",
        owner="h8",
        owner_epoch=epoch,
        ltime=ltime,
        deleted=False,
        value=dict(VALUE),
    )


def _target_events() -> list[tuple[float, EntryEvent]]:
    """What h2's tables report: the old boot's entry, then the new boot's."""
    cfg = TableConfig(gossip_interval=0.1, bulk_sync_interval=1000.0, reap_interval=1000.0)
    h2 = Tables(name="h2", addr="addr-h2", config=cfg, rng=random.Random(1), epoch=1)
    h2.start(0.0)
    h2.join_network(NET, 0.0)
    out = []
    for t, e in ((1.0, _entry(0, 5)), (T_NEW, _entry(1, 1))):
        h2.receive("addr-h5", TableGossip(source="h5", network=NET, entries=(e,)), t)
        out += [(t, ev) for ev in h2.take_events()]
    h2.member_alive("h8", "addr-h8", 1, T_NEW + 0.1)  # the join comes after
    out += [(T_NEW + 0.1, ev) for ev in h2.take_events()]
    return out


def test_tables_report_the_newer_version_with_the_same_content() -> None:
    assert [(t, ev.kind) for t, ev in _target_events()] == [
        (1.0, EntryEventKind.CREATE),
        (T_NEW, EntryEventKind.REFRESH),
    ]


def test_simulator_counts_the_target_when_it_takes_the_new_version() -> None:
    tracker = ConvergenceTracker()
    rec = _Recorder(EventLog(), tracker, TrafficCounter(), holds=True)
    events = _target_events()
    for t, ev in events:
        if t > T_COMMIT:
            break
        rec.entry_event(t, "h2", ev)
    tracker.commit(T_COMMIT, "h8", NET, "c-h8-1", "add", ["h2", "h8"])
    for t, ev in events:
        if t > T_COMMIT:
            rec.entry_event(t, "h2", ev)
    (row,) = tracker.finish(10.0)
    assert row["status"] == "converged"
    assert row["converged_t"] == T_NEW
    held = [r for r in rec.events.rows if r[2] == "entry_held"]
    assert [(r[0], r[1], r[6]) for r in held] == [(1.0, "h2", "add"), (T_NEW, "h2", "add")]


def test_emulator_counts_the_target_from_the_agents_log() -> None:
    class Kernel:  # the data-plane calls the programmer makes here, recorded
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def attach(self, container, net, ip, prefixlen, mac):  # type: ignore[no-untyped-def]
            self.calls.append(("attach", container))
            return "eth0"

        def container_netns(self, container):  # type: ignore[no-untyped-def]
            return f"ns-{container}"

        def add_remote(self, network, ip, mac, vtep):  # type: ignore[no-untyped-def]
            self.calls.append(("add", ip, vtep))

        def remove_remote(self, network, ip, mac, vtep):  # type: ignore[no-untyped-def]
            self.calls.append(("remove", ip, vtep))

    now = [0.0]
    log = AgentLog(None, node="h2", keep=True, clock=lambda: now[0])
    kernel = Kernel()
    prog = Programmer(kernel, node="h2", log=log)  # type: ignore[arg-type]
    prog.attach("c-h2-1", APP, "10.0.0.2", 24, "02:42:0a:00:00:02")
    for t, ev in _target_events():
        now[0] = t
        prog.on_event(ev)
    # the kernel was written once, for the old boot's entry: the new one is the same
    assert kernel.calls == [("attach", "c-h2-1"), ("add", "10.0.0.8", "10.98.0.8")]
    truth = EventLog()
    for h in ("h2", "h8"):
        truth.add(0.0, "node_start", subject=h)
        truth.add(0.0, "net_attach", node=h, network=NET)
    commit = {"t": T_COMMIT, "node": "h8", "kind": "entry_commit"}
    logs = {"h8": [commit | {"network": NET, "key": "c-h8-1", "op": "add"}], "h2": log.lines}
    out = collect(truth, logs, t0=0.0, t_end=10.0)  # type: ignore[arg-type]
    (row,) = out.convergence
    assert row["status"] == "converged"
    assert row["latency_s"] == pytest.approx(T_NEW - T_COMMIT)
