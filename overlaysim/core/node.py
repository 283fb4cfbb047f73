"""One overlay node: membership and tables composed behind one sans-I/O surface.

The node routes each message to the protocol that owns its type and feeds membership
changes to the table layer (a dead node's entries are cleaned up, a restarted node's
stale entries replaced). Drivers see one object: ``receive``, ``handle_timer``,
``next_timer``, ``take_sends``, ``take_events``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from operator import is_

from overlaysim.core.config import MembershipConfig, TableConfig
from overlaysim.core.events import EntryEvent, MemberEvent, MemberEventKind, Send
from overlaysim.core.membership import Member, Membership
from overlaysim.core.tables import Tables
from overlaysim.core.wire import Message, MsgType

_MEMBERSHIP_TYPES = frozenset(
    {
        MsgType.PING,
        MsgType.INDIRECT_PING,
        MsgType.ACK,
        MsgType.NACK,
        MsgType.GOSSIP,
        MsgType.PUSH_PULL,
    }
)
_TABLE_TYPES = frozenset({MsgType.TABLE_GOSSIP, MsgType.BULK_SYNC, MsgType.NETWORK_GOSSIP})

_UP = (MemberEventKind.JOIN, MemberEventKind.ALIVE, MemberEventKind.UPDATE)
_DOWN = (MemberEventKind.DEAD, MemberEventKind.LEAVE)


_last_facts: tuple[Sequence[Member], tuple[Member, ...], tuple[tuple[str, str, int], ...]] | None
_last_facts = None


def _peer_facts(members: Sequence[Member]) -> tuple[tuple[str, str, int], ...]:
    """``(name, addr, epoch)`` of each member, as one tuple for every node booted from
    the same (unchanged) list, so that their table layers can share it."""
    global _last_facts
    last = _last_facts
    if (
        last is not None
        and last[0] is members
        and len(members) == len(last[1])
        and all(map(is_, members, last[1]))
    ):
        return last[2]
    facts = tuple((m.name, m.addr, m.epoch) for m in members)
    _last_facts = (members, tuple(members), facts)
    return facts


class Node:
    """Membership + tables for one host.

    ``epoch`` identifies this boot of the node: a restart must use a higher epoch so
    that peers replace (rather than merge) what they knew about the previous boot.
    """

    def __init__(
        self,
        *,
        name: str,
        addr: str,
        membership: MembershipConfig,
        tables: TableConfig,
        rng: random.Random,
        epoch: int = 0,
    ) -> None:
        if not membership.epochs:
            epoch = 0  # boot epochs off (memberlist, NetworkDB): every boot looks alike
        self.name = name
        self.addr = addr
        self.epoch = epoch
        # Independent streams so that a change in one protocol's use of randomness
        # does not perturb the other's choices.
        self.membership = Membership(
            name=name,
            addr=addr,
            config=membership,
            rng=random.Random(rng.getrandbits(64)),
            epoch=epoch,
        )
        self.tables = Tables(
            name=name, addr=addr, config=tables, rng=random.Random(rng.getrandbits(64)), epoch=epoch
        )
        self._events: list[MemberEvent | EntryEvent] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self, now: float, seeds: Sequence[str] = ()) -> None:
        """Arm timers and, given seed addresses, join the cluster through them."""
        self.membership.start(now)
        self.tables.start(now)
        seeds = [s for s in seeds if s != self.addr]
        if seeds:
            self.membership.join(seeds, now)
        self._pump(now)

    def bootstrap(self, members: Sequence[Member], now: float, *, tables: bool = True) -> None:
        """Start from an already formed cluster: know ``members`` without gossip.

        For drivers that begin a scenario from a converged cluster (the simulator's
        ``boot: formed``); not part of the protocol. ``members`` are immutable records
        that every node may share. ``tables=False`` skips telling the table layer, for
        membership-only benchmarks at sizes where N x N peer records do not fit.
        """
        self.membership.bootstrap(members, now, emit=False)
        if tables:
            self.tables.bootstrap(_peer_facts(members), now)
            self.tables.take_events()

    def leave(self, now: float) -> None:
        """Graceful leave: tell the cluster, stop probing."""
        self.membership.leave(now)
        self._pump(now)

    # -- inputs ----------------------------------------------------------------------

    def receive(self, src: str, msg: Message, now: float) -> bool:
        """Handle one message. False means it certainly changed nothing (no sends,
        events or timer change to collect); True means it may have."""
        t = msg.TYPE
        if t in _MEMBERSHIP_TYPES:
            self.membership.receive(src, msg, now)
            self._pump(now)
            return True
        if t in _TABLE_TYPES:
            return self.tables.receive(src, msg, now)
        return False

    def handle_timer(self, now: float) -> None:
        m = self.membership.next_timer()
        if m is not None and m <= now:
            self.membership.handle_timer(now)
            self._pump(now)
        t = self.tables.next_timer()
        if t is not None and t <= now:
            self.tables.handle_timer(now)

    # -- outputs ---------------------------------------------------------------------

    def next_timer(self) -> float | None:
        m = self.membership.next_timer()
        t = self.tables.next_timer()
        if m is None:
            return t
        if t is None:
            return m
        return m if m < t else t

    def take_sends(self) -> list[Send]:
        out = self.membership.take_sends()
        more = self.tables.take_sends()
        if more:
            out.extend(more)
        return out

    def take_events(self) -> list[MemberEvent | EntryEvent]:
        self._events.extend(self.tables.take_events())
        out, self._events = self._events, []
        return out

    # -- local API (endpoints) -------------------------------------------------------

    def join_network(self, network: str, now: float) -> None:
        self.tables.join_network(network, now)

    def leave_network(self, network: str, now: float) -> None:
        self.tables.leave_network(network, now)

    def create_entry(
        self, network: str, table: str, key: str, value: dict[str, str], now: float
    ) -> None:
        self.tables.create_entry(network, table, key, value, now)

    def delete_entry(self, network: str, table: str, key: str, now: float) -> None:
        self.tables.delete_entry(network, table, key, now)

    # -- internals -------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Forward membership events to the tables, keep them for the driver."""
        events = self.membership.take_events()
        if not events:
            return
        tables = self.tables
        for ev in events:
            if ev.kind in _UP:
                tables.member_alive(ev.node, ev.addr, ev.epoch, now)
            elif ev.kind in _DOWN:
                tables.member_down(ev.node, now)
            self._events.append(ev)
        # Table events produced by the cleanup must follow the membership event.
        self._events.extend(tables.take_events())
