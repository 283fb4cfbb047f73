"""Outputs of the protocol core, pulled by a driver (simulator or live agent).

A core object never performs I/O: it queues :class:`Send` items (messages to deliver)
and events (facts for metrics and for the data plane), and exposes the deadline of its
next timer. The driver delivers, records and re-arms one timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from overlaysim.core.slotinit import slot_init
from overlaysim.core.wire import Message


@slot_init
@dataclass(frozen=True, slots=True)
class Send:
    """Deliver ``msg`` to the node at address ``dst``.

    ``reliable`` asks for a stream (TCP in the agent): push-pull and bulk sync.
    ``size`` is ``len(encode(msg))`` when the sender already knew it (a gossip message
    packed from records of known size), else None; a driver that only needs the size
    (the simulator) may use it instead of computing it.
    """

    dst: str
    msg: Message
    reliable: bool = False
    size: int | None = None


class MemberEventKind(Enum):
    JOIN = "join"  # first seen alive (or seen alive again after dead/left)
    SUSPECT = "suspect"
    ALIVE = "alive"  # suspicion refuted / recovered
    DEAD = "dead"
    LEAVE = "leave"  # graceful leave
    UPDATE = "update"  # alive with a new address or epoch (restart)


@slot_init
@dataclass(frozen=True, slots=True)
class MemberEvent:
    """The local view of ``node`` changed."""

    kind: MemberEventKind
    node: str
    incarnation: int
    addr: str = ""
    epoch: int = 0


class EntryEventKind(Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"  # a live entry went away: unprogram it
    #: A deletion learned for a key this node held no live copy of (the add never
    #: reached it, or its owner was already held down): nothing to unprogram, but the
    #: node now holds the delete, which is what convergence of a delete measures.
    TOMBSTONE = "tombstone"
    #: A newer version of a live entry with the same owner and value (the owner
    #: re-committed it: a new boot, or a fresh version answering a stale copy). Nothing
    #: to reprogram, but the node now holds that version, which is what convergence of
    #: its commit measures: for observers only, the data plane leaves it alone.
    REFRESH = "refresh"


@slot_init
@dataclass(frozen=True, slots=True)
class EntryEvent:
    """The local copy of a table entry changed (what the data plane programs)."""

    kind: EntryEventKind
    network: str
    table: str
    key: str
    owner: str
    #: The entry's own value map, not a copy: read it, never change it (the entry, and
    #: in the simulator every node's copy of it, is the same object). A copy per event
    #: was one allocation per (entry, node) acceptance.
    value: dict[str, str]
