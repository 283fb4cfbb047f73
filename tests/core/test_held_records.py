"""A node's held bytes answer exactly what its own maps say it holds.

The table layer decides "this is the very record object I hold, nothing to do" from one
byte per record number (core/wire.py numbers every entry and attachment object; a node
keeps a byte per number, see core/tables.py). These tests check the numbering, then
drive nodes through stores, replacements, hides, leaves, restarts and reaps and compare
the bytes with the maps after every delivery, and check that the bytes change nothing a
node does.
"""

from __future__ import annotations

import copy
import gc
import pickle
import random
from dataclasses import replace

import pytest
from interleave import on_threads
from tablenet import TableNet

import overlaysim.core.tables as tables_mod
from overlaysim.core.config import TableConfig
from overlaysim.core.tables import Tables
from overlaysim.core.wire import (
    MAX_DATAGRAM,
    BulkSync,
    Entry,
    NetworkAttachment,
    NetworkGossip,
    TableGossip,
    decode,
    encode,
    record_numbers_end,
)

CFG = TableConfig(
    gossip_interval=0.1,
    gossip_nodes=2,
    retransmit_mult=2,
    bulk_sync_interval=1.0,
    reap_interval=2.0,
)


def _entry(key: str = "k", network: str = "n", owner: str = "o", ltime: int = 1) -> Entry:
    return Entry(
        network=network, table="t", key=key, owner=owner, owner_epoch=0, ltime=ltime,
        deleted=False, value={"ip": "10.0.0.1"},
    )  # fmt: skip


def test_record_numbers_are_unique_among_live_records_and_reused() -> None:
    live = [_entry(f"k{i}") for i in range(50)]
    live += [
        NetworkAttachment(node=f"h{i}", network="n", ltime=1, leaving=False) for i in range(50)
    ]
    nums = [r.num for r in live]
    assert len(set(nums)) == len(nums) and max(nums) < record_numbers_end()
    # Copies, pickles, replace() and decoded records are new objects: numbers of their own.
    e = live[0]
    others = [copy.copy(e), copy.deepcopy(e), pickle.loads(pickle.dumps(e)), replace(e)]
    others.append(
        decode(encode(TableGossip(source="x", network="n", entries=(e,))), MAX_DATAGRAM).entries[0]
    )  # type: ignore[attr-defined]
    assert all(o == e for o in others)
    assert len({o.num for o in others} | set(nums)) == len(nums) + len(others)
    # Not on the wire: equal records encode alike whatever their numbers.
    assert encode(TableGossip(source="x", network="n", entries=(e,))) == encode(
        TableGossip(source="x", network="n", entries=(others[0],))
    )
    freed = {r.num for r in live[10:20]}
    del live[10:20], others
    gc.collect()
    again = [_entry(f"new{i}") for i in range(10)]
    assert {r.num for r in again} == freed  # the smallest free numbers first


def _holds_by_maps(t: Tables, r: object) -> bool:
    """The definition: ``r`` is the very visible entry, or attachment, ``t`` stores."""
    if isinstance(r, Entry):
        st = t._nets.get(r.network)
        rec = st.records.get(r.ref) if st is not None else None
        return rec is not None and rec.held is r
    if isinstance(r, NetworkAttachment):
        return t._attach.get(r.network, {}).get(r.node) is r
    return False


def _byte(held: bytearray, r: object) -> int:
    n = r.num  # type: ignore[attr-defined]
    return held[n] if n < len(held) else 0


def _scenario(net: TableNet, rng: random.Random, check) -> None:  # type: ignore[no-untyped-def]
    """Random entry churn, network leaves and joins, a node down and back, restarts."""
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
                fresh = net.add(who, CFG, epoch=t.epoch + 1)  # a restart
                net.introduce()
                fresh.join_network("n", net.now)
        except tables_mod.TablesError:
            pass  # the API's own refusals (not attached, not the owner...)
        net.run(rng.uniform(0.05, 0.6))
        check()
    net.run(5.0)  # past reap_interval: tombstones and hidden records are forgotten
    check()


@pytest.mark.parametrize("objects", [False, True], ids=["wire", "objects"])
@pytest.mark.parametrize("seed", range(6))
def test_held_bytes_match_every_nodes_maps(seed: int, objects: bool) -> None:
    """Over the wire (as the agent: its decoder interns records) and as objects (as the
    simulator: every receiver gets the very message, its derived fields kept)."""
    net = TableNet(seed, loss=0.1, objects=objects)
    seen: dict[int, object] = {}  # every record object offered to or stored by a node

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
            got = [
                _byte(t._held_entries if isinstance(r, Entry) else t._held_atts, r) == 1
                for r in records
            ]
            assert got == want, t.name
            # An attachment never reads as a held entry, nor an entry as an attachment.
            assert not any(_byte(t._held_atts, r) for r in records if isinstance(r, Entry))
            assert not any(
                _byte(t._held_entries, r) for r in records if isinstance(r, NetworkAttachment)
            )
            # The filters a message's records go through, on a mix and on held ones only
            # (the all-held shortcut).
            for kind, keep in (
                (NetworkAttachment, t._attachments_not_held),
                (Entry, t._entries_not_held),
            ):
                mix = [r for r in records if isinstance(r, kind)]
                held = [r for r, h in zip(records, want, strict=True) if h and isinstance(r, kind)]
                assert keep(mix) == [r for r in mix if not _holds_by_maps(t, r)]
                assert keep(held) == []
            # The numbers kept beside the records, in the records' order.
            for st in t._nets.values():
                assert list(st.nums) == [r.entry.num for r in st.records.values()]
            assert list(t._att_nums) == list(t._attach)
            for network, recs in t._attach.items():
                assert list(t._att_nums[network]) == [a.num for a in recs.values()]

    numbered = 0
    bulk_numbered = 0

    def observe(d) -> None:  # type: ignore[no-untyped-def]
        nonlocal numbered, bulk_numbered
        for r in (*getattr(d.msg, "entries", ()), *getattr(d.msg, "attachments", ())):
            seen[id(r)] = r
        if isinstance(d.msg, (NetworkGossip, TableGossip)) and d.msg.nums is not None:
            records = getattr(d.msg, "attachments", None) or d.msg.entries
            assert list(d.msg.nums) == [r.num for r in records]
            numbered += 1
        if isinstance(d.msg, BulkSync) and d.msg.att_nums is not None:
            assert list(d.msg.att_nums) == [a.num for a in d.msg.attachments]
            if d.msg.entry_nums is not None:
                assert list(d.msg.entry_nums) == [e.num for e in d.msg.entries]
                bulk_numbered += bool(d.msg.entries)
        check()

    net.observer = observe
    _scenario(net, random.Random(seed), check)
    assert len(seen) > 20
    assert (numbered > 20) == objects  # off the wire a message carries no numbers
    assert (bulk_numbered > 5) == objects


@pytest.mark.parametrize("objects", [False, True], ids=["wire", "objects"])
@pytest.mark.parametrize("seed", range(4))
def test_held_bytes_change_nothing_a_node_does(
    seed: int, objects: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same scenario with the held bytes, without the gossip messages' kept record
    numbers and the bulk syncs' marks (as objects, where they travel), and with the
    maps alone: the same deliveries, events, final views and dropped counts."""
    runs = []
    covered = 0
    covers = tables_mod._covers

    def counting(held, marks):  # type: ignore[no-untyped-def]
        nonlocal covered
        got = covers(held, marks)
        covered += got
        return got

    monkeypatch.setattr(tables_mod, "_covers", counting)
    for how in ("bytes", "no numbers", "no marks", "maps"):
        if how in ("no numbers", "no marks") and not objects:
            continue  # each receiver decodes its own copy: nothing travels with it
        if how == "no numbers":
            monkeypatch.setattr(tables_mod, "_taken_numbers", lambda q: None)

            def unnumbered(self, networks, reply, made=Tables._bulk_msg):  # type: ignore[no-untyped-def]
                msg = made(self, networks, reply)
                object.__setattr__(msg, "att_nums", None)
                object.__setattr__(msg, "entry_nums", None)
                return msg

            monkeypatch.setattr(Tables, "_bulk_msg", unnumbered)
        if how in ("no marks", "maps"):
            monkeypatch.setattr(tables_mod, "_covers", lambda held, marks: False)
        if how == "maps":

            def no_bytes(held, records, nums=None):  # type: ignore[no-untyped-def]
                raise AttributeError("held bytes off: the maps answer")

            monkeypatch.setattr(tables_mod, "_holding", no_bytes)
        net = TableNet(seed, loss=0.1, objects=objects)
        _scenario(net, random.Random(seed), lambda: None)
        runs.append(
            (
                [(d.t, d.src, d.dst, type(d.msg).__name__) for d in net.delivered],
                {n: list(evs) for n, evs in net.events.items()},
                {n: (net.view(n, "n"), t.dropped) for n, t in net.nodes.items()},
            )
        )
        if how == "bytes":
            # As objects, bulk syncs were skipped whole on their marks; off the wire never.
            assert (covered > 0) == objects
    assert len(runs) == (4 if objects else 2)
    assert all(run == runs[0] for run in runs[1:])
    assert len(runs[0][0]) > 500


def test_a_held_attachment_among_entries_is_not_a_held_entry() -> None:
    """Records are numbered across both kinds, and a node keeps their bytes apart: an
    attachment it holds, sent where entries go, is malformed, not "already held"."""
    t = Tables(name="a", addr="a", config=TableConfig(), rng=random.Random(1))
    t.member_alive("h1", "h1", 0, 0.0)
    t.join_network("n", 0.0)
    (att,) = t._attach["n"].values()  # its own attachment, held
    before = t.dropped
    assert t.receive("h1", TableGossip(source="h1", network="n", entries=(att,)), 1.0)  # type: ignore[arg-type]
    assert t.dropped == before + 1


def test_records_freed_during_interpreter_exit_leave_no_noise() -> None:
    """A record freed after its module's globals were torn down (interpreter exit sets
    them to None) gives its number back quietly: no "Exception ignored" on stderr."""
    import subprocess
    import sys

    code = (
        "import overlaysim.core.wire as w\n"
        "e = w.Entry(network='n', table='t', key='k', owner='o', owner_epoch=0, ltime=1,"
        " deleted=False, value={})\n"
        "a = w.NetworkAttachment(node='h', network='n', ltime=1, leaving=False)\n"
        "w._give_back = w.heapq = w._free_numbers = None  # what teardown does\n"
        "del e, a\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == ""


def test_record_numbers_stay_unique_when_records_come_and_go_on_two_threads() -> None:
    """An agent frees records on its data-plane thread too: numbers taken and given back
    from two threads at once are still unique among the live records."""
    kept: list[list[Entry]] = [[], []]

    def churn(i: int) -> None:
        for j in range(20000):
            e = _entry(f"{i}-{j}")
            if j % 3 == 0:
                kept[i].append(e)  # the others are freed at once

    on_threads(churn)
    live = kept[0] + kept[1]
    assert len({e.num for e in live}) == len(live)
    assert max(e.num for e in live) < record_numbers_end()


def test_gossip_carries_its_records_numbers_from_the_senders_queue() -> None:
    """A node's gossip rounds hand each message its records' numbers, kept by the
    broadcast queue beside the records; a receiver then holds exactly what it would
    reading the records. A message built by hand or decoded off the wire has none, and
    its records are read (a malformed one dropped, the others merged)."""
    a, b = (Tables(name=x, addr=x, config=TableConfig(), rng=random.Random(1)) for x in "ab")
    for t, other in ((a, b), (b, a)):
        t.start(0.0)
        t.member_alive(other.name, other.addr, 0, 0.0)
    a.join_network("n", 0.0)
    b.join_network("n", 0.0)
    sent = []
    now = 0.0
    for step in range(40):
        if step == 10:
            a.create_entry("n", "ep", "k1", {"ip": "1"}, now)
        now += 0.2
        for t, other in ((a, b), (b, a)):
            t.handle_timer(now)
            for out in t.take_sends():
                if isinstance(out.msg, (NetworkGossip, TableGossip)):
                    sent.append(out.msg)
                other.receive(t.addr, out.msg, now)
    assert {type(m) for m in sent} == {NetworkGossip, TableGossip}
    for m in sent:
        records = getattr(m, "attachments", None) or m.entries
        assert m.nums is not None and list(m.nums) == [r.num for r in records]
        assert decode(encode(m)).nums is None  # not on the wire
        assert m == decode(encode(m))  # nor compared
    assert b.entry("n", "ep", "k1") is not None and "a" in b.attachments("n")
    assert all(not t.receive("x", m, now) for m in sent for t in (a, b))  # all held now

    atts = tuple(
        NetworkAttachment(node=f"h{i}", network="n", ltime=1, leaving=False, epoch=0, entry_clock=0)
        for i in range(3)
    )
    bad = NetworkGossip(source="h0", attachments=(atts[0], "junk", atts[1]))  # type: ignore[arg-type]
    assert bad.nums is None
    t = Tables(name="c", addr="c", config=TableConfig(), rng=random.Random(1))
    t.receive("h0", bad, 0.0)
    assert t.dropped == 1
    assert set(t.attachments("n")) == {"h0", "h1"}


def test_a_record_is_checked_once_and_a_malformed_one_never() -> None:
    """The first receiver that finds a record well-formed marks it (``checked``); the
    mark is not on the wire nor compared, a copy starts unmarked, a malformed record is
    never marked and is dropped by every receiver, and an object of another kind that
    claims the mark is still judged and dropped."""
    a = NetworkAttachment(node="h1", network="n", ltime=1, leaving=False)
    e = _entry("k1", owner="h1")
    assert not a.checked and not e.checked
    t = Tables(name="a", addr="a", config=TableConfig(), rng=random.Random(1))
    t.member_alive("h1", "h1", 0, 0.0)
    t.join_network("n", 0.0)
    assert t.receive("h1", NetworkGossip(source="h1", attachments=(a,)), 0.1)
    assert t.receive("h1", TableGossip(source="h1", network="n", entries=(e,)), 0.2)
    assert a.checked and e.checked and t.entry("n", "t", "k1") is e
    assert replace(e) == e and not replace(e).checked  # not compared; a copy is new
    assert (
        not decode(encode(TableGossip(source="h1", network="n", entries=(e,)))).entries[0].checked
    )

    bad = replace(e, key="k2", ltime=-1)  # out of range: malformed
    for name in "bc":
        u = Tables(name=name, addr=name, config=TableConfig(), rng=random.Random(1))
        u.member_alive("h1", "h1", 0, 0.0)
        u.join_network("n", 0.0)
        u.receive("h1", NetworkGossip(source="h1", attachments=(a,)), 0.1)
        u.receive("h1", TableGossip(source="h1", network="n", entries=(bad,)), 0.2)
        assert u.dropped == 1 and u.entry("n", "t", "k2") is None and not bad.checked

    class Impostor:
        checked = True

    before = t.dropped
    t.receive("h1", TableGossip(source="h1", network="n", entries=(Impostor(),)), 0.3)  # type: ignore[arg-type]
    assert t.dropped == before + 1


def test_a_bulk_sync_whose_marks_a_node_covers_is_not_read_record_by_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bulk sync made here carries its sender's held bytes as marks. A receiver that
    holds every marked record skips the message's records unread; one record it lacks
    and it reads them all and merges that one; off the wire there are no marks."""
    a, b = (Tables(name=x, addr=x, config=TableConfig(), rng=random.Random(1)) for x in "ab")
    for t, other in ((a, b), (b, a)):
        t.member_alive(other.name, other.addr, 0, 0.0)
        t.join_network("n", 0.0)
    a.create_entry("n", "ep", "k1", {"ip": "1"}, 0.1)
    read: list[int] = []
    plain = Tables._entries_not_held

    def reading(self, entries, nums=None):  # type: ignore[no-untyped-def]
        read.append(len(entries))
        return plain(self, entries, nums)

    monkeypatch.setattr(Tables, "_entries_not_held", reading)
    first = a._bulk_msg(["n"], True)
    assert first.att_marks is not None and first.entry_marks is not None
    b.receive("a", first, 0.2)
    assert read == [1] and b.entry("n", "ep", "k1") is first.entries[0]
    b.receive("a", a._bulk_msg(["n"], True), 0.3)  # nothing new: covered
    assert read == [1, 0]
    a.create_entry("n", "ep", "k2", {"ip": "2"}, 0.4)
    b.receive("a", a._bulk_msg(["n"], True), 0.5)
    assert read == [1, 0, 2] and b.entry("n", "ep", "k2") is not None
    wire = decode(encode(a._bulk_msg(["n"], True)))
    assert wire.att_marks is None and wire.entry_marks is None  # type: ignore[attr-defined]
    assert wire == a._bulk_msg(["n"], True)  # not compared either
