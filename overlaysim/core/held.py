"""Which nodes hold which record objects: one byte per (record, node), by record.

The table layer asks, for every record of every gossip message and bulk sync, "is this
the very record object I hold?" (records are immutable; in the simulator one object
travels to every node). Asked of the node's own maps, that is one dict lookup per record
into a map of thousands, and with N nodes' maps (N^2 slots in all) nearly every lookup
misses the CPU cache. Here the answer is one byte in a row per record, indexed by the
node's slot: the rows of all records fit in cache, and a message's records are checked
with C-level maps.

Nodes that share record objects (a simulated cluster) share one index, each with its own
slot; a node alone (a live agent) has a private one. An index is derived state: a node
sets its byte where it stores a record and clears it where it lets the record go, so the
byte is set exactly while the node holds the record. Rows are found by ``id``: a record
some node holds is alive, so its id is not reused; a row is dropped once no slot is set
(a slot of a node that stopped without letting go keeps its row, but is never reused,
so that row answers "not held" to every other node).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import repeat
from operator import getitem

__all__ = ["HeldIndex"]


class HeldIndex:
    """Rows of "held" bytes, one per record object that some node holds."""

    __slots__ = ("_rows", "_zero")

    def __init__(self) -> None:
        self._rows: dict[int, bytearray] = {}
        #: The row of a record nobody holds; one byte per slot given out so far.
        self._zero = bytearray()

    def new_slot(self) -> int:
        """A slot for one more node; slots are never reused."""
        self._zero.append(0)
        return len(self._zero) - 1

    def hold(self, slot: int, record: object) -> None:
        """The node in ``slot`` now holds ``record``."""
        i = id(record)
        row = self._rows.get(i)
        if row is None:
            row = self._rows[i] = bytearray(len(self._zero))
        elif slot >= len(row):  # a slot given out after the row was made
            row.extend(bytes(len(self._zero) - len(row)))
        row[slot] = 1

    def release(self, slot: int, record: object) -> None:
        """The node in ``slot`` no longer holds ``record``."""
        i = id(record)
        row = self._rows.get(i)
        if row is None or slot >= len(row):
            return
        row[slot] = 0
        if row.find(1) < 0:
            del self._rows[i]

    def flags(self, slot: int, records: Iterable[object]) -> Iterator[int]:
        """Lazily, 1 or 0 for each of ``records``: whether ``slot`` holds it.

        May raise IndexError for a record whose row predates ``slot``: the caller then
        asks its own maps.
        """
        rows = map(self._rows.get, map(id, records), repeat(self._zero))
        return map(getitem, rows, repeat(slot))

    def holds(self, slot: int, record: object) -> bool:
        """Whether the node in ``slot`` holds ``record`` (for tests and checks)."""
        row = self._rows.get(id(record))
        return row is not None and slot < len(row) and row[slot] == 1

    def __len__(self) -> int:
        """Records held by at least one slot."""
        return len(self._rows)
