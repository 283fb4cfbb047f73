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
from dataclasses import dataclass
from typing import Any

import msgpack

from overlaysim.core.config import retransmit_limit
from overlaysim.core.wire import _to_list


@dataclass(slots=True)
class _Item:
    transmits: int
    key: Hashable
    record: Any
    size: int
    live: bool = True


# Heap entries are (transmits, -id, item): ints compare in C, and newer items (larger
# id) sort first among equal transmit counts.
_Entry = tuple[int, int, _Item]


def record_size(record: Any) -> int:
    """Encoded size of a wire record (what it adds to a packet)."""
    return len(msgpack.packb(_to_list(record), use_bin_type=True))


class TransmitLimitedQueue:
    """Priority queue of records to piggyback, bounded by a retransmit budget."""

    def __init__(self, retransmit_mult: int) -> None:
        self.retransmit_mult = retransmit_mult
        self._heap: list[_Entry] = []
        self._by_key: dict[Hashable, _Item] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._by_key)

    def queue(self, key: Hashable, record: Any) -> None:
        """Queue ``record``; an older item with the same ``key`` is dropped."""
        old = self._by_key.get(key)
        if old is not None:
            old.live = False
        item = _Item(0, key, record, record_size(record))
        self._by_key[key] = item
        heapq.heappush(self._heap, (0, -next(self._ids), item))

    def get(self, n: int, overhead: int, limit: int) -> list[Any]:
        """Take records fitting in ``limit - overhead`` bytes; count one transmit each.

        ``n`` is the current group size, which sets the retransmit budget.
        """
        budget = limit - overhead
        max_tx = retransmit_limit(self.retransmit_mult, n)
        out: list[Any] = []
        keep: list[_Entry] = []
        heap = self._heap
        pop = heapq.heappop
        misses = 0
        while heap and budget > 0:
            entry = pop(heap)
            item = entry[2]
            if not item.live:
                continue
            if item.size > budget:
                keep.append(entry)
                # Smaller items further down may still fit, but scanning the whole queue
                # on every packet is linear work: give up after a few misses.
                misses += 1
                if budget < 32 or misses >= 8:
                    break
                continue
            budget -= item.size
            out.append(item.record)
            item.transmits += 1
            if item.transmits >= max_tx:
                item.live = False
                del self._by_key[item.key]
            else:
                keep.append((item.transmits, entry[1], item))
        for entry in keep:
            heapq.heappush(heap, entry)
        return out
