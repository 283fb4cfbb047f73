"""An ordered map that shares a read-only base with other maps and keeps only its changes.

A simulated cluster started formed (``boot: formed``) gives every node the same member
records for all N peers, and they stay the same until the cluster diverges. As a dict
per node, that is N^2 dict slots (22-30 bytes each). A :class:`CowMap` points at one
shared base dict and holds, per node, only what differs from it: its own entries placed
before the base (a node's own record), the entries it changed, removed or added.

It behaves exactly as a dict would had it been filled with the head entries and then
the base ones, for the operations the protocol uses: get, ``[]``, ``in``, set, delete,
``len``, and iteration (keys, values, items) in the same order as that dict (a changed
entry keeps its place; a removed entry that comes back goes to the end).
``tests/core/test_cowmap.py`` replays random operations against a plain dict.

Values must not be None (None marks "absent" in lookups). The base must never be
mutated once handed over: every map built on it reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Generic, TypeVar

__all__ = ["CowMap"]

K = TypeVar("K")
V = TypeVar("V")


class CowMap(Generic[K, V]):
    """``dict(head) | base`` (head first, base after), sharing ``base``, copying on write.

    Layout: ``_own`` holds every entry not served by the base: the head entries (always
    its first ``_head`` keys), changed base entries (their place is the base's) and
    entries added later, in the order added. ``_skip`` holds base keys whose base place
    is not theirs: removed, re-added at the end, or shadowed by a head entry.
    """

    __slots__ = ("_base", "_own", "_skip", "_head", "_n")

    def __init__(self, head: Mapping[K, V], base: Mapping[K, V]) -> None:
        self._base = base
        self._own: dict[K, V] = dict(head)
        self._head = len(self._own)
        self._skip: set[K] = {k for k in self._own if k in base}
        self._n = len(self._own) + len(base) - len(self._skip)

    # -- lookups ---------------------------------------------------------------------

    def get(self, key: K, default: V | None = None) -> V | None:
        v = self._own.get(key)
        if v is not None:
            return v
        if key in self._skip:
            return default
        return self._base.get(key, default)

    def __getitem__(self, key: K) -> V:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: object) -> bool:
        return key in self._own or (key in self._base and key not in self._skip)

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    # -- changes ---------------------------------------------------------------------

    def __setitem__(self, key: K, value: V) -> None:
        own = self._own
        if key not in own:
            if key not in self._base or key in self._skip:
                # New to this map: it goes to the end. A base key here is already in
                # _skip (it was removed or shadowed), so its base place stays unused.
                self._n += 1
        own[key] = value

    def __delitem__(self, key: K) -> None:
        own = self._own
        if key in own:
            if self._head and key in islice(own, self._head):
                self._head -= 1
            del own[key]
            if key in self._base:
                self._skip.add(key)
        elif key in self._base and key not in self._skip:
            self._skip.add(key)
        else:
            raise KeyError(key)
        self._n -= 1

    def pop(self, key: K, default: V | None = None) -> V | None:
        v = self.get(key)
        if v is None:
            return default
        del self[key]
        return v

    # -- iteration (the order of the equivalent dict) --------------------------------

    def items(self) -> Iterator[tuple[K, V]]:
        own, base, skip = self._own, self._base, self._skip
        rest = iter(own.items())
        yield from islice(rest, self._head)
        if own or skip:
            for k, v in base.items():
                if k not in skip:
                    yield k, own.get(k, v)
        else:
            yield from base.items()  # nothing changed, nothing removed
        for k, v in rest:
            if k in skip or k not in base:  # added after the base (not a changed entry)
                yield k, v

    def keys(self) -> Iterator[K]:
        return (k for k, _ in self.items())

    __iter__ = keys

    def values(self) -> Iterator[V]:
        return (v for _, v in self.items())

    def as_dict(self) -> dict[K, V]:
        """A plain dict with the same entries in the same order."""
        return dict(self.items())

    def owned(self) -> int:
        """Entries this map holds itself (for memory accounting and tests)."""
        return len(self._own) + len(self._skip)
