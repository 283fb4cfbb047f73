"""The journal of kernel objects the project creates: one rule, one file format.

Both the agent's data plane (namespaces, the VXLAN device in transit) and the
emulator's underlay (links, bridges, host shells, processes, nftables tables) keep
one :class:`Journal` each, an append-only JSON-lines file:

* ``{"op": "add", ...item}`` is written **before** the object is created, so a crash
  between the two leaves a journal line naming an object that may or may not exist;
  removal tolerates "already gone", so cleaning it is safe either way. Objects whose
  identity only exists once they do (a process's PID) are journalled right after.
* ``{"op": "del", ...item}`` is written after the object was removed.
* Any other ``op`` is a header line a subclass reads (:meth:`Journal._header`).

Replaying the file (:meth:`Journal.replay_lines`) gives what may still exist, oldest
first; unreadable lines (a crash mid-write) are skipped with a warning. Items are
frozen dataclasses with a ``key()`` (identity) and a ``to_dict()``/``from_dict()``
pair; the journal never interprets them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)


class JournalItem(Protocol):
    """What a journal needs of the objects it records."""

    def key(self) -> tuple[object, ...]: ...
    def to_dict(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=JournalItem)


class Journal(Generic[T]):
    """Append-only record of created objects; :meth:`outstanding` is what may remain.

    ``path`` None keeps the record in memory only (tests, throwaway data planes).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._live: dict[tuple[object, ...], T] = {}

    def add(self, item: T) -> None:
        """Record ``item`` -- call just **before** creating it (see module docstring)."""
        self._live[item.key()] = item
        self._append({"op": "add", **item.to_dict()})

    def drop(self, item: T) -> None:
        """Record that ``item`` is gone (removed, or its creation failed)."""
        self._live.pop(item.key(), None)
        self._append({"op": "del", **item.to_dict()})

    def outstanding(self) -> list[T]:
        """Objects recorded and not dropped, oldest first."""
        return list(self._live.values())

    def replay_lines(self, path: Path, parse: Callable[[dict[str, Any]], T]) -> None:
        """Rebuild :meth:`outstanding` from ``path``; header lines go to :meth:`_header`."""
        self._live = {}
        for op, data in _read(path):
            if op not in ("add", "del"):
                self._header(op, data)
                continue
            try:
                item = parse(data)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("%s: skipping unreadable journal line (%s)", path, exc)
                continue
            if op == "add":
                self._live[item.key()] = item
            else:
                self._live.pop(item.key(), None)

    def _header(self, op: str, data: dict[str, Any]) -> None:
        """A line that is not an add or a delete (subclasses keep run headers)."""
        log.warning("%s: skipping journal line with op %r", self.path, op)

    def _append(self, data: dict[str, object]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one short append per line: a crash loses at most the line in flight
        with self.path.open("a") as f:
            f.write(json.dumps(data, sort_keys=True) + "\n")
            f.flush()


def _read(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    if not path.exists():
        return
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            op = str(data.pop("op"))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("%s:%d: skipping unreadable journal line (%s)", path, lineno, exc)
            continue
        yield op, data
