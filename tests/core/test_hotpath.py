"""Hot-path mechanics of the core: sizes, the broadcast queue's order, fast paths.

These pin down that the cheaper mechanics compute exactly what the plain definitions do.
"""

from __future__ import annotations

import dataclasses
import gc
import heapq
import itertools
import operator
import random

from interleave import on_threads

from overlaysim.core import wire
from overlaysim.core.config import retransmit_limit
from overlaysim.core.queue import TransmitLimitedQueue
from overlaysim.core.wire import (
    Ack,
    BulkSync,
    Entry,
    MemberUpdate,
    NetworkAttachment,
    NetworkGossip,
    Ping,
    TableGossip,
)


def _entry(i: int) -> Entry:
    return Entry(
        network="n",
        table="t",
        key=f"k{i}" * (i % 5 + 1),
        owner="h1",
        owner_epoch=i,
        ltime=i * 1000,
        deleted=bool(i % 2),
        value={"ip": "x" * (i % 50)},
    )


def _att(i: int) -> NetworkAttachment:
    return NetworkAttachment(node=f"h{i}", network="n", ltime=i, leaving=False, epoch=i)


def test_encoded_size_is_the_length_of_the_encoding() -> None:
    msgs: list[wire.Message] = [
        Ping(seq=123456, target="a", source="b", source_addr="c"),
        Ack(seq=1, source="a"),
    ]
    for n in (0, 1, 15, 16, 17, 300, 70_000):  # array headers: 1, 3 and 5 bytes
        es = tuple(_entry(i) for i in range(n))
        ats = tuple(_att(i) for i in range(n))
        msgs += [
            TableGossip(source="x", network="n", entries=es),
            BulkSync(source="y", reply=True, networks=("a", "b"), attachments=ats, entries=es),
            NetworkGossip(source="z", attachments=ats),
        ]
    for m in msgs:
        assert wire.encoded_size(m) == len(wire.encode(m)), type(m).__name__
        assert wire.encoded_size(m) == len(wire.encode(m)), "second (memoised) call"


class _HeapQueue:
    """The plain definition: a heap on (transmits, newest first)."""

    def __init__(self, mult: int) -> None:
        self.mult = mult
        self.heap: list = []
        self.by_key: dict = {}
        self.ids = itertools.count()

    def queue(self, key, record) -> None:
        old = self.by_key.get(key)
        if old is not None:
            old[4] = False
        item = [0, key, record, wire.record_size(record), True]
        self.by_key[key] = item
        heapq.heappush(self.heap, (0, -next(self.ids), item))

    def get(self, n: int, overhead: int, limit: int) -> list:
        budget, out, keep, misses = limit - overhead, [], [], 0
        max_tx = retransmit_limit(self.mult, n)
        while self.heap and budget > 0:
            entry = heapq.heappop(self.heap)
            item = entry[2]
            if not item[4]:
                continue
            if item[3] > budget:
                keep.append(entry)
                misses += 1
                if budget < 32 or misses >= 8:
                    break
                continue
            budget -= item[3]
            out.append(item[2])
            item[0] += 1
            if item[0] >= max_tx:
                item[4] = False
                del self.by_key[item[1]]
            else:
                keep.append((item[0], entry[1], item))
        for entry in keep:
            heapq.heappush(self.heap, entry)
        return out


def _against_heap_queue(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    for mult in (1, 2, 4):
        ref, q = (
            _HeapQueue(mult),
            TransmitLimitedQueue(
                mult,
                key=operator.attrgetter("key_number.num"),
                number=operator.attrgetter("num"),
            ),
        )
        # Versions of one entry share its key, so a newer one replaces an older one.
        records = [_entry(i) for i in range(60)]
        records += [dataclasses.replace(rng.choice(records), ltime=-i) for i in range(30)]
        for _ in range(steps):
            if rng.random() < 0.4:
                r = rng.choice(records)
                ref.queue(r.ref, r)
                q.queue(r)
            else:
                n = rng.choice((3, 50, 2000))
                limit = rng.choice((60, 200, 1400))
                got = q.get(n, 10, limit)
                assert got == ref.get(n, 10, limit)
                # Each record's number is handed out beside it, read when it was queued.
                assert list(q.taken_nums) == [r.num for r in got]
                assert len(q) == len(ref.by_key)
                for bucket in q._buckets:  # each bucket oldest first (ascending sequence)
                    assert list(bucket.seqs) == sorted(bucket.seqs)


def test_a_record_is_sized_once_and_a_changed_copy_anew() -> None:
    """``record_size`` is the length of the record's own encoding, kept in its derived
    ``wire_size`` slot; a copy with other content is measured anew; neither that slot
    nor ``key_num`` (its key number, copied) takes part in equality."""
    e = _entry(3)
    assert e.wire_size == 0  # not measured yet
    size = wire.record_size(e)
    assert size == len(wire._packb(wire._to_list(e))) == e.wire_size
    longer = dataclasses.replace(e, value={**e.value, "extra": "x" * 40})
    assert wire.record_size(longer) == len(wire._packb(wire._to_list(longer))) > size
    assert dataclasses.replace(e) == e
    assert e.key_num == e.key_number.num == longer.key_num  # same key, same number
    u = MemberUpdate(kind=1, node="a", incarnation=2)
    assert wire.record_size(u) == len(wire._packb(wire._to_list(u))) == u.wire_size


def test_bucketed_queue_takes_exactly_what_a_heap_queue_takes() -> None:
    _against_heap_queue(5, 3000)


def test_sequence_numbers_start_over_in_order_at_their_limit(monkeypatch) -> None:
    """Sequence numbers are 32-bit array slots: at the limit the queue renumbers its
    items, and takes exactly what it would have taken without the limit."""
    import overlaysim.core.queue as queue_module

    monkeypatch.setattr(queue_module, "_SEQ_MAX", 70)  # renumbers many times
    renumbered = []
    real = TransmitLimitedQueue._renumber

    def spy(self: TransmitLimitedQueue) -> None:
        real(self)
        renumbered.append(self._seq)

    monkeypatch.setattr(TransmitLimitedQueue, "_renumber", spy)
    _against_heap_queue(6, 3000)
    assert len(renumbered) > 10 and max(renumbered) < 70


def test_merging_taken_items_into_a_bucket_keeps_every_column_in_sequence_order() -> None:
    """Taken items go into the next bucket by runs (a slice each) or, with many runs,
    by a row merge of the span: either way the bucket is the sorted union, column by
    column, whatever the interleaving."""
    from array import array

    from overlaysim.core.queue import _Bucket, _merge_into

    rng = random.Random(11)
    for _ in range(400):
        numbers = rng.sample(range(1, 400), rng.randrange(2, 120))
        taken = sorted(rng.sample(numbers, rng.randrange(1, len(numbers))))
        there = sorted(set(numbers) - set(taken))
        bucket = _Bucket()
        bucket.extend([f"r{i}" for i in there], there, there, [i + 1 for i in there])
        _merge_into(
            bucket,
            [f"r{i}" for i in taken],
            array("q", taken),
            array("q", taken),
            array("q", [i + 1 for i in taken]),
        )
        want = sorted(numbers)
        assert list(bucket.seqs) == want and list(bucket.sizes) == want
        assert list(bucket.nums) == [i + 1 for i in want]
        assert bucket.recs == [f"r{i}" for i in want]


def test_bulk_bootstrap_equals_one_member_alive_per_member() -> None:
    from overlaysim.core.config import TableConfig
    from overlaysim.core.tables import Tables

    members = [(f"h{i}", f"addr-{i}", i % 3) for i in range(50)]
    a = Tables(name="h7", addr="addr-7", config=TableConfig(), rng=random.Random(1))
    b = Tables(name="h7", addr="addr-7", config=TableConfig(), rng=random.Random(1))
    a.bootstrap(members, 0.0)
    for node, addr, epoch in members:
        b.member_alive(node, addr, epoch, 0.0)
    for t in (a, b):
        t.join_network("n", 1.0)
    assert a._epochs == b._epochs and a._addr == b._addr
    assert a._alive._items == b._alive._items and a._alive._pos == b._alive._pos
    assert a.take_sends() == b.take_sends()  # same random choices follow


def test_owner_index_keeps_the_order_of_an_ordered_set() -> None:
    """The compact by-owner index (a key, or a dict from two keys on) lists each owner's
    keys exactly as a dict per owner used as an ordered set would."""
    from overlaysim.core.tables import _index, _Network, _owner_keys, _unindex

    rng = random.Random(3)
    st = _Network()
    ref: dict[str, dict[tuple[str, str], None]] = {}
    owners = ["a", "b", "c"]
    keys = [("t", f"k{i}") for i in range(6)]
    for _ in range(5000):
        owner, k = rng.choice(owners), rng.choice(keys)
        if rng.random() < 0.55:
            _index(st, owner, k)
            ref.setdefault(owner, {})[k] = None
        else:
            _unindex(st, owner, k)
            if owner in ref:
                ref[owner].pop(k, None)
                if not ref[owner]:
                    del ref[owner]
        for o in owners:
            assert _owner_keys(st, o) == list(ref.get(o, ()))
        assert set(st.by_owner.as_dict()) == set(ref)


def test_nodes_share_one_record_and_key_per_entry() -> None:
    """Two nodes that accept the same entry object hold one record and one key object
    between them (memory per (node, entry) pair), and each still sees its own events."""
    from overlaysim.core.config import TableConfig
    from overlaysim.core.tables import Tables

    nodes = []
    for name in ("a", "b"):
        t = Tables(name=name, addr=name, config=TableConfig(), rng=random.Random(1))
        t.member_alive("h1", "h1", 0, 0.0)
        t.join_network("n", 0.0)
        nodes.append(t)
    e = Entry(
        network="n", table="t", key="k", owner="h1", owner_epoch=0, ltime=1, deleted=False, value={}
    )
    msg = TableGossip(source="h1", network="n", entries=(e,))
    for t in nodes:
        assert t.receive("h1", msg, 1.0)
        assert [ev.key for ev in t.take_events()] == ["k"]
        assert not t.receive("h1", msg, 1.5)  # the very record held: nothing to do
    (ka, ra), (kb, rb) = (next(iter(t._nets["n"].records.items())) for t in nodes)
    assert ra is rb and ka is kb and ra.entry is e


def test_emptied_queue_lets_go_of_its_table() -> None:
    """After a burst has been sent out, the queue's key index is an empty array again."""
    from array import array

    q = TransmitLimitedQueue(retransmit_mult=1, key=operator.attrgetter("key_number.num"))
    for i in range(2000):
        q.queue(_att(i), 20)
    while len(q):
        q.get(2, 0, 1400)
    assert len(q._index) == 0 and q._index.__sizeof__() == array("I").__sizeof__()


def test_key_numbers_follow_the_live_keys() -> None:
    """Records with one key share one key number; different live keys never share one;
    the number goes back for reuse once no record with the key is left; a malformed
    (unhashable) key gets none."""
    a = dataclasses.replace(_entry(7), key="key-numbers-a")  # keys no other test uses
    old = [a, dataclasses.replace(a, ltime=-1), dataclasses.replace(a, key="key-numbers-b")]
    del a
    assert old[0].key_number is old[1].key_number
    assert old[0].key_number.num != old[2].key_number.num
    att = _att(7)
    assert att.key_number is _att(7).key_number  # attachments number their own keys
    num = old[0].key_number.num
    del old[:2]
    gc.collect()
    free = wire._entry_keys._numbers.free
    assert num in free  # given back...
    fresh = [
        dataclasses.replace(old[0], key=f"key-numbers-{i}")
        for i in range(1 + sum(n < num for n in free))
    ]
    assert num in {e.key_number.num for e in fresh}  # ...and reused, smallest first
    live = [*fresh, old[0]]
    assert len({e.key_number.num for e in live}) == len(live)
    bad = Entry(
        network="n", table="t", key=["x"], owner="h1", owner_epoch=0, ltime=1,  # type: ignore[arg-type]
        deleted=False, value={},
    )  # fmt: skip
    assert bad.key_number is None


def test_key_numbers_stay_one_per_live_key_when_threads_make_and_drop_records() -> None:
    """An agent makes records on one thread and may drop them on another: with both at
    once, every live key still has exactly one number and no two live keys share one."""
    base = dataclasses.replace(_entry(3), key="key-threads")
    kept: list[list[Entry]] = [[], []]

    def churn(me: int) -> None:
        rng = random.Random(me)
        mine, theirs = kept[me], kept[1 - me]
        for _ in range(20000):
            mine.append(dataclasses.replace(base, key=f"key-threads-{rng.randrange(6)}"))
            if len(theirs) > 4:  # drop records the other thread made
                try:
                    theirs.pop(rng.randrange(len(theirs)))
                except IndexError:
                    pass  # the other thread took it first

    on_threads(churn)
    by_key: dict[str, set[int]] = {}
    for e in kept[0] + kept[1]:
        by_key.setdefault(e.key, set()).add(id(e.key_number))
    assert all(len(ids) == 1 for ids in by_key.values())
    nums = [next(e for e in kept[0] + kept[1] if e.key == k).key_number.num for k in by_key]
    assert len(set(nums)) == len(nums)


def test_byname_behaves_as_a_dict() -> None:
    """A ByName map (a list slot per name number) answers get/set/pop/in/len exactly as
    a dict from name to value would, over random operations on overlapping names."""
    from overlaysim.core.byname import ByName

    rng = random.Random(5)
    names = [f"bn-{i}" for i in range(40)]
    for _ in range(3):
        m: ByName[int] = ByName()
        ref: dict[str, int] = {}
        for _ in range(4000):
            name, op = rng.choice(names), rng.random()
            if op < 0.4:
                v = rng.randrange(3)
                m[name] = v
                ref[name] = v
            elif op < 0.6:
                assert m.pop(name, -1) == ref.pop(name, -1)
            elif op < 0.62:
                v = rng.randrange(3)
                assert m.add(name, v) == (name not in ref)
                ref.setdefault(name, v)
            elif op < 0.65:
                batch = [(n, rng.randrange(3)) for n in rng.sample(names, 5)]
                m.update(batch)
                ref.update(batch)
            else:
                assert m.get(name) == ref.get(name)
                assert m.get(name, -1) == ref.get(name, -1)
                assert (name in m) == (name in ref)
            assert len(m) == len(ref) and bool(m) == bool(ref)
        assert m.as_dict() == ref
        assert m.get("never-stored") is None and "never-stored" not in m


def test_a_held_record_is_recognised_without_a_held_set() -> None:
    """A message made only of the very entry and attachment objects a node holds changes
    nothing (receive returns False); an equal copy, or a record the node holds only
    hidden, still goes through the normal path."""
    from dataclasses import replace

    from overlaysim.core.config import TableConfig
    from overlaysim.core.tables import Tables
    from overlaysim.core.wire import NetworkGossip

    t = Tables(name="a", addr="a", config=TableConfig(), rng=random.Random(1))
    t.member_alive("h1", "h1", 0, 0.0)
    t.join_network("n", 0.0)
    att = NetworkAttachment(node="h1", network="n", ltime=1, leaving=False, epoch=0)
    assert t.receive("h1", NetworkGossip(source="h1", attachments=(att,)), 0.5)
    assert not t.receive("h1", NetworkGossip(source="h1", attachments=(att,)), 0.6)
    assert t.receive("h1", NetworkGossip(source="h1", attachments=(replace(att),)), 0.7)
    e = Entry(
        network="n", table="t", key="k", owner="h1", owner_epoch=0, ltime=1, deleted=False, value={}
    )
    assert t.receive("h1", TableGossip(source="h1", network="n", entries=(e,)), 1.0)
    assert not t.receive("h1", TableGossip(source="h1", network="n", entries=(e,)), 1.1)
    assert t.receive("h1", TableGossip(source="h1", network="n", entries=(replace(e),)), 1.2)
    t.member_down("h1", 2.0)  # its entry is hidden now: the same object is not "held"
    assert t.receive("h1", TableGossip(source="h1", network="n", entries=(e,)), 2.1)
    # Malformed peer records are never "held"; they are dropped as before.
    before = t.dropped
    assert t.receive("h1", TableGossip(source="h1", network="n", entries=(object(),)), 2.2)
    assert t.dropped == before + 1
