"""The held-records index answers exactly what a node's own maps say it holds.

The table layer decides "this is the very record I hold, nothing to do" from one byte
per (record, node) in an index shared by the nodes of a process (core/held.py). These
tests drive nodes sharing one index through stores, replacements, hides, leaves,
restarts (a later slot) and reaps, and compare the index with the maps after every
delivery; and check that a shared index changes nothing any node does.
"""

from __future__ import annotations

import random

import pytest
from tablenet import TableNet

from overlaysim.core.config import TableConfig
from overlaysim.core.held import HeldIndex
from overlaysim.core.tables import Tables
from overlaysim.core.wire import Entry, NetworkAttachment

CFG = TableConfig(
    gossip_interval=0.1,
    gossip_nodes=2,
    retransmit_mult=2,
    bulk_sync_interval=1.0,
    reap_interval=2.0,
)


def test_index_rows_follow_hold_and_release() -> None:
    idx = HeldIndex()
    a, b = idx.new_slot(), idx.new_slot()
    r1, r2 = object(), object()
    idx.hold(a, r1)
    idx.hold(b, r1)
    assert list(idx.flags(a, [r1, r2])) == [1, 0] and list(idx.flags(b, [r1, r2])) == [1, 0]
    idx.release(a, r1)
    assert idx.holds(b, r1) and not idx.holds(a, r1) and len(idx) == 1
    idx.release(b, r1)
    assert len(idx) == 0  # no slot holds it: its row is gone
    idx.release(b, r1)  # letting go twice is harmless
    idx.hold(a, r2)
    c = idx.new_slot()  # a slot given out after r2's row was made
    with pytest.raises(IndexError):
        list(idx.flags(c, [r2]))  # the caller falls back to its own maps
    assert list(idx.flags(c, [r1])) == [0]  # no row: the zero row covers every slot
    idx.hold(c, r2)
    assert list(idx.flags(c, [r2])) == [1] and list(idx.flags(a, [r2])) == [1]


def _holds_by_maps(t: Tables, r: object) -> bool:
    """The definition: ``r`` is the very visible entry, or attachment, ``t`` stores."""
    if isinstance(r, Entry):
        st = t._nets.get(r.network)
        rec = st.records.get(r.ref) if st is not None else None
        return rec is not None and rec.held is r
    if isinstance(r, NetworkAttachment):
        return t._attach.get(r.network, {}).get(r.node) is r
    return False


def _scenario(net: TableNet, rng: random.Random, check) -> None:  # type: ignore[no-untyped-def]
    """Random entry churn, network leaves and joins, a node down and back, a restart."""
    names = ["a", "b", "c", "d", "e"]
    net.cluster(names, CFG)
    for n in names:
        net.nodes[n].join_network("n", net.now)
        if n in "abc":
            net.nodes[n].join_network("m", net.now)
    for step in range(60):
        who = rng.choice(names)
        t = net.nodes[who]
        op = rng.random()
        network = rng.choice(["n", "m"])
        try:
            if op < 0.45:
                key = f"{who}-{rng.randrange(3)}"
                if t.entry(network, "ep", key) is None:
                    t.create_entry(network, "ep", key, {"ip": str(step)}, net.now)
                elif rng.random() < 0.5:
                    t.update_entry(network, "ep", key, {"ip": str(step)}, net.now)
                else:
                    t.delete_entry(network, "ep", key, net.now)
            elif op < 0.55:
                if network in t.networks():
                    t.leave_network(network, net.now)
                else:
                    t.join_network(network, net.now)
            elif op < 0.62:
                other = rng.choice([n for n in names if n != who])
                t.member_down(other, net.now)  # a false alarm, taken back below
                net.run(0.3)
                t.member_alive(other, net.addr_of(other), net.nodes[other].epoch, net.now)
            elif op < 0.66:
                # A restart: a new Tables (a later slot of the shared index), higher epoch.
                epoch = t.epoch + 1
                fresh = net.add(who, CFG, epoch=epoch)
                net.introduce()
                fresh.join_network("n", net.now)
        except Exception as exc:  # only the API's own refusals (not attached, ...)
            assert type(exc).__module__ == "overlaysim.core.tables", exc
        net.run(rng.uniform(0.05, 0.6))
        check()
    net.run(5.0)  # past reap_interval: tombstones and hidden records are forgotten
    check()


@pytest.mark.parametrize("seed", range(6))
def test_shared_index_matches_every_nodes_maps(seed: int) -> None:
    idx = HeldIndex()
    net = TableNet(seed, loss=0.1, held=idx)
    seen: dict[int, object] = {}  # every record object any node was offered or stored

    def remember(msg) -> None:  # type: ignore[no-untyped-def]
        for r in (*getattr(msg, "entries", ()), *getattr(msg, "attachments", ())):
            seen[id(r)] = r

    def check() -> None:
        for t in net.nodes.values():
            for st in t._nets.values():
                for rec in st.records.values():
                    seen[id(rec.entry)] = rec.entry
            for recs in t._attach.values():
                for a in recs.values():
                    seen[id(a)] = a
        records = list(seen.values())
        for t in net.nodes.values():
            want = [_holds_by_maps(t, r) for r in records]
            got = [idx.holds(t._slot, r) for r in records]
            assert got == want, t.name

    def observe(d) -> None:  # type: ignore[no-untyped-def]
        remember(d.msg)
        check()

    net.observer = observe
    _scenario(net, random.Random(seed), check)
    assert sum(map(len, (t._nets for t in net.nodes.values()))) > 0


@pytest.mark.parametrize("seed", range(4))
def test_a_shared_index_changes_nothing_a_node_does(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same scenario with one index for all nodes and with one per node: the same
    deliveries, events and final views (the shared one also serves a restarted node
    from rows made before its slot, through the maps fallback)."""
    import overlaysim.core.tables as tables

    fallbacks = []
    by_maps = tables._unheld_attachments
    monkeypatch.setattr(
        tables, "_unheld_attachments", lambda *a: fallbacks.append(1) or by_maps(*a)
    )
    runs = []
    for held in (HeldIndex(), None):
        net = TableNet(seed, loss=0.1, held=held)
        _scenario(net, random.Random(seed), lambda: None)
        runs.append(
            (
                [(d.t, d.src, d.dst, type(d.msg).__name__) for d in net.delivered],
                {n: [(t, ev) for t, ev in evs] for n, evs in net.events.items()},
                {n: (net.view(n, "n"), t.dropped) for n, t in net.nodes.items()},
            )
        )
    assert runs[0] == runs[1]
    assert len(runs[0][0]) > 500
    assert fallbacks  # a restarted node met rows older than its slot
