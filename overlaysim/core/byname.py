"""Per-node maps keyed by node name, stored as lists indexed by a dense name number.

Every node keeps a few facts per peer (its epoch, its address, its networks, its place
in a sampling list...). As dicts keyed by name, each fact costs a dict slot per
(node, peer) pair, 16-30 bytes; with N nodes in one process that is N^2 slots per fact,
gigabytes at thousands of nodes. Here each name gets a small number once per process
(:func:`name_number`, the order names were first stored), and a node's map is a list
indexed by that number: 8 bytes per pair.

Only a storage layout: a :class:`ByName` behaves as a dict from name to value for the
operations the protocol uses (get, set, pop, membership, size), except that it cannot be
iterated, so nothing can depend on an order. Values are never None (None marks a hole).
Numbers are never reused: the table grows with the distinct names a process stores,
as the dicts it replaces did.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["ByName", "name_number"]

V = TypeVar("V")

_numbers: dict[str, int] = {}
_names: list[str] = []  # number -> name


def name_number(name: str) -> int:
    """The dense number of ``name`` in this process (assigned on first use)."""
    i = _numbers.get(name)
    if i is None:
        i = _numbers[name] = len(_names)
        _names.append(name)
    return i


class ByName(Generic[V]):
    """A map from node name to a non-None value, one list slot per name number."""

    __slots__ = ("_v", "_n")

    def __init__(self) -> None:
        self._v: list[V | None] = []
        self._n = 0  # values stored

    def __len__(self) -> int:
        return self._n

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ByName):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]

    def as_dict(self) -> dict[str, V]:
        """The stored names and values (in name-number order: for tests and debugging)."""
        return {_names[i]: x for i, x in enumerate(self._v) if x is not None}

    def __bool__(self) -> bool:
        return self._n > 0

    # The lookups below are the protocol's hottest calls: each is two C subscripts in a
    # try block (free in 3.11 unless it raises), the miss paths (a name never stored
    # anywhere, or past the end of this list) being the rare ones.

    def __contains__(self, name: object) -> bool:
        try:
            return self._v[_numbers[name]] is not None  # type: ignore[index]
        except (KeyError, IndexError):
            return False

    def get(self, name: str, default: V | None = None) -> V | None:
        try:
            x = self._v[_numbers[name]]
        except (KeyError, IndexError):
            return default
        return default if x is None else x

    def __getitem__(self, name: str) -> V:
        x = self.get(name)
        if x is None:
            raise KeyError(name)
        return x

    def __setitem__(self, name: str, value: V) -> None:
        i = _numbers.get(name)
        if i is None:
            i = name_number(name)
        v = self._v
        try:
            if v[i] is None:
                self._n += 1
        except IndexError:
            v.extend([None] * (i + 1 - len(v)))
            self._n += 1
        v[i] = value

    def add(self, name: str, value: V) -> bool:
        """Store ``value`` unless ``name`` has one already; True if it was stored.

        (``name in m`` then ``m[name] = value`` in one call: a hot pair in set-like uses.)
        """
        i = _numbers.get(name)
        if i is None:
            i = name_number(name)
        v = self._v
        try:
            if v[i] is not None:
                return False
        except IndexError:
            v.extend([None] * (i + 1 - len(v)))
        v[i] = value
        self._n += 1
        return True

    def __delitem__(self, name: str) -> None:
        if self.pop(name) is None:
            raise KeyError(name)

    def pop(self, name: str, default: V | None = None) -> V | None:
        i = _numbers.get(name)
        v = self._v
        if i is None or i >= len(v) or v[i] is None:
            return default
        x, v[i] = v[i], None
        self._n -= 1
        return x

    def update(self, items: list[tuple[str, V]]) -> None:
        """Set many at once (sizes the list once)."""
        if not items:
            return
        get = _numbers.get
        nums = [get(n) for n, _ in items]
        if None in nums:  # new names: number them in order
            nums = [name_number(n) for n, _ in items]
        top = max(nums)
        v = self._v
        if top >= len(v):
            v.extend([None] * (top + 1 - len(v)))
        added = 0
        for i, (_, x) in zip(nums, items, strict=True):
            if v[i] is None:
                added += 1
            v[i] = x
        self._n += added
