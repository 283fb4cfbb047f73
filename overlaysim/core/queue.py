"""A transmit-limited broadcast queue, like memberlist's TransmitLimitedQueue.

Each queued item is piggybacked on outgoing packets until it has been sent
``retransmit_limit(mult, n)`` times, ``n`` being the cluster (or network) size that the
caller passes in: the queue never looks it up itself. Items with the fewest transmits
go first (newest first among equals), so fresh news spreads fastest. A new record with
the same key replaces the old one: a newer fact about a node or entry invalidates the
older. The queue's ``key`` function gives a record's key as a small number, dense over
the keys in use (``Entry.key_number``, a node's name number): the queue finds the item
of a key in an array indexed by it.

Items live in one bucket per transmit count, oldest first, so "newest first" is a walk
from the end. A packet takes the longest run of newest items that fits (found with a
running sum and a bisection, C-level work), and only the last few items, where the
budget runs out, are looked at one by one. So a packet costs a few list operations
rather than a heap pop and push per item, and a replaced item leaves its bucket at once
instead of lingering as a dead heap entry.

Memory: during a burst every node holds nearly every entry here for many rounds (at
thousands of nodes, for the whole run), so an item is not an object: a bucket is three
parallel columns (record, sequence number, size). The record column is a list of
pointers to the record, which every node shares; the other two are arrays of raw
unsigned ints (4 bytes a slot, where a list slot is 8 and points to an int object). The key
is not a column: it is read from the record when an item is retired, so a packet moves
three columns, not four. The key index is an array too, one 4-byte slot per key number,
where a dict cost ~35 bytes per queued item. Reading an array slot makes an int object
(a size is usually below 257, an int the interpreter keeps cached); a bisection reads
a dozen.

Sequence numbers are per queue and only go up. Should one reach the array's limit
(``2**32 - 1``, billions of queued records in one agent's life), the queue numbers its
items 1, 2, 3... again in the same order (:meth:`TransmitLimitedQueue._renumber`).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from itertools import accumulate, islice, repeat
from operator import itemgetter
from typing import Any

from overlaysim.core.config import retransmit_limit
from overlaysim.core.wire import record_size

__all__ = ["TransmitLimitedQueue", "record_size"]


#: Array type codes: sequence numbers and key index (unsigned 32 bits), sizes (same).
_SEQ = "I"
_SEQ_MAX = (1 << 32) - 1


def _seq_array(items: Iterable[int] = ()) -> array:
    return array(_SEQ, items)


def _as_column(items: Iterable[int]) -> array:
    """``items`` as a column array: a slice of an array takes only an array of its type."""
    if type(items) is array and items.typecode == _SEQ:  # type: ignore[attr-defined]
        return items  # type: ignore[return-value]
    return array(_SEQ, items)


class _Bucket:
    """Items sent the same number of times, in queue order (oldest first), by column."""

    __slots__ = ("recs", "seqs", "sizes", "nums")

    def __init__(self) -> None:
        self.recs: list[Any] = []
        self.seqs: array = _seq_array()
        self.sizes: array = _seq_array()
        self.nums: array = _seq_array()

    def __len__(self) -> int:
        return len(self.recs)

    def cut(self, p: int) -> tuple[list[Any], array, array, array]:
        """Remove and return the items from position ``p`` on (oldest first)."""
        out = (self.recs[p:], self.seqs[p:], self.sizes[p:], self.nums[p:])
        del self.recs[p:], self.seqs[p:], self.sizes[p:], self.nums[p:]
        return out

    def remove_at(self, j: int) -> None:
        del self.recs[j], self.seqs[j], self.sizes[j], self.nums[j]

    def insert(self, p: int, recs: Any, seqs: Any, sizes: Any, nums: Any) -> None:
        """Insert the items (in order) before position ``p``."""
        self.replace(p, p, recs, seqs, sizes, nums)

    def replace(self, p: int, q: int, recs: Any, seqs: Any, sizes: Any, nums: Any) -> None:
        """Put the items (in order) in place of positions ``p`` to ``q`` (excluded)."""
        self.recs[p:q] = recs
        self.seqs[p:q] = _as_column(seqs)
        self.sizes[p:q] = _as_column(sizes)
        self.nums[p:q] = _as_column(nums)

    def extend(
        self, recs: list, seqs: Iterable[int], sizes: Iterable[int], nums: Iterable[int]
    ) -> None:
        self.recs.extend(recs)
        self.seqs.extend(seqs)
        self.sizes.extend(sizes)
        self.nums.extend(nums)


#: Items taken from one bucket by a packet, in queue order (oldest first, as in the
#: bucket, so moving them on is a slice copy): (bucket, records, sequence numbers,
#: sizes, record numbers).
_Taken = tuple[int, list[Any], "array | list[int]", "array | list[int]", "array | list[int]"]


def _no_number(record: Any) -> int:
    return 0


class TransmitLimitedQueue:
    """Priority queue of records to piggyback, bounded by a retransmit budget."""

    def __init__(
        self,
        retransmit_mult: int,
        key: Callable[[Any], int],
        number: Callable[[Any], int] = _no_number,
    ) -> None:
        self.retransmit_mult = retransmit_mult
        #: A record's key number (>= 0): records with equal keys replace each other.
        self.key = key
        #: A record's number (core/wire.py), kept beside it and handed out with it
        #: (``taken_nums``), so a receiver's held check need not read the record.
        self.number = number
        # _buckets[t]: items sent t times, in queue order (oldest first).
        self._buckets: list[_Bucket] = [_Bucket()]
        # Key number -> sequence number of its item, 0 where none is queued.
        self._index: array = _seq_array()
        self._count = 0  # items queued
        self._seq = 0
        self._min_size = 1 << 30  # smallest record queued: bounds how many can fit
        #: Bytes of the records the last :meth:`get` took (their sizes as queued).
        self.taken_size = 0
        #: The numbers (``number``) of the records the last :meth:`get` took, in the
        #: order it returned them.
        self.taken_nums: array = _seq_array()

    def __len__(self) -> int:
        return self._count

    def queue(self, record: Any, size: int | None = None) -> None:
        """Queue ``record``; an older item with the same key is dropped.

        ``size`` is the record's encoded size when the caller already knows it.
        """
        key = self.key(record)
        index = self._index
        if key >= len(index):
            index.extend(repeat(0, key + 1 - len(index)))
        old = index[key]
        if old:
            for bucket in self._buckets:
                seqs = bucket.seqs
                j = bisect_left(seqs, old)
                if j < len(seqs) and seqs[j] == old:
                    bucket.remove_at(j)
                    break
        else:
            self._count += 1
        if size is None:
            size = record_size(record)
        if size < self._min_size:
            self._min_size = max(size, 1)
        if self._seq == _SEQ_MAX:
            self._renumber()
        self._seq += 1
        seq = self._seq
        index[key] = seq
        b = self._buckets[0]
        b.recs.append(record)
        b.seqs.append(seq)
        b.sizes.append(size)
        b.nums.append(self.number(record))

    def get(self, n: int, overhead: int, limit: int) -> list[Any]:
        """Take records fitting in ``limit - overhead`` bytes; count one transmit each.

        ``n`` is the current group size, which sets the retransmit budget. Items are
        considered fewest transmits first, newest first among equals; an item too big
        for what is left is skipped, and the search stops after 8 such misses (or when
        less than 32 bytes are left): scanning the whole queue per packet is linear work.
        """
        budget = limit - overhead
        out: list[Any] = []
        self.taken_size = 0
        taken_nums = self.taken_nums = _seq_array()
        if budget <= 0 or not self._count:
            return out
        start = budget
        moved: list[_Taken] = []
        misses = 0
        careful = False  # once an item did not fit, go item by item
        # No queued record is smaller (it only ever goes down): below it nothing fits,
        # so the item-by-item search would take nothing and is skipped.
        smallest = self._min_size
        for t, bucket in enumerate(self._buckets):
            if not bucket.recs:
                continue
            if budget < smallest:
                break
            if not careful:
                cap = budget // smallest + 1  # more than this many cannot fit
                acc = list(accumulate(islice(reversed(bucket.sizes), cap)))
                k = bisect_right(acc, budget)
                if k:
                    recs, seqs, sizes, nums = bucket.cut(len(bucket) - k)
                    budget -= acc[k - 1]
                    out.extend(reversed(recs))  # newest first
                    taken_nums.extend(nums[::-1])
                    moved.append((t, recs, seqs, sizes, nums))
                if budget < smallest:
                    break
                if not bucket.recs:
                    continue
                careful = True
            taken: list[int] = []  # positions, newest first
            stop = False
            sizes = bucket.sizes
            for j in range(len(sizes) - 1, -1, -1):
                size = sizes[j]
                if size > budget:
                    misses += 1
                    if budget < 32 or misses >= 8:
                        stop = True
                        break
                    continue
                budget -= size
                taken.append(j)
                if budget < smallest:
                    stop = True
                    break
            if taken:
                trecs = [bucket.recs[j] for j in taken]  # newest first
                out.extend(trecs)
                trecs.reverse()
                asc = taken[::-1]
                tseqs = [bucket.seqs[j] for j in asc]
                tsizes = [sizes[j] for j in asc]
                tnums = [bucket.nums[j] for j in asc]
                taken_nums.extend(reversed(tnums))
                for j in taken:  # descending positions: each removal leaves the rest in place
                    bucket.remove_at(j)
                moved.append((t, trecs, tseqs, tsizes, tnums))
            if stop:
                break
        if moved:
            self._advance(moved, retransmit_limit(self.retransmit_mult, n))
        self.taken_size = start - budget
        return out

    def _renumber(self) -> None:
        """Number the queued items 1, 2, 3... again, keeping their order."""
        items = sorted(
            (seq, t, j) for t, b in enumerate(self._buckets) for j, seq in enumerate(b.seqs)
        )
        for new, (_seq, t, j) in enumerate(items, 1):
            b = self._buckets[t]
            b.seqs[j] = new
            self._index[self.key(b.recs[j])] = new
        self._seq = len(items)

    def _advance(self, moved: list[_Taken], max_tx: int) -> None:
        """Count one transmit for each taken item: next bucket, or gone at ``max_tx``."""
        buckets = self._buckets
        for t, recs, seqs, sizes, nums in moved:
            if t + 1 >= max_tx:
                index = self._index
                for k in map(self.key, recs):
                    index[k] = 0
                self._count -= len(recs)
                if not self._count:
                    # A burst's keys would otherwise leave every node a slot per key
                    # for good.
                    self._index = _seq_array()
                continue
            if t + 1 == len(buckets):
                buckets.append(_Bucket())
            nxt = buckets[t + 1]
            # Taken columns and buckets are both oldest first.
            if len(nxt) and nxt.seqs[-1] > seqs[0]:
                _merge_into(nxt, recs, seqs, sizes, nums)
            else:
                nxt.extend(recs, seqs, sizes, nums)


#: Above this many separate runs, merging the span row by row beats one slice each.
_MAX_RUNS = 8


def _merge_into(nxt: _Bucket, recs: Any, seqs: Any, sizes: Any, nums: Any) -> None:
    """Merge taken items (ascending sequence numbers) into bucket ``nxt`` (ascending).

    Sequence numbers are unique, so the order is total. Each taken item goes where its
    number falls among the bucket's; consecutive items landing at the same place form
    a run, and a run goes in as one slice (a C-level move). Usually there are one or
    two runs (a packet takes a contiguous stretch of its bucket, which spans the items
    taken from between them earlier); with many, only the span of the bucket between the
    smallest and the largest taken number is merged row by row.
    """
    nseqs = nxt.seqs
    # Positions are non-decreasing: equal ends mean one run (the usual case), found
    # with two bisections; otherwise the others lie between the ends.
    first = bisect_right(nseqs, seqs[0])
    last = bisect_right(nseqs, seqs[-1], first)
    if first == last:
        nxt.insert(first, recs, seqs, sizes, nums)
        return
    n = len(seqs)
    pos = list(map(bisect_right, repeat(nseqs, n), seqs, repeat(first, n), repeat(last, n)))
    starts = [0]
    starts.extend(i for i in range(1, len(pos)) if pos[i] != pos[i - 1])
    if len(starts) <= _MAX_RUNS:
        end = len(pos)
        for i in reversed(starts):  # last run first: earlier positions stay valid
            nxt.insert(pos[i], recs[i:end], seqs[i:end], sizes[i:end], nums[i:end])
            end = i
        return
    span = (nseqs[first:last], nxt.recs[first:last], nxt.sizes[first:last], nxt.nums[first:last])
    rows = list(zip(*span, strict=True))
    rows.extend(zip(seqs, recs, sizes, nums, strict=True))
    rows.sort(key=_seq_of)
    s_, r_, z_, n_ = zip(*rows, strict=True)
    nxt.replace(first, last, list(r_), list(s_), list(z_), list(n_))


_seq_of = itemgetter(0)
