"""The agent's JSON-lines event log: one fact per line, stamped with the monotonic clock.

Every line is a JSON object with at least ``t`` (``time.monotonic()``: every network
namespace shares one kernel clock, so times from different agents compare directly),
``node`` (the agent's name) and ``kind``. The kinds, and the fields each adds, are
listed in ``docs/agent.md``; the scenario runner turns them into ``events.csv``,
``convergence.csv`` and ``traffic.csv``.

Lines are written whole and flushed one by one, so a SIGKILL loses at most the line
being written. Writes are serialised by a lock: the data-plane worker thread logs
kernel programming steps while the event loop logs protocol events.

(The module shares its name with the standard library's ``logging``; absolute imports
elsewhere are unaffected.)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from overlaysim.core.endpoint import ENDPOINTS
from overlaysim.core.events import EntryEvent, EntryEventKind, MemberEvent

#: The ``op`` field of an ``entry_seen`` line for each kind of table event.
_OPS = {
    EntryEventKind.CREATE: "add",
    EntryEventKind.UPDATE: "update",
    EntryEventKind.DELETE: "delete",
    EntryEventKind.TOMBSTONE: "delete",
    EntryEventKind.REFRESH: "refresh",
}

#: Every ``kind`` the agent writes.
KINDS = frozenset(
    {
        "start",
        "stop",
        "member_join",
        "member_suspect",
        "member_alive",
        "member_dead",
        "member_leave",
        "member_update",
        "entry_commit",
        "entry_seen",
        "entry_programmed",
        "attach",
        "detach",
        "program_error",
        "reconcile",
        "wire_error",
        "agent_error",
        "previous_boot",
        "keys_installed",
        "rekey_asked",
        "traffic",
        "timer_lag",
        "names",
        "command_stopped",
        "mesh_recovered",
        "mesh_restored",
        "gossip_tx",
        "gossip_rx",
    }
)


class EventLog:
    """Append-only JSON-lines log of one agent.

    ``path`` None writes no file (an agent run without ``--log``); ``keep`` keeps every
    record in :attr:`lines` too (tests). ``clock`` is injectable so tests need not
    depend on real time.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        node: str,
        keep: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.node = node
        self.clock = clock
        self.lines: list[dict[str, Any]] | None = [] if keep else None
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # buffering=1: line-buffered, each line reaches the kernel when written
            self._file = path.open("a", buffering=1, encoding="utf-8")

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Log one fact of ``kind`` now; returns the record written."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        record = {"t": self.clock(), "node": self.node, "kind": kind, **fields}
        line = json.dumps(record, separators=(",", ":"), default=str)
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
            if self.lines is not None:
                self.lines.append(record)
        return record

    def close(self) -> None:
        """Flush and close the file; later writes only go to memory (if kept)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def event_line(ev: MemberEvent | EntryEvent) -> tuple[str, dict[str, Any]]:
    """The ``kind`` and fields of the line a node event is logged as."""
    if isinstance(ev, MemberEvent):
        fields = {"subject": ev.node, "addr": ev.addr, "incarnation": ev.incarnation}
        return f"member_{ev.kind.value}", {**fields, "epoch": ev.epoch}
    # Endpoint entries carry their value: the names in it are what the service-DNS
    # metrics replay (emu/collect.py), as the simulator feeds them from its tables.
    value = dict(ev.value) if ev.table == ENDPOINTS and ev.value else None
    return "entry_seen", {
        "network": ev.network,
        "table": ev.table,
        "key": ev.key,
        "op": _OPS[ev.kind],
        "owner": ev.owner,
        **({"value": value} if value is not None else {}),
    }


def read_log(path: Path) -> list[dict[str, Any]]:
    """Parse an agent log; a torn last line (the agent was killed mid-write) is skipped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class RateLimit:
    """Allow one report per ``interval`` seconds and count what was suppressed.

    A flood of garbage packets must not turn into a flood of log lines.
    """

    __slots__ = ("interval", "_next", "suppressed")

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next = float("-inf")
        self.suppressed = 0

    def allow(self, now: float) -> int | None:
        """Number of reports suppressed since the last allowed one, or None to stay quiet."""
        if now < self._next:
            self.suppressed += 1
            return None
        self._next = now + self.interval
        out, self.suppressed = self.suppressed, 0
        return out
