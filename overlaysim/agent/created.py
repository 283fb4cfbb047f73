"""The agent's kernel objects, journalled for exact teardown.

The data plane records each object in a :class:`CreatedLog` (a
:class:`~overlaysim.agent.journal.Journal`: the line is written *before* the object
is created, the delete line after it is gone). Replaying the file gives the objects
that may still exist, in creation order, so a crashed agent can be cleaned up later
(:func:`clean_recorded`) by removing exactly what it made; removal tolerates objects
that were journalled but never created. :func:`clean_prefixed` is the blunter tool behind ``overlaysim clean``:
it removes named namespaces carrying the project's own prefix and nothing else.

Only two kinds of object need records: named namespaces (everything inside them
goes with them) and links created in a namespace we do not own (the VXLAN device
between its creation in the host namespace and its move into the sandbox).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from overlaysim.agent import names
from overlaysim.agent import netns as kns
from overlaysim.agent.journal import Journal

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

    def key(self) -> tuple[object, ...]:
        return (self.kind, self.name, self.netns, self.ns_ino, self.owner)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class CreatedLog(Journal[Created]):
    """The data plane's journal (see :mod:`overlaysim.agent.journal` for the rule)."""

    @classmethod
    def replay(cls, path: Path) -> CreatedLog:
        """A journal continuing the record at ``path``, holding what is still outstanding."""
        record = cls(path)
        record.replay_lines(path, lambda data: Created(**data))
        return record


def load_outstanding(path: Path) -> list[Created]:
    """Replay a record file: objects added and not deleted, oldest first."""
    return CreatedLog.replay(path).outstanding()


def remove_created(obj: Created) -> bool:
    """Remove one recorded object; False if it was already gone."""
    if obj.kind == NETNS:
        kns.kill_inside(obj.name)  # a service task's command of the crashed boot
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


def clean_prefixed(prefix: str = names.PREFIX) -> list[str]:
    """Remove named namespaces called ``<prefix>-*`` and links ``<prefix>-*`` here.

    Only the project's own prefix is touched; the calling namespace is searched for
    links because a crash can leave a VXLAN device there before it was moved.
    """
    names.check_prefix(prefix)
    start = f"{prefix}-"
    removed = [name for name in kns.list_netns() if name.startswith(start)]
    removed = [name for name in removed if kns.remove_netns(name)]
    ipr = kns.open_ipr(None)
    try:
        links = [msg.get("ifname") or "" for msg in ipr.link("dump")]
        removed += [n for n in links if n.startswith(start) and kns.delete_link(ipr, n)]
    finally:
        kns.close_ipr(ipr)
    return removed
