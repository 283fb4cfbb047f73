"""A transmit-limited broadcast queue, like memberlist's TransmitLimitedQueue.

Each queued item is piggybacked on outgoing packets until it has been sent
``retransmit_limit(mult, n)`` times, ``n`` being the cluster (or network) size that the
caller passes in: the queue never looks it up itself. Items with the fewest transmits
go first (newest first among equals), so fresh news spreads fastest. A new item with the
same ``key`` replaces the old one: a newer fact about a node or entry invalidates the
older.

Items live in one list per transmit count, oldest first, so "newest first" is a walk
from the end. A packet takes the longest run of newest items that fits (found with a
running sum and a bisection, C-level work), and only the last few items, where the
budget runs out, are looked at one by one. So a packet costs a few list operations
rather than a heap pop and push per item, and a replaced item leaves its list at once
instead of lingering as a dead heap entry.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Hashable
from dataclasses import dataclass
from itertools import accumulate, islice
from operator import attrgetter
from typing import Any

from overlaysim.core.config import retransmit_limit
from overlaysim.core.wire import record_size

__all__ = ["TransmitLimitedQueue", "record_size"]


@dataclass(slots=True, eq=False)  # eq=False: list.remove finds an item by identity
class _Item:
    seq: int  # queue order: larger is newer
    key: Hashable
    record: Any
    size: int


_size = attrgetter("size")
_record = attrgetter("record")
_key = attrgetter("key")
_seqof = attrgetter("seq")


class TransmitLimitedQueue:
    """Priority queue of records to piggyback, bounded by a retransmit budget."""

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        # _buckets[t]: items sent t times, in queue order (oldest first).
        self._buckets: list[list[_Item]] = [[]]
        self._by_key: dict[Hashable, _Item] = {}
        self._seq = 0
        self._min_size = 1 << 30  # smallest record queued: bounds how many can fit

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: Hashable, record: Any, size: int | None = None) -> None:
        """Queue ``record``; an older item with the same ``key`` is dropped.

        ``size`` is the record's encoded size when the caller already knows it.
        """
        old = self._by_key.get(key)
        if old is not None:
            for bucket in self._buckets:
                if old in bucket:
                    bucket.remove(old)
                    break
        if size is None:
            size = record_size(record)
        if size < self._min_size:
            self._min_size = max(size, 1)
        self._seq += 1
        item = _Item(self._seq, key, record, size)
        self._by_key[key] = item
        self._buckets[0].append(item)

    def get(self, n: int, overhead: int, limit: int) -> list[Any]:
        """Take records fitting in ``limit - overhead`` bytes; count one transmit each.

        ``n`` is the current group size, which sets the retransmit budget. Items are
        considered fewest transmits first, newest first among equals; an item too big
        for what is left is skipped, and the search stops after 8 such misses (or when
        less than 32 bytes are left): scanning the whole queue per packet is linear work.
        """
        budget = limit - overhead
        out: list[Any] = []
        if budget <= 0 or not self._by_key:
            return out
        moved: list[tuple[int, list[_Item]]] = []  # (bucket, items taken, newest first)
        misses = 0
        careful = False  # once an item did not fit, go item by item
        for t, bucket in enumerate(self._buckets):
            if not bucket:
                continue
            if not careful:
                cap = budget // self._min_size + 1  # more than this many cannot fit
                acc = list(accumulate(islice(map(_size, reversed(bucket)), cap)))
                k = bisect_right(acc, budget)
                if k:
                    taken = bucket[-k:]
                    del bucket[-k:]
                    taken.reverse()
                    budget -= acc[k - 1]
                    out.extend(map(_record, taken))
                    moved.append((t, taken))
                if budget <= 0:
                    break
                if not bucket:
                    continue
                careful = True
            taken = []
            stop = False
            for item in reversed(bucket):
                if item.size > budget:
                    misses += 1
                    if budget < 32 or misses >= 8:
                        stop = True
                        break
                    continue
                budget -= item.size
                taken.append(item)
                if budget <= 0:
                    stop = True
                    break
            if taken:
                for item in taken:
                    bucket.remove(item)
                out.extend(map(_record, taken))
                moved.append((t, taken))
            if stop:
                break
        if moved:
            self._advance(moved, retransmit_limit(self.retransmit_mult, n))
        return out

    def _advance(self, moved: list[tuple[int, list[_Item]]], max_tx: int) -> None:
        """Count one transmit for each taken item: next bucket, or gone at ``max_tx``."""
        buckets = self._buckets
        for t, items in moved:
            if t + 1 >= max_tx:
                pop = self._by_key.pop
                for k in map(_key, items):
                    pop(k)
                if not self._by_key:
                    # A dict keeps the table of its largest size; a burst of N items
                    # would otherwise leave every node an N-slot table for good.
                    self._by_key = {}
                continue
            if t + 1 == len(buckets):
                buckets.append([])
            nxt = buckets[t + 1]
            if nxt and nxt[-1].seq > items[-1].seq:
                # Interleaves with what is there: re-sort only the tail it lands in.
                p = bisect_right(nxt, items[-1].seq, key=_seqof)
                tail = nxt[p:]
                del nxt[p:]
                tail.extend(reversed(items))
                tail.sort(key=_seqof)
                nxt.extend(tail)
            else:
                nxt.extend(reversed(items))
