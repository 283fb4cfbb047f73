"""A transmit-limited broadcast queue, like memberlist's TransmitLimitedQueue.

Each queued item is piggybacked on outgoing packets until it has been sent
``retransmit_limit(mult, n)`` times, ``n`` being the cluster (or network) size that the
caller passes in: the queue never looks it up itself. Items with the fewest transmits
go first (newest first among equals), so fresh news spreads fastest. A new item with the
same ``key`` replaces the old one: a newer fact about a node or entry invalidates the
older.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from overlaysim.core.config import retransmit_limit
from overlaysim.core.wire import _to_list


@dataclass(slots=True, order=True)
class _Item:
    transmits: int
    neg_id: int  # newer items (larger id) sort first among equal transmits
    key: Hashable = field(compare=False)
    record: Any = field(compare=False)
    size: int = field(compare=False)
    live: bool = field(default=True, compare=False)


def record_size(record: Any) -> int:
    """Encoded size of a wire record (what it adds to a packet)."""
    return len(msgpack.packb(_to_list(record), use_bin_type=True))


class TransmitLimitedQueue:
    """Priority queue of records to piggyback, bounded by a retransmit budget."""

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        self._heap: list[_Item] = []
        self._by_key: dict[Hashable, _Item] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: Hashable, record: Any) -> None:
        """Queue ``record``; an older item with the same ``key`` is dropped."""
        old = self._by_key.get(key)
        if old is not None:
            old.live = False
        item = _Item(0, -next(self._ids), key, record, record_size(record))
        self._by_key[key] = item
        heapq.heappush(self._heap, item)

    def get(self, n: int, overhead: int, limit: int) -> list[Any]:
        """Take records fitting in ``limit - overhead`` bytes; count one transmit each.

        ``n`` is the current group size, which sets the retransmit budget.
        """
        budget = limit - overhead
        max_tx = retransmit_limit(self.retransmit_mult, n)
        out: list[Any] = []
        keep: list[_Item] = []
        heap = self._heap
        while heap and budget > 0:
            item = heapq.heappop(heap)
            if not item.live:
                continue
            if item.size > budget:
                keep.append(item)
                # Smaller items further down may still fit; stop when few bytes remain.
                if budget < 32:
                    break
                continue
            budget -= item.size
            out.append(item.record)
            item.transmits += 1
            if item.transmits >= max_tx:
                item.live = False
                del self._by_key[item.key]
            else:
                keep.append(item)
        for item in keep:
            heapq.heappush(heap, item)
        return out

    def prune(self, max_items: int) -> None:
        """Drop the most-transmitted items beyond ``max_items`` (bounds memory)."""
        if len(self._by_key) <= max_items:
            return
        live = sorted(i for i in self._heap if i.live)
        for item in live[max_items:]:
            item.live = False
            del self._by_key[item.key]
        self._heap = [i for i in live[:max_items]]
        heapq.heapify(self._heap)
