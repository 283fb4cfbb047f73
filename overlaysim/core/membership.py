"""SWIM failure detector with the Lifeguard refinements, sans-I/O.

Inputs are ``receive(src, msg, now)``, ``handle_timer(now)`` and the API calls
``start``/``join``/``leave``; outputs are pulled by the driver (``take_sends``,
``take_events``, ``next_timer``). Time is only the ``now`` argument and randomness only
the injected ``random.Random``, so the same seed gives the same sends.

The protocol follows memberlist:

- **Probing.** Every probe interval the next member of a shuffled round-robin list is
  pinged. No ack after the probe timeout: ``indirect_checks`` random alive members are
  asked to ping it for us (and to send a Nack when they get no answer either). No ack by
  the end of the interval: the member is suspected. Timeout and interval both scale by
  ``health_score + 1`` (Lifeguard awareness): missed Nacks and refutations raise the
  score, successful probes lower it.
- **Suspicion** (see :mod:`overlaysim.core.suspicion`): a suspect is declared dead when
  its timer expires; independent Suspects from other members shorten the timer.
  Probing a suspect carries the Suspect on the Ping so the member can refute at once.
- **Dissemination.** Every accepted fact is re-gossiped through a transmit-limited queue,
  piggybacked on Ping/IndirectPing/Ack/Nack and on Gossip messages sent every gossip
  interval to ``gossip_nodes`` random alive (or recently dead) members.
- **Push-pull** exchanges full state with one random member now and then, and on join.

Rules for a fact ``(kind, node, epoch, incarnation)`` about another member ``m``
(``epoch`` identifies the node's boot; an Alive from a newer boot replaces everything
known about the older one; Suspect/Dead only apply to the boot we know):

=========  =================================  =========================================
kind       accepted when                      effect (event)
=========  =================================  =========================================
Alive      unknown node                       add ALIVE (JOIN)
Alive      newer epoch                        replace addr/incarnation, ALIVE
                                              (UPDATE, or JOIN if it was DEAD/LEFT)
Alive      same epoch, higher incarnation,    ALIVE (ALIVE if it was SUSPECT, JOIN if
           same addr (any addr if DEAD/LEFT)  DEAD/LEFT, UPDATE if the addr changed)
Suspect    same epoch, inc >= ours, ALIVE     SUSPECT, start timer (SUSPECT)
Suspect    same epoch, inc >= ours, SUSPECT   confirmation from ``src``; timer shrinks
Dead       same epoch, inc >= ours, not gone  DEAD (DEAD), or LEFT when src == node (LEAVE)
=========  =================================  =========================================

Heal rule (``heal_window_mult > 0``, not in memberlist): a Dead relayed by another member
(src neither us nor the node) about a live member we received a message from within
``heal_window_mult`` minimum suspicion timeouts is applied as a Suspect from that src,
which the accused can refute; and a member we suspect that sends us anything is told of
the suspicion (once per probe interval). After a partition heals, Deads made during it
otherwise keep reaching nodes that talk to the accused every few seconds.

Facts about ourselves: a Suspect/Dead (or a conflicting Alive) at our epoch and an
incarnation >= ours is refuted by bumping our incarnation above it and gossiping Alive;
anything about an older epoch makes us re-announce our current Alive.
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from overlaysim.core import wire
from overlaysim.core.byname import name_number
from overlaysim.core.config import MembershipConfig, push_pull_scale
from overlaysim.core.cowmap import CowMap
from overlaysim.core.events import MemberEvent, MemberEventKind, Send
from overlaysim.core.queue import TransmitLimitedQueue, record_size
from overlaysim.core.suspicion import Suspicion, expected_confirmations, suspicion_min_timeout
from overlaysim.core.wire import (
    Ack,
    Gossip,
    IndirectPing,
    MemberStateCode,
    MemberUpdate,
    Message,
    Nack,
    Ping,
    PushPull,
    UpdateKind,
)


def _node_key(u: MemberUpdate) -> int:
    """A member update's key in the broadcast queue: its node's name number."""
    return name_number(u.node)


class MemberState(Enum):
    """Local view of a member."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


ALIVE, SUSPECT, DEAD, LEFT = (
    MemberState.ALIVE,
    MemberState.SUSPECT,
    MemberState.DEAD,
    MemberState.LEFT,
)
_LIVE = (ALIVE, SUSPECT)
_GONE = (DEAD, LEFT)


_CODES = {id(s): int(MemberStateCode[s.name]) for s in MemberState}


def _code(state: MemberState) -> int:
    """Wire code of a state (by identity: Enum hashing is slow in hot loops)."""
    return _CODES[id(state)]


#: Incarnations and epochs must stay encodable as msgpack integers, even after +1.
_MAX_COUNTER = 2**63 - 2

#: A relay sends its Nack after this fraction of probe_timeout (Lifeguard paper).
_NACK_FRACTION = 0.8

# Timer kinds (entries in one heap, cancelled lazily).
_T_PROBE, _T_INDIRECT, _T_RELAY, _T_SUSPECT, _T_GOSSIP, _T_PUSH_PULL, _T_RECONNECT = range(7)


@dataclass(frozen=True, slots=True)
class Member:
    """What this node believes about one member (itself included)."""

    name: str
    addr: str
    incarnation: int
    state: MemberState
    epoch: int = 0
    #: ``now`` of the last state change.
    state_change: float = 0.0
    #: This record as sent in push-pull, built on first use. Records are shared by every
    #: node of a simulation, so N nodes syncing the same member build it once.
    wire: wire.MemberState | None = field(default=None, compare=False, repr=False)

    def to_wire(self) -> wire.MemberState:
        w = self.wire
        if w is None:
            w = wire.MemberState(
                node=self.name,
                addr=self.addr,
                incarnation=self.incarnation,
                state=_code(self.state),
                epoch=self.epoch,
            )
            object.__setattr__(self, "wire", w)  # a cache, not state: see the field
        return w


@dataclass(slots=True)
class _Probe:
    """The probe in flight (at most one)."""

    seq: int
    target: str
    addr: str
    epoch: int
    incarnation: int
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(frozen=True, slots=True)
class _Relay:
    """An indirect probe we run for ``requester`` (who used sequence ``seq``)."""

    requester: str
    seq: int
    want_nack: bool


def _overhead(*strings: str) -> int:
    """Upper bound on a message's encoded size without its updates (no encoding)."""
    return 40 + sum(len(s.encode()) + 5 for s in strings)


@dataclass(frozen=True, slots=True)
class _FormedBase:
    """The member facts of one formed cluster, shared by every node booted from it."""

    #: The list bootstrap was given, and its contents then (to notice a changed list).
    given: Sequence[Member]
    snapshot: tuple[Member, ...]
    #: name -> record, first record with an address per name, in the given order.
    members: dict[str, Member]
    #: Names of the live ones, in the same order.
    live: list[str]


_formed: _FormedBase | None = None


def _formed_base(members: Sequence[Member]) -> _FormedBase:
    """The shared facts for ``members``: rebuilt only when given another list (or the
    same list with other contents); the last one is kept."""
    global _formed
    f = _formed
    if (
        f is not None
        and f.given is members
        and len(members) == len(f.snapshot)
        and all(map(operator.is_, members, f.snapshot))
    ):
        return f
    base: dict[str, Member] = {}
    for m in members:
        if m.addr and m.name not in base:
            base[m.name] = m
    live = [name for name, m in base.items() if m.state in _LIVE]
    f = _formed = _FormedBase(members, tuple(members), base, live)
    return f


class Membership:
    """SWIM + Lifeguard membership of one node. See the module docstring."""

    def __init__(
        self,
        *,
        name: str,
        addr: str,
        config: MembershipConfig,
        rng: random.Random,
        epoch: int = 0,
        incarnation: int = 0,
    ) -> None:
        self.name = name
        self.addr = addr
        self.config = config
        self._rng = rng
        # name -> record: a dict, or after a formed boot a CowMap sharing the cluster's
        # records with every other node (same operations, same order).
        self._members: dict[str, Member] | CowMap[str, Member] = {
            name: Member(name, addr, incarnation, ALIVE, epoch)
        }
        self._n_live = 0  # ALIVE or SUSPECT others
        # memberlist's node list: the probe order, and the indexable pool for O(1)
        # random picks. Holds every live member (plus the dead until the next
        # reshuffle, and rarely a duplicate); lookups filter.
        self._probe_list: list[str] = []
        self._probe_idx = 0
        self._recent_dead: deque[tuple[float, str]] = deque()  # (time of death, name)
        self._graveyard: deque[tuple[float, str]] = deque()  # DEAD/LEFT, for reclaiming
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._suspicions: dict[str, Suspicion] = {}
        self._queue = TransmitLimitedQueue(config.retransmit_mult, _node_key)
        self._timers: list[tuple[float, int, int, object]] = []
        self._timer_ids = itertools.count()
        self._seq = 0
        self._score = 0
        self._sends: list[Send] = []
        self._events: list[MemberEvent] = []
        self._started = False
        self._left = False
        self._probe_gen = 0
        self._push_pull_gen = 0
        self._gossip_phase = 0.0
        self._gossip_armed = False
        self._state_cache: tuple[wire.MemberState, ...] | None = None
        # Heal rule: when we last received a message sent by each member itself.
        self._heard: dict[str, float] = {}
        self._told: dict[str, float] = {}  # when we last told a suspect it is suspected

    # -- public view -------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """This node's boot identity."""
        return self._members[self.name].epoch

    @property
    def incarnation(self) -> int:
        """This node's current incarnation (bumped by refutations)."""
        return self._members[self.name].incarnation

    @property
    def health_score(self) -> int:
        """Lifeguard local health: 0 is healthy, at most awareness_max_multiplier - 1."""
        return self._score

    @property
    def has_left(self) -> bool:
        """True once :meth:`leave` was called."""
        return self._left

    def members(self) -> dict[str, Member]:
        """Every known member by name, ourselves and dead/left ones included (a copy)."""
        return dict(self._members.items())

    def member(self, name: str) -> Member | None:
        """One member's record, or None."""
        return self._members.get(name)

    def alive(self) -> list[str]:
        """Names of other members that are ALIVE or SUSPECT (O(N): for callers, not hot paths)."""
        return [m.name for m in self._members.values() if m.state in _LIVE and m.name != self.name]

    def num_members(self) -> int:
        """Live members, counting ourselves unless we left (memberlist's NumMembers)."""
        return self._n_live + (0 if self._left else 1)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Arm the probe, gossip and push-pull timers, each at a random phase."""
        if self._started:
            return
        self._started = True
        cfg = self.config
        self._arm(now + self._rng.random() * cfg.probe_interval, _T_PROBE, self._probe_gen)
        self._gossip_phase = now + self._rng.random() * cfg.gossip_interval
        pp_interval = push_pull_scale(cfg.push_pull_interval, self.num_members())
        pp_at = now + self._rng.random() * pp_interval
        self._arm(pp_at, _T_PUSH_PULL, self._push_pull_gen)
        if cfg.reconnect_interval > 0:
            at = now + self._rng.random() * cfg.reconnect_interval
            self._arm(at, _T_RECONNECT, self._probe_gen)
        # Like memberlist, a starting node gossips its own Alive (a restart announces
        # its new epoch this way).
        self._announce(now)

    def join(self, seeds: Sequence[str], now: float) -> None:
        """Ask each seed address for a full state exchange (PushPull join=True)."""
        state = self._state()
        for addr in seeds:
            if addr and addr != self.addr:
                msg = PushPull(
                    source=self.name, source_addr=self.addr, join=True, reply=False, members=state
                )
                self._sends.append(Send(addr, msg, True))

    def leave(self, now: float) -> None:
        """Leave gracefully: gossip Dead about ourselves (src == us), stop probing."""
        if self._left:
            return
        self._left = True
        me = self._members[self.name]
        self._set(me, now, state=LEFT)
        self._probe_gen += 1
        self._push_pull_gen += 1
        self._probe = None
        self._broadcast(self._update(UpdateKind.DEAD, me, self.name), now)
        self._gossip_round(now)

    def bootstrap(self, members: Iterable[Member], now: float, *, emit: bool = True) -> None:
        """Install known members quietly: no gossip, JOIN events only if ``emit``.

        For drivers that start from an already converged cluster (large simulations);
        not part of the protocol. Records are immutable, so one list of them can be
        shared by every node. Unknown names only; ourselves is skipped.

        A fresh node (it knows only itself) given a list or tuple does not copy the
        records: its member map is a :class:`CowMap` over one dict per distinct list
        (built once, shared by every node bootstrapped from that very list), so N nodes
        of a formed cluster hold their N^2 identical facts once until they diverge.
        """
        known = self._members
        fresh = type(known) is dict and len(known) == 1 and not self._probe_list
        if fresh and isinstance(members, list | tuple):
            self._bootstrap_shared(members, emit)
        else:
            order = self._probe_list
            for m in members:
                if m.name in known or not m.addr:
                    continue
                known[m.name] = m
                if m.state in _LIVE:
                    self._n_live += 1
                    order.append(m.name)
                    if emit:
                        self._emit(MemberEventKind.JOIN, m)
            self._rng.shuffle(order)
        self._state_cache = None
        if self._started:
            # The sync interval scales with cluster size: re-draw its phase for the size
            # we now know, as if the node had started in a cluster this big.
            self._push_pull_gen += 1
            interval = push_pull_scale(self.config.push_pull_interval, self.num_members())
            self._arm(now + self._rng.random() * interval, _T_PUSH_PULL, self._push_pull_gen)

    def _bootstrap_shared(self, members: Sequence[Member], emit: bool) -> None:
        """``bootstrap`` of a fresh node: share the formed cluster's records."""
        base = _formed_base(members)
        me = self.name
        self._members = CowMap(self._members, base.members)
        order = base.live.copy()
        mine = base.members.get(me)
        if mine is not None and mine.state in _LIVE:
            order.remove(me)  # we are not our own peer
        self._n_live = len(order)
        if emit:
            for name in order:
                self._emit(MemberEventKind.JOIN, base.members[name])
        self._probe_list = order
        self._rng.shuffle(order)

    # -- driver surface ----------------------------------------------------------------

    def receive(self, src: str, msg: Message, now: float) -> None:
        """Handle one message from address ``src``; other protocols' types are ignored."""
        t = type(msg)
        source = getattr(msg, "source", "")
        if self.config.heal_window_mult > 0 and source in self._members:
            self._heard_from(source, now)
        if t is Ping:
            self._apply_all(msg.updates, now)
            if not msg.target or msg.target == self.name:
                ack = Ack(seq=msg.seq, source=self.name)
                notice = self._dead_notice(msg.source) if self.config.dead_notice else ()
                self._send(src, ack, _overhead(self.name), notice)
        elif t is Ack:
            self._apply_all(msg.updates, now)
            self._on_ack(msg.seq, now)
        elif t is Nack:
            self._apply_all(msg.updates, now)
            p = self._probe
            if p is not None and p.seq == msg.seq and p.nacks < p.expected_nacks:
                p.nacks += 1
        elif t is IndirectPing:
            self._apply_all(msg.updates, now)
            self._relay(src, msg, now)
        elif t is Gossip:
            self._apply_all(msg.updates, now)
        elif t is PushPull:
            self._merge(msg.members, now)
            if not msg.reply:
                reply = PushPull(
                    source=self.name,
                    source_addr=self.addr,
                    join=False,
                    reply=True,
                    members=self._state(),
                )
                self._sends.append(Send(src, reply, True))

    def handle_timer(self, now: float) -> None:
        """Run every timer due at or before ``now``."""
        heap = self._timers
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._timer_live(entry):
                continue
            kind, arg = entry[2], entry[3]
            if kind == _T_PROBE:
                self._probe_tick(now)
            elif kind == _T_INDIRECT:
                self._indirect_tick(now)
            elif kind == _T_RELAY:
                self._relay_timeout(arg)  # type: ignore[arg-type]
            elif kind == _T_SUSPECT:
                self._suspicion_expired(arg[0], now)  # type: ignore[index]
            elif kind == _T_GOSSIP:
                self._gossip_tick(now)
            elif kind == _T_PUSH_PULL:
                self._push_pull_tick(now)
            elif kind == _T_RECONNECT:
                self._reconnect_tick(now)

    def next_timer(self) -> float | None:
        """Earliest pending deadline, or None."""
        heap = self._timers
        while heap and not self._timer_live(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def take_sends(self) -> list[Send]:
        out, self._sends = self._sends, []
        return out

    def take_events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    # -- timers ------------------------------------------------------------------------

    def _arm(self, when: float, kind: int, arg: object) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_ids), kind, arg))

    def _timer_live(self, entry: tuple[float, int, int, object]) -> bool:
        when, _, kind, arg = entry
        if kind == _T_PROBE:
            return arg == self._probe_gen
        if kind == _T_INDIRECT:
            p = self._probe
            return p is not None and p.seq == arg and not p.acked
        if kind == _T_RELAY:
            return arg in self._relays
        if kind == _T_SUSPECT:
            name, s = arg  # type: ignore[misc]
            return self._suspicions.get(name) is s and s.deadline == when
        if kind == _T_PUSH_PULL:
            return arg == self._push_pull_gen
        if kind == _T_RECONNECT:
            return arg == self._probe_gen  # stops when we leave
        return True  # gossip: re-armed only when idle, never cancelled

    def _scale(self, timeout: float) -> float:
        return timeout * (self._score + 1)

    def _awareness(self, delta: int) -> None:
        if not self.config.lifeguard:
            return  # plain SWIM: no local-health awareness
        self._score = min(max(self._score + delta, 0), self.config.awareness_max_multiplier - 1)

    # -- probing -----------------------------------------------------------------------

    def _probe_tick(self, now: float) -> None:
        self._finish_probe(now)
        interval = self._scale(self.config.probe_interval)
        target = self._next_target(now)
        if target is not None:
            self._start_probe(target, now)
        self._arm(now + interval, _T_PROBE, self._probe_gen)

    def _next_target(self, now: float) -> Member | None:
        """Shuffled round-robin: walk the list, reshuffle at the end, skip the dead."""
        checks = 0
        while checks <= len(self._probe_list):
            if self._probe_idx >= len(self._probe_list):
                self._reset_probe_list(now)
                checks += 1
                continue
            name = self._probe_list[self._probe_idx]
            self._probe_idx += 1
            m = self._members.get(name)
            if m is not None and m.state in _LIVE:
                return m
            checks += 1
        return None

    def _reset_probe_list(self, now: float) -> None:
        """End of a round: drop the dead (and duplicates), reshuffle."""
        members = self._members
        keep = [
            n for n in dict.fromkeys(self._probe_list) if (m := members.get(n)) and m.state in _LIVE
        ]
        self._rng.shuffle(keep)
        self._probe_list = keep
        self._probe_idx = 0
        # Forget long-gone members if configured (0 keeps them forever as tombstones,
        # so a stale Alive can never resurrect them).
        reclaim, grave = self.config.dead_node_reclaim_time, self._graveyard
        while grave and now - grave[0][0] > reclaim > 0:
            died, name = grave.popleft()
            m = members.get(name)
            if m is not None and m.state in _GONE and m.state_change == died:
                del members[name]
                self._state_cache = None

    def _probe_list_add(self, name: str) -> None:
        """Insert at a random position so new members are probed soon on average.

        A member that died and came back within one round is already listed: the
        duplicate costs one extra probe and disappears at the next reshuffle.
        """
        lst = self._probe_list
        lst.append(name)
        i = self._rng.randrange(len(lst))
        lst[i], lst[-1] = lst[-1], lst[i]

    def _start_probe(self, m: Member, now: float) -> None:
        self._seq += 1
        self._probe = _Probe(self._seq, m.name, m.addr, m.epoch, m.incarnation)
        first: tuple[MemberUpdate, ...] = ()
        if m.state is SUSPECT and self.config.lifeguard:
            # Buddy system: tell the suspect directly so it can refute at once.
            first = (self._update(UpdateKind.SUSPECT, m, self.name),)
        ping = Ping(seq=self._seq, target=m.name, source=self.name, source_addr=self.addr)
        self._send(m.addr, ping, _overhead(m.name, self.name, self.addr), first)
        self._arm(now + self._scale(self.config.probe_timeout), _T_INDIRECT, self._seq)

    def _indirect_tick(self, now: float) -> None:
        p = self._probe
        assert p is not None  # guaranteed by _timer_live
        target = p.target
        peers = self._sample(
            self.config.indirect_checks, lambda m, _: m.state is ALIVE and m.name != target
        )
        for peer in peers:
            msg = IndirectPing(
                seq=p.seq,
                target=target,
                target_addr=p.addr,
                source=self.name,
                source_addr=self.addr,
                want_nack=self.config.lifeguard,
            )
            self._send(peer.addr, msg, _overhead(target, p.addr, self.name, self.addr))
        p.expected_nacks = len(peers) if self.config.lifeguard else 0

    def _finish_probe(self, now: float) -> None:
        p, self._probe = self._probe, None
        if p is None or p.acked:
            return
        # Lifeguard: healthy relays Nack; missing Nacks suggest we are the problem.
        self._awareness(p.expected_nacks - p.nacks if p.expected_nacks else 1)
        accusation = MemberUpdate(
            kind=UpdateKind.SUSPECT,
            node=p.target,
            incarnation=p.incarnation,
            addr=p.addr,
            src=self.name,
            epoch=p.epoch,
        )
        self._suspect(accusation, now)

    def _on_ack(self, seq: int, now: float) -> None:
        p = self._probe
        if p is not None and p.seq == seq:
            if not p.acked:
                p.acked = True
                self._awareness(-1)
            return
        r = self._relays.pop(seq, None)
        if r is not None:
            self._send(r.requester, Ack(seq=r.seq, source=self.name), _overhead(self.name))

    def _relay(self, src: str, msg: IndirectPing, now: float) -> None:
        if not msg.target_addr:
            return
        self._seq += 1
        self._relays[self._seq] = _Relay(src, msg.seq, msg.want_nack)
        ping = Ping(seq=self._seq, target=msg.target, source=self.name, source_addr=self.addr)
        self._send(msg.target_addr, ping, _overhead(msg.target, self.name, self.addr))
        # Lifeguard: Nack at 80% of the probe timeout, so that it reaches the prober
        # before its probe interval ends (memberlist waits the full timeout and races
        # the prober's deadline). Acks arriving later are not forwarded.
        self._arm(now + _NACK_FRACTION * self.config.probe_timeout, _T_RELAY, self._seq)

    def _relay_timeout(self, seq: int) -> None:
        r = self._relays.pop(seq)
        if r.want_nack:
            self._send(r.requester, Nack(seq=r.seq, source=self.name), _overhead(self.name))

    # -- gossip and push-pull ----------------------------------------------------------

    def _gossip_tick(self, now: float) -> None:
        if not len(self._queue):
            self._gossip_armed = False  # re-armed by the next broadcast
            return
        self._gossip_round(now)
        self._arm_gossip(now)

    def _gossip_round(self, now: float) -> None:
        """Send queued updates to ``gossip_nodes`` live or recently dead members."""
        horizon = now - self.config.gossip_to_dead_time
        dead = self._recent_dead
        while dead and dead[0][0] < horizon:
            dead.popleft()

        def eligible(m: Member, died: float | None) -> bool:
            if died is None:
                return m.state in _LIVE
            return m.state is DEAD and m.state_change == died

        for m in self._sample(self.config.gossip_nodes, eligible, with_dead=True):
            updates = self._queue.get(
                self.num_members(), _overhead(self.name), self.config.udp_buffer_size
            )
            if not updates:
                return
            self._sends.append(Send(m.addr, Gossip(source=self.name, updates=tuple(updates))))

    def _push_pull_tick(self, now: float) -> None:
        peers = self._sample(1, lambda m, _: m.state is ALIVE)
        if peers:
            msg = PushPull(
                source=self.name,
                source_addr=self.addr,
                join=False,
                reply=False,
                members=self._state(),
            )
            self._sends.append(Send(peers[0].addr, msg, True))
        interval = push_pull_scale(self.config.push_pull_interval, self.num_members())
        self._arm(now + interval, _T_PUSH_PULL, self._push_pull_gen)

    def _reconnect_tick(self, now: float) -> None:
        """NetworkDB's reconnect loop: join through one random member we hold DEAD.

        Its reply carries itself alive, and our state tells it we hold it dead, so it
        refutes; the refutation brings it back in our view and everyone's.
        """
        grave = self._graveyard
        dead = [
            m
            for died, name in grave
            if (m := self._members.get(name)) is not None
            and m.state is DEAD
            and m.state_change == died
        ]
        if dead:
            peer = dead[self._rng.randrange(len(dead))]
            msg = PushPull(
                source=self.name,
                source_addr=self.addr,
                join=True,
                reply=False,
                members=self._state(),
            )
            self._sends.append(Send(peer.addr, msg, True))
        self._arm(now + self.config.reconnect_interval, _T_RECONNECT, self._probe_gen)

    def _state(self) -> tuple[wire.MemberState, ...]:
        """Every record as sent in push-pull (cached until something changes)."""
        if self._state_cache is None:
            self._state_cache = tuple(m.to_wire() for m in self._members.values())
        return self._state_cache

    def _merge(self, remote: Iterable[wire.MemberState], now: float) -> None:
        """memberlist's mergeState: remote DEAD becomes a local suspicion."""
        members = self._members
        for r in remote:
            local = members.get(r.node)
            if local is not None and local.wire is r:
                continue  # the very record we hold (records are shared in the simulator)
            if r.state == MemberStateCode.ALIVE:
                # Fast path: most records in a full sync are already known.
                if (
                    local is not None
                    and r.node != self.name
                    and local.epoch == r.epoch
                    and r.incarnation <= local.incarnation
                    and r.addr == local.addr
                ):
                    continue
                kind, src = UpdateKind.ALIVE, r.node
            elif r.state == MemberStateCode.LEFT:
                kind, src = UpdateKind.DEAD, r.node
            elif r.state in (MemberStateCode.DEAD, MemberStateCode.SUSPECT):
                kind, src = UpdateKind.SUSPECT, self.name
            else:
                continue
            update = MemberUpdate(
                kind=kind,
                node=r.node,
                incarnation=r.incarnation,
                addr=r.addr,
                src=src,
                epoch=r.epoch,
            )
            self._apply(update, now)

    # -- membership rules (see the table in the module docstring) ----------------------

    def _apply_all(self, updates: Iterable[MemberUpdate], now: float) -> None:
        for u in updates:
            self._apply(u, now)

    def _apply(self, u: MemberUpdate, now: float) -> None:
        if not u.node or not (0 <= u.incarnation <= _MAX_COUNTER and 0 <= u.epoch <= _MAX_COUNTER):
            return
        if u.kind == UpdateKind.ALIVE:
            self._alive(u, now)
        elif u.kind == UpdateKind.SUSPECT:
            self._suspect(u, now)
        elif u.kind == UpdateKind.DEAD:
            self._dead(u, now)

    def _alive(self, u: MemberUpdate, now: float) -> None:
        if u.node == self.name:
            if self._left or u.epoch > self.epoch:
                return  # a later boot of our name wins; nothing we can refute
            if u.epoch < self.epoch:
                self._announce(now)
            elif u.incarnation > self.incarnation or (
                u.incarnation == self.incarnation and u.addr and u.addr != self.addr
            ):
                self._refute(u.incarnation, now)
            return
        m = self._members.get(u.node)
        if m is None:
            if not u.addr:
                return  # cannot reach it
            m = Member(u.node, u.addr, u.incarnation, ALIVE, u.epoch, now)
            self._members[u.node] = m
            self._state_cache = None
            self._n_live += 1
            self._probe_list_add(u.node)
            self._broadcast(u, now)
            self._emit(MemberEventKind.JOIN, m)
            return
        if u.epoch < m.epoch:
            return
        addr = u.addr or m.addr
        new_boot = u.epoch > m.epoch
        gone = m.state in _GONE
        if not new_boot:
            if addr != m.addr and not gone:
                return  # conflicting address for a live member: keep ours
            if u.incarnation <= m.incarnation and addr == m.addr:
                return
        self._cancel_suspicion(m.name)
        old = m
        m = self._set(m, now, addr=addr, incarnation=u.incarnation, epoch=u.epoch, state=ALIVE)
        self._broadcast(u if u.addr else replace(u, addr=addr), now)
        if gone:
            self._emit(MemberEventKind.JOIN, m)
        elif new_boot or addr != old.addr:
            self._emit(MemberEventKind.UPDATE, m)
        elif old.state is SUSPECT:
            self._emit(MemberEventKind.ALIVE, m)

    def _suspect(self, u: MemberUpdate, now: float) -> None:
        if u.node == self.name:
            self._accused(u, now)
            return
        m = self._members.get(u.node)
        if m is None or u.epoch != m.epoch or u.incarnation < m.incarnation:
            return
        s = self._suspicions.get(m.name)
        if s is not None:
            if s.confirm(u.src):
                self._broadcast(u, now)
                self._arm(s.deadline, _T_SUSPECT, (m.name, s))
            return
        if m.state is not ALIVE:
            return
        self._broadcast(u, now)
        m = self._set(m, now, incarnation=u.incarnation, state=SUSPECT)
        cfg = self.config
        n = self.num_members()
        lo = suspicion_min_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        # Without Lifeguard the timeout is fixed: confirmations cannot shorten it.
        hi = cfg.suspicion_max_timeout_mult * lo if cfg.lifeguard else lo
        k = expected_confirmations(cfg.suspicion_mult, n)
        s = Suspicion(accuser=u.src, k=k, min_timeout=lo, max_timeout=hi, start=now)
        self._suspicions[m.name] = s
        self._arm(s.deadline, _T_SUSPECT, (m.name, s))
        self._emit(MemberEventKind.SUSPECT, m)

    def _suspicion_expired(self, name: str, now: float) -> None:
        m = self._members[name]
        self._dead(self._update(UpdateKind.DEAD, m, self.name), now)

    def _dead(self, u: MemberUpdate, now: float) -> None:
        if u.node == self.name:
            self._accused(u, now)
            return
        m = self._members.get(u.node)
        if m is None or u.epoch != m.epoch or u.incarnation < m.incarnation:
            return
        if m.state in _LIVE and self._contested(u, now):
            # Heal rule: we heard from the accused more recently than any real crash
            # could be detected, so this verdict is second-hand news from before (a
            # partition, a lossy spell). Demote it to a Suspect: the accused refutes
            # it, or our own suspicion timer confirms the death.
            self._suspect(replace(u, kind=UpdateKind.SUSPECT), now)
            return
        self._cancel_suspicion(m.name)
        if m.state in _GONE:
            return
        self._broadcast(u, now)
        left = u.src == u.node
        m = self._set(m, now, incarnation=u.incarnation, state=LEFT if left else DEAD)
        self._emit(MemberEventKind.LEAVE if left else MemberEventKind.DEAD, m)

    def _heard_from(self, name: str, now: float) -> None:
        """Direct evidence that ``name`` is up (heal rule).

        An Ack relayed by an indirect prober names the relay, so it counts for the relay
        only. If we suspect the sender, tell it now (at most once per probe interval) so
        it refutes: after a heal nothing queued carries the accusation to it any more,
        and our round-robin probe, which would, may be a whole round away.
        """
        self._heard[name] = now
        m = self._members[name]
        if m.state is SUSPECT and name != self.name:
            told = self._told.get(name)
            if told is None or now - told >= self.config.probe_interval:
                self._told[name] = now
                first = (self._update(UpdateKind.SUSPECT, m, self.name),)
                self._send(m.addr, Gossip(source=self.name), _overhead(self.name), first)

    def _contested(self, u: MemberUpdate, now: float) -> bool:
        """True when a relayed Dead meets direct evidence (the heal rule)."""
        cfg = self.config
        if cfg.heal_window_mult <= 0 or u.src == self.name or u.src == u.node:
            return False  # off; our own verdict; a graceful leave
        heard = self._heard.get(u.node)
        if heard is None:
            return False
        lo = suspicion_min_timeout(cfg.suspicion_mult, self.num_members(), cfg.probe_interval)
        return now - heard <= cfg.heal_window_mult * lo

    def _accused(self, u: MemberUpdate, now: float) -> None:
        """A Suspect or Dead about ourselves."""
        if self._left or u.epoch > self.epoch:
            return
        if u.epoch < self.epoch:
            self._announce(now)  # someone still holds our previous boot
        elif u.incarnation >= self.incarnation:
            self._refute(u.incarnation, now)
        else:
            # Stale accusation: we already refuted it, but the accuser never heard our
            # Alive (its transmissions can be spent during a partition). Say it again.
            self._announce(now)

    def _refute(self, accused: int, now: float) -> None:
        me = self._members[self.name]
        self._set(me, now, incarnation=max(me.incarnation, accused) + 1)
        self._awareness(1)  # being accused hints that we are slow to answer
        self._announce(now)

    def _announce(self, now: float) -> None:
        me = self._members[self.name]
        if not self._left:
            self._broadcast(self._update(UpdateKind.ALIVE, me, self.name), now)

    # -- bookkeeping -------------------------------------------------------------------

    def _update(self, kind: UpdateKind, m: Member, src: str) -> MemberUpdate:
        return MemberUpdate(
            kind=kind, node=m.name, incarnation=m.incarnation, addr=m.addr, src=src, epoch=m.epoch
        )

    def _set(self, m: Member, now: float, **changes: object) -> Member:
        """Replace a member record; keep the live/probe/dead indexes in step."""
        new = replace(m, wire=None, **changes)  # type: ignore[arg-type]
        if new.state is not m.state:
            new = replace(new, state_change=now)
            if m.name != self.name:
                was_live, is_live = m.state in _LIVE, new.state in _LIVE
                if was_live and not is_live:
                    self._n_live -= 1
                    if new.state is DEAD:
                        self._recent_dead.append((now, m.name))
                    if self.config.dead_node_reclaim_time > 0:
                        self._graveyard.append((now, m.name))
                elif is_live and not was_live:
                    self._n_live += 1
                    self._probe_list_add(m.name)
        self._members[m.name] = new
        self._state_cache = None
        return new

    def _cancel_suspicion(self, name: str) -> None:
        self._suspicions.pop(name, None)

    def _emit(self, kind: MemberEventKind, m: Member) -> None:
        self._events.append(MemberEvent(kind, m.name, m.incarnation, m.addr, m.epoch))

    def _broadcast(self, u: MemberUpdate, now: float) -> None:
        """Queue ``u`` for piggybacking and make sure the gossip timer runs."""
        self._queue.queue(u)
        if self._started and not self._gossip_armed and self.config.gossip_nodes > 0:
            self._arm_gossip(now)

    def _arm_gossip(self, now: float) -> None:
        """Arm the next gossip tick after ``now`` on the phase chosen at start (a ticker)."""
        interval, phase = self.config.gossip_interval, self._gossip_phase
        at = phase + max(math.floor((now - phase) / interval) + 1, 0) * interval
        if at <= now:  # rounding: never re-arm at the current instant
            at += interval
        self._arm(at, _T_GOSSIP, None)
        self._gossip_armed = True

    def _dead_notice(self, name: str) -> tuple[MemberUpdate, ...]:
        """Tell a member that pings us while we hold it DEAD that we do.

        An extension of Lifeguard's buddy system: after a partition heals, each side
        holds the other dead, and nothing queued tells them so (their Dead updates were
        spent during the partition). Without this, they rejoin only at the next push-pull
        (30 s or more). With it, the member refutes within one probe round.
        """
        m = self._members.get(name)
        if m is None or m.state is not DEAD:
            return ()
        return (self._update(UpdateKind.DEAD, m, self.name),)

    def _send(
        self, dst: str, msg: Message, overhead: int, first: tuple[MemberUpdate, ...] = ()
    ) -> None:
        """Send a UDP message with as many queued updates as fit in the buffer."""
        limit = self.config.udp_buffer_size - sum(record_size(u) for u in first)
        updates = self._queue.get(self.num_members(), overhead, limit) if self._queue else []
        if first or updates:
            msg = replace(msg, updates=first + tuple(updates))  # type: ignore[call-arg]
        self._sends.append(Send(dst, msg))

    def _sample(
        self, k: int, accept: Callable[[Member, float | None], bool], with_dead: bool = False
    ) -> list[Member]:
        """Up to ``k`` distinct accepted members, uniformly at random.

        Draws without replacement from the probe list (plus the recently dead list) by
        a lazy Fisher-Yates, so a pick costs O(1) whatever the cluster size as long as
        most listed members are acceptable (like memberlist's kRandomNodes).
        ``accept(member, died)`` gets ``died`` (time of death) for recently dead picks.
        """
        live, dead = self._probe_list, self._recent_dead
        n_live = len(live)
        total = n_live + (len(dead) if with_dead else 0)
        swaps: dict[int, int] = {}
        out: list[Member] = []
        seen: set[str] = set()
        randrange = self._rng.randrange
        for j in range(total):
            if len(out) >= k:
                break
            r = randrange(j, total)
            idx = swaps.get(r, r)
            swaps[r] = swaps.get(j, j)
            if idx < n_live:
                name, died = live[idx], None
            else:
                died, name = dead[idx - n_live]
            m = self._members.get(name)
            if m is not None and name not in seen and accept(m, died):
                seen.add(name)
                out.append(m)
        return out
