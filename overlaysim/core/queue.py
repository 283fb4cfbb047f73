"""A transmit-limited broadcast queue, like memberlist's TransmitLimitedQueue.

Each queued item is piggybacked on outgoing packets until it has been sent
``retransmit_limit(mult, n)`` times, ``n`` being the cluster (or network) size that the
caller passes in: the queue never looks it up itself. Items with the fewest transmits
go first (newest first among equals), so fresh news spreads fastest. A new item with the
same ``key`` replaces the old one: a newer fact about a node or entry invalidates the
older.

Items live in one bucket per transmit count (a dict keyed by a sequence number that
grows with every queued item), so a packet costs a walk over the items it takes rather
than a heap pop and push per item, and a replaced item leaves its bucket at once instead
of lingering as a dead heap entry.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import msgpack

from overlaysim.core.config import retransmit_limit
from overlaysim.core.wire import _to_list

#: Bound on the record-size memo; past it the memo starts over (it is only a cache).
_SIZE_MEMO_MAX = 1 << 17
_size_memo: dict[int, tuple[Any, int]] = {}


def record_size(record: Any) -> int:
    """Encoded size of a wire record (what it adds to a packet).

    Records are immutable, and in the simulator one record object travels to every
    node, so its size is computed once and remembered by identity (the record is kept
    alongside its size, so its ``id`` cannot be reused while remembered).
    """
    hit = _size_memo.get(id(record))
    if hit is not None and hit[0] is record:
        return hit[1]
    size = len(msgpack.packb(_to_list(record), use_bin_type=True))
    if len(_size_memo) >= _SIZE_MEMO_MAX:
        _size_memo.clear()
    _size_memo[id(record)] = (record, size)
    return size


@dataclass(slots=True)
class _Item:
    transmits: int
    seq: int  # queue order: larger is newer
    key: Hashable
    record: Any
    size: int


class TransmitLimitedQueue:
    """Priority queue of records to piggyback, bounded by a retransmit budget."""

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        # _buckets[t]: items sent t times, keyed by seq (insertion order is not seq
        # order past bucket 0, so a bucket is sorted when read).
        self._buckets: list[dict[int, _Item]] = [{}]
        self._by_key: dict[Hashable, _Item] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: Hashable, record: Any, size: int | None = None) -> None:
        """Queue ``record``; an older item with the same ``key`` is dropped.

        ``size`` is the record's encoded size when the caller already knows it.
        """
        old = self._by_key.get(key)
        if old is not None:
            del self._buckets[old.transmits][old.seq]
        self._seq += 1
        item = _Item(0, self._seq, key, record, record_size(record) if size is None else size)
        self._by_key[key] = item
        self._buckets[0][self._seq] = item

    def get(self, n: int, overhead: int, limit: int) -> list[Any]:
        """Take records fitting in ``limit - overhead`` bytes; count one transmit each.

        ``n`` is the current group size, which sets the retransmit budget. Items are
        considered fewest transmits first, newest first among equals.
        """
        budget = limit - overhead
        out: list[Any] = []
        if budget <= 0 or not self._by_key:
            return out
        taken: list[_Item] = []
        misses = 0
        stop = False
        for t, bucket in enumerate(self._buckets):
            if not bucket:
                continue
            # Bucket 0 is filled in seq order; the others get items from several rounds.
            order = reversed(bucket) if t == 0 else sorted(bucket, reverse=True)
            for seq in order:
                item = bucket[seq]
                if item.size > budget:
                    # Smaller items further down may still fit, but scanning the whole
                    # queue on every packet is linear work: give up after a few misses.
                    misses += 1
                    if budget < 32 or misses >= 8:
                        stop = True
                        break
                    continue
                budget -= item.size
                out.append(item.record)
                taken.append(item)
                if budget <= 0:
                    stop = True
                    break
            if stop:
                break
        if taken:
            max_tx = retransmit_limit(self.retransmit_mult, n)
            buckets = self._buckets
            by_key = self._by_key
            for item in taken:
                del buckets[item.transmits][item.seq]
                item.transmits += 1
                if item.transmits >= max_tx:
                    del by_key[item.key]
                else:
                    if item.transmits == len(buckets):
                        buckets.append({})
                    buckets[item.transmits][item.seq] = item
        return out
