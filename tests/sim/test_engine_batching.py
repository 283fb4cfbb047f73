"""The driver's shared heap entries change no order.

The engine puts deliveries and timer firings straight into SimPy's heap and lets
actions scheduled back to back for one instant share an entry. The reference below
gives every action its own heap entry, keyed exactly as a SimPy Timeout would be; both
must hand every node the same inputs in the same order, so every observation (sends,
receptions, membership and entry events, with times) is the same sequence.
"""

from __future__ import annotations

from heapq import heappush
from typing import Any

from simpy.events import NORMAL

from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.timeline import plan
from overlaysim.sim.engine import SimCluster, _Batch
from overlaysim.sim.runner import SimWorld

SCENARIO = {
    "name": "order",
    "seed": 5,
    "duration": 25,
    "profile": "lan",
    "topology": {"generator": "star", "hosts": 12},
    "networks": [{"name": "app", "subnet": "10.64.0.0/24", "attachable": True}],
    "containers": [{"per_host": 1, "networks": ["app"]}],
    "events": [
        {"at": 2, "action": "loss", "percent": 10},
        {"at": 4, "action": "churn", "network": "app", "rate_per_s": 2, "duration": 10},
        {"at": 8, "action": "crash", "host": "h3"},
        {"at": 15, "action": "restart", "host": "h3"},
    ],
    "measure": {"probes": False},
}


class _OnePerAction(SimCluster):
    """Reference scheduling: one heap entry per action (what a Timeout each gave)."""

    def _push(self, t: float, item: tuple) -> None:
        heappush(self._queue, (t, NORMAL, next(self._eid), _Batch(self._run_cb, t, -2, item)))


def _trace(batched: bool) -> tuple[list[tuple[Any, ...]], int]:
    sc = validate_scenario(SCENARIO)
    world = SimWorld(sc, sc.seed)
    cluster = world.cluster
    if not batched:
        cluster.__class__ = _OnePerAction
    obs = cluster.observer
    trace: list[tuple[Any, ...]] = []
    entries = {"heap": 0}

    def wrap(name: str) -> None:
        inner = getattr(obs, name)

        def record(t: float, host: str, x: Any, *rest: Any) -> None:
            trace.append((name, t, host, repr(x), *rest))
            inner(t, host, x, *rest)

        setattr(obs, name, record)

    for name in ("member_event", "entry_event", "sent", "received"):
        wrap(name)
    run = cluster._run

    def counted(b: _Batch) -> None:
        entries["heap"] += 1
        run(b)

    cluster._run_cb = (counted,)
    world.start(plan(sc, sc.seed))
    world.env.run(until=float(sc.duration))
    return trace, entries["heap"]


def test_shared_heap_entries_give_the_same_run_as_one_entry_per_action() -> None:
    batched, heap_batched = _trace(True)
    single, heap_single = _trace(False)
    assert len(batched) > 5_000  # a run with traffic, loss, churn and a crash
    assert any(r[0] == "member_event" for r in batched)
    assert any(r[0] == "entry_event" for r in batched)
    assert batched == single
    # and the sharing happened: a gossip round's copies to several peers share an entry
    assert heap_batched < 0.8 * heap_single
