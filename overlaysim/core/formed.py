"""The table layer's peer facts of a formed cluster, shared by its nodes until they change.

A simulated cluster started formed (``boot: formed``) tells every node the same
``(node, addr, epoch)`` of every peer. Each node keeps those as name-indexed lists (its
peers' epochs and addresses) and a sampling list of live peers: three lists of N slots
per node, identical on every node except for the node's own slot, which it leaves out.
Here each node reads one shared copy through a view that hides its own slot, and takes
a private copy (the plain structure, exactly as the per-node build would have made it)
the first time it changes one of them: nothing changes until a member dies, restarts or
joins.

Only a storage layout: each view answers every question exactly as the per-node
structure it stands for (``tests/core/test_formed_facts.py`` checks them side by side).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from overlaysim.core.byname import ByName, _numbers, name_number

__all__ = ["FormedPeers", "SharedByName", "SharedNodeSet", "formed_peers"]

V = TypeVar("V")


class SharedByName(Generic[V]):
    """A :class:`~overlaysim.core.byname.ByName` over a shared list, minus one slot.

    Reads the shared list (indexed by name number) with slot ``hole`` (the node's own
    name) hidden; copies it on the first write. Same operations as ``ByName``.
    """

    __slots__ = ("_v", "_n", "_hole")

    def __init__(self, shared: list[V | None], n: int, hole: int) -> None:
        self._v = shared
        self._n = n  # values visible
        # The hidden slot while the list is shared (past its end if none is hidden);
        # -1 once the list is ours (the hidden slot then holds None).
        self._hole = hole

    def _own(self) -> list[V | None]:
        v = self._v
        if self._hole >= 0:
            v = self._v = v.copy()
            if self._hole < len(v):
                v[self._hole] = None
            self._hole = -1
        return v

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __eq__(self, other: object) -> bool:
        as_dict = getattr(other, "as_dict", None)
        if as_dict is None:
            return NotImplemented
        return self.as_dict() == as_dict()

    __hash__ = None  # type: ignore[assignment]

    def as_dict(self) -> dict[str, V]:
        """The stored names and values, in name-number order (tests, debugging)."""
        from overlaysim.core.byname import _names

        return {_names[i]: x for i, x in enumerate(self._v) if x is not None and i != self._hole}

    def get(self, name: str, default: V | None = None) -> V | None:
        try:
            i = _numbers[name]
            x = self._v[i]
        except (KeyError, IndexError):
            return default
        return default if x is None or i == self._hole else x

    def __contains__(self, name: object) -> bool:
        return self.get(name) is not None  # type: ignore[arg-type]

    __getitem__ = ByName.__getitem__  # in terms of get, which hides the hole

    def __setitem__(self, name: str, value: V) -> None:
        i = name_number(name)
        v = self._own()
        if i >= len(v):
            v.extend([None] * (i + 1 - len(v)))
        if v[i] is None:
            self._n += 1
        v[i] = value

    def __delitem__(self, name: str) -> None:
        if self.pop(name) is None:
            raise KeyError(name)

    def pop(self, name: str, default: V | None = None) -> V | None:
        x = self.get(name)
        if x is None:
            return default
        self._own()[_numbers[name]] = None
        self._n -= 1
        return x

    def update(self, items: list[tuple[str, V]]) -> None:
        for name, x in items:
            self[name] = x


class _NodeSetLike(Protocol):
    def __len__(self) -> int: ...
    def __contains__(self, node: object) -> bool: ...
    def add(self, node: str) -> bool: ...
    def extend(self, nodes: list[str]) -> None: ...
    def discard(self, node: str) -> None: ...
    def sample(self, rng: Any, k: int) -> list[str]: ...
    def choice(self, rng: Any) -> str: ...
    def as_set(self) -> set[str]: ...


class _Without(Sequence[str]):
    """``names`` without the item at ``hole`` (a read-only view, no copy)."""

    __slots__ = ("_names", "_hole", "_len")

    def __init__(self, names: list[str], hole: int) -> None:
        if not 0 <= hole < len(names):
            hole = len(names)  # nothing left out
        self._names = names
        self._hole = hole
        self._len = len(names) - (hole < len(names))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        if not 0 <= i < self._len:
            raise IndexError(i)
        return self._names[i + (i >= self._hole)]


class SharedNodeSet:
    """A node set (the table layer's ``_NodeSet``) that is a shared name list minus one.

    Built as ``make()`` extended with ``names`` minus the node's own would be; sampled
    and chosen from in the same order, so with the same draws; becomes that very
    structure (``make()`` filled in the same order) on the first change.
    """

    __slots__ = ("_items", "_pos", "_real", "_make")

    def __init__(
        self, names: list[str], pos: dict[str, int], me: str, make: Callable[[], _NodeSetLike]
    ) -> None:
        self._items = _Without(names, pos.get(me, -1))
        self._pos = pos
        self._real: _NodeSetLike | None = None
        self._make = make

    def _own(self) -> _NodeSetLike:
        real = self._real
        if real is None:
            real = self._real = self._make()
            real.extend(list(self._items))
        return real

    def __len__(self) -> int:
        real = self._real
        return len(self._items) if real is None else len(real)

    def __contains__(self, node: object) -> bool:
        real = self._real
        if real is None:
            i = self._pos.get(node)  # type: ignore[call-overload]
            return i is not None and i != self._items._hole
        return node in real

    def add(self, node: str) -> bool:
        return self._own().add(node)

    def extend(self, nodes: list[str]) -> None:
        self._own().extend(nodes)

    def discard(self, node: str) -> None:
        self._own().discard(node)

    def sample(self, rng: Any, k: int) -> list[str]:
        real = self._real
        if real is None:
            return rng.sample(self._items, min(k, len(self._items)))  # type: ignore[no-any-return]
        return real.sample(rng, k)

    def choice(self, rng: Any) -> str:
        real = self._real
        if real is None:
            return self._items[rng.randrange(len(self._items))]
        return real.choice(rng)

    def as_set(self) -> set[str]:
        real = self._real
        return set(self._items) if real is None else real.as_set()


class FormedPeers:
    """``(node, addr, epoch)`` of every member of a formed cluster, laid out once."""

    __slots__ = ("given", "names", "pos", "epochs", "addrs")

    def __init__(self, given: tuple[tuple[str, str, int], ...]) -> None:
        self.given = given  # held, so its id is not reused while this is remembered
        self.names = [m[0] for m in given]
        self.pos = {name: i for i, name in enumerate(self.names)}
        top = max(map(name_number, self.names), default=-1)
        self.epochs: list[int | None] = [None] * (top + 1)
        self.addrs: list[str | None] = [None] * (top + 1)
        for name, addr, epoch in given:
            i = _numbers[name]
            self.epochs[i] = epoch
            self.addrs[i] = addr

    def views(
        self, me: str, make: Callable[[], _NodeSetLike]
    ) -> tuple[SharedByName[int], SharedByName[str], SharedNodeSet]:
        """Node ``me``'s epochs, addresses and live-peer set (itself left out)."""
        # Past the end when ``me`` is not a member: nothing hidden, still shared.
        hole = _numbers[me] if me in self.pos else len(self.epochs)
        n = len(self.names) - (me in self.pos)
        return (
            SharedByName(self.epochs, n, hole),
            SharedByName(self.addrs, n, hole),
            SharedNodeSet(self.names, self.pos, me, make),
        )


_last: FormedPeers | None = None


def formed_peers(members: tuple[tuple[str, str, int], ...]) -> FormedPeers | None:
    """The shared layout of ``members`` (the last one is remembered, by identity).

    None when it cannot stand for the per-node build: a name that is not a str, a
    duplicate name, or an epoch or address that is None.
    """
    global _last
    f = _last
    if f is not None and f.given is members:
        return f
    names = [m[0] for m in members]
    if (
        any(type(n) is not str for n in names)
        or len(set(names)) != len(names)
        or any(m[1] is None or m[2] is None for m in members)
    ):
        return None
    f = _last = FormedPeers(members)
    return f
