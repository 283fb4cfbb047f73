"""A record of every kernel object the project creates, for exact teardown.

Each creation is appended to an in-memory list and, when a path is given, to a
JSON-lines file (``{"op": "add", ...}``); each removal appends ``{"op": "del", ...}``.
Replaying the file gives the objects still outstanding, in creation order, so a
crashed run can be cleaned up later (:func:`clean_recorded`) by removing exactly
what it made. :func:`clean_prefixed` is the blunter tool behind ``overlaysim clean``:
it removes named namespaces carrying the project's own prefix and nothing else.

Only two kinds of object need records: named namespaces (everything inside them
goes with them) and links created in a namespace we do not own (the VXLAN device
between its creation in the host namespace and its move into the sandbox).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from overlaysim.agent import netns as kns

log = logging.getLogger(__name__)

NETNS = "netns"
LINK = "link"


@dataclass(frozen=True, slots=True, kw_only=True)
class Created:
    """One kernel object the project made.

    ``netns`` locates a link (a namespace name or ``/proc/PID/ns/net``) and
    ``ns_ino`` is that namespace's inode when recorded, so a reused PID path is
    not mistaken for the original namespace. ``owner`` says what the object is for,
    e.g. ``network:web`` or ``container:db-1`` (the mapping from hashed names).
    """

    kind: str
    name: str
    netns: str | None = None
    ns_ino: int | None = None
    owner: str = ""

    def __post_init__(self) -> None:
        if self.kind not in (NETNS, LINK):
            raise ValueError(f"unknown kind {self.kind!r}")


class CreatedLog:
    """Append-only record of created objects; :meth:`outstanding` is what is left."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._live: list[Created] = []

    def add(self, obj: Created) -> None:
        """Record that ``obj`` now exists (call right after creating it)."""
        self._live.append(obj)
        self._write("add", obj)

    def drop(self, obj: Created) -> None:
        """Record that ``obj`` is gone (call right after removing it)."""
        if obj in self._live:
            self._live.remove(obj)
        self._write("del", obj)

    @classmethod
    def replay(cls, path: Path) -> CreatedLog:
        """A log continuing the record at ``path``, holding what is still outstanding."""
        record = cls(path)
        record._live = load_outstanding(path)
        return record

    def outstanding(self) -> list[Created]:
        """Objects created and not yet removed, oldest first."""
        return list(self._live)

    def _write(self, op: str, obj: Created) -> None:
        if self.path is None:
            return
        line = json.dumps({"op": op, **asdict(obj)}, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one short append per line: a crash loses at most the line in flight
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()


def load_outstanding(path: Path) -> list[Created]:
    """Replay a record file: objects added and not deleted, oldest first.

    Unreadable lines (a crash mid-write) are skipped with a warning.
    """
    live: list[Created] = []
    if not path.exists():
        return live
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            op = data.pop("op")
            obj = Created(**data)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("%s:%d: skipping unreadable record (%s)", path, lineno, exc)
            continue
        if op == "add":
            live.append(obj)
        elif op == "del" and obj in live:
            live.remove(obj)
    return live


def remove_created(obj: Created) -> bool:
    """Remove one recorded object; False if it was already gone."""
    if obj.kind == NETNS:
        return kns.remove_netns(obj.name)
    if obj.ns_ino is not None and kns.ns_inode(obj.netns) != obj.ns_ino:
        return False  # that namespace is gone (a reused PID path is someone else's)
    try:
        ipr = kns.open_ipr(obj.netns)
    except OSError as exc:
        if kns.is_gone(exc):
            return False
        raise
    try:
        return kns.delete_link(ipr, obj.name)
    finally:
        kns.close_ipr(ipr)


def remove_all(record: CreatedLog) -> tuple[list[Created], list[Exception]]:
    """Remove everything outstanding in ``record``, newest first.

    Returns the objects that were still present (and are now removed) and the
    failures; failed objects stay outstanding so a later clean can retry them.
    """
    removed: list[Created] = []
    errors: list[Exception] = []
    for obj in reversed(record.outstanding()):
        try:
            if remove_created(obj):
                removed.append(obj)
        except Exception as exc:  # keep going: one stuck object must not leak the rest
            log.warning("removing %s: %s", obj, exc)
            errors.append(exc)
            continue
        record.drop(obj)
    return removed, errors


def clean_recorded(path: Path) -> list[Created]:
    """Remove what a (crashed) run recorded in ``path`` and mark it removed there.

    Returns the objects that were actually still present. Failures are logged and
    left outstanding in the file.
    """
    removed, _errors = remove_all(CreatedLog.replay(path))
    return removed


def clean_prefixed(prefix: str = "osim") -> list[str]:
    """Remove named namespaces called ``<prefix>-*`` and links ``<prefix>-*`` here.

    Only the project's own prefix is touched; the calling namespace is searched for
    links because a crash can leave a VXLAN device there before it was moved.
    """
    kns.check_prefix(prefix)
    start = f"{prefix}-"
    removed = [name for name in kns.list_netns() if name.startswith(start)]
    removed = [name for name in removed if kns.remove_netns(name)]
    ipr = kns.open_ipr(None)
    try:
        names = [msg.get("ifname") or "" for msg in ipr.link("dump")]
        removed += [n for n in names if n.startswith(start) and kns.delete_link(ipr, n)]
    finally:
        kns.close_ipr(ipr)
    return removed
