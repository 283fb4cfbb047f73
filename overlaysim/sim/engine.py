"""SimPy driver for many protocol cores over a simulated underlay.

The driver makes no protocol decisions: it delivers each core's sends after the
underlay's delay (or drops them), fires each core's single timer at its deadline and
hands the cores' events to an observer. Messages are passed as the immutable message
objects (no decode step); their wire size, used for serialisation delay and overhead
counters, is the length of their real encoding.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from heapq import heappush

import simpy
from simpy.events import NORMAL

from overlaysim.core.config import MembershipConfig, TableConfig
from overlaysim.core.events import EntryEvent, MemberEvent
from overlaysim.core.node import Node
from overlaysim.core.wire import Message, encoded_size
from overlaysim.sim.underlay import Underlay


class Observer:
    """Receives what happens in the simulation; the runner records it."""

    def member_event(self, t: float, host: str, ev: MemberEvent) -> None: ...
    def entry_event(self, t: float, host: str, ev: EntryEvent) -> None: ...
    def sent(self, t: float, host: str, msg: Message, size: int, count: int = 1) -> None:
        """``host`` sent ``count`` copies of ``msg`` (``size`` bytes each) at ``t``."""

    def received(self, t: float, host: str, msg: Message, size: int) -> None: ...


@dataclass(slots=True)
class _Slot:
    node: Node
    timer_at: float | None = None


class SimCluster:
    """Runs one :class:`Node` per host on a SimPy environment."""

    def __init__(
        self,
        env: simpy.Environment,
        underlay: Underlay,
        *,
        membership: MembershipConfig,
        tables: TableConfig,
        rng: random.Random,
        observer: Observer | None = None,
    ) -> None:
        self.env = env
        self.underlay = underlay
        self.mconfig = membership
        self.tconfig = tables
        self.observer = observer or Observer()
        # Separate streams: network randomness (loss draws) must not shift protocol choices.
        self._net_rng = random.Random(rng.getrandbits(64))
        self._node_seed_rng = random.Random(rng.getrandbits(64))
        self.slots: dict[str, _Slot] = {}
        self.epochs: dict[str, int] = {}
        self.messages_delivered = 0
        self.messages_sent = 0
        self.messages_lost = 0
        self.timers_fired = 0
        # SimPy's heap and event-id counter: actions are scheduled into them directly
        # (see _push); SimPy's own events (the timeline, probes) share both.
        self._queue = env._queue
        self._eid = env._eid
        self._last: _Batch | None = None
        self._run_cb = (self._run,)

    # -- lifecycle -------------------------------------------------------------------

    def start(self, host: str, seeds: Sequence[str] = ()) -> Node:
        """Boot (or reboot, with a higher epoch) the node on ``host``."""
        if host in self.slots:
            raise RuntimeError(f"{host} is already running")
        epoch = self.epochs.get(host, -1) + 1
        self.epochs[host] = epoch
        node = Node(
            name=host,
            addr=host,
            membership=self.mconfig,
            tables=self.tconfig,
            rng=random.Random(self._node_seed_rng.getrandbits(64)),
            epoch=epoch,
        )
        slot = _Slot(node)
        self.slots[host] = slot
        self.underlay.host_up(host)
        node.start(self.env.now, seeds)
        self._after(host, slot)
        return node

    def start_formed(self, hosts: Sequence[str], *, tables: bool = True) -> None:
        """Boot ``hosts`` as an already formed cluster (every node knows every other).

        The cluster state at t=0 is what a completed join would give; reaching it by
        real joins costs O(N^2 log N) gossip receipts, too slow at thousands of nodes.
        """
        from overlaysim.core.membership import ALIVE, Member

        now = self.env.now
        records = []
        for h in hosts:
            node = self.start(h)
            records.append(Member(h, node.addr, 0, ALIVE, node.epoch, now))
        for h in hosts:
            slot = self.slots[h]
            slot.node.bootstrap(records, now, tables=tables)
            self._after(h, slot)

    def crash(self, host: str) -> None:
        """Stop the node abruptly: no more timers, messages to it are dropped."""
        self.slots.pop(host, None)
        self.underlay.host_down(host)

    def leave(self, host: str) -> None:
        """Graceful leave, then stop after the leave had time to spread."""
        slot = self.slots.get(host)
        if slot is None:
            return
        slot.node.leave(self.env.now)
        self._after(host, slot)

    def stop(self, host: str) -> None:
        self.slots.pop(host, None)

    def node(self, host: str) -> Node | None:
        slot = self.slots.get(host)
        return slot.node if slot else None

    def call(self, host: str, fn: Callable[[Node, float], None]) -> None:
        """Run a local API call on a node (attach an endpoint, join a network...)."""
        slot = self.slots.get(host)
        if slot is None:
            raise RuntimeError(f"{host} is not running")
        fn(slot.node, self.env.now)
        self._after(host, slot)

    # -- the driver loop ---------------------------------------------------------------
    #
    # Every delivery and timer firing is an action at an instant. Instead of one SimPy
    # Timeout (+ callback object) per action, actions go straight into SimPy's event heap
    # with SimPy's own (time, priority, event id) key, and actions scheduled back to back
    # for the same instant share one heap entry (a _Batch): a gossip round's copies of one
    # message to several peers arrive at the same instant. That changes no order: SimPy
    # pops equal-time, equal-priority events by id, ids are drawn from one counter, and a
    # batch only takes an action whose id directly follows the batch's last one (nothing
    # else was scheduled in between) while the batch is still waiting in the heap. So
    # the batch's actions would have been popped one after the other anyway, and anything
    # scheduled while they run draws a larger id and runs after them (the cluster only
    # schedules at NORMAL priority; nothing it runs starts a process or an interrupt).

    def _push(self, t: float, item: tuple) -> None:
        """Schedule ``item`` at time ``t`` (computed as SimPy would: now + delay)."""
        eid = next(self._eid)
        b = self._last
        if b is not None and b.eid + 1 == eid and b.t == t and b.items is not None:
            b.items.append(item)
            b.eid = eid
            return
        b = self._last = _Batch(self._run_cb, t, eid, item)
        heappush(self._queue, (t, NORMAL, eid, b))

    def _run(self, b: _Batch) -> None:
        """SimPy callback of a batch: run its actions in the order they were scheduled."""
        items = b.items
        b.items = None  # started: takes no more actions
        deliver = self._deliver
        fire = self._fire
        for dst, src, x, y in items:  # type: ignore[union-attr]
            if src is None:
                fire(dst, x, y)
            else:
                deliver(dst, src, x, y)

    def _after(self, host: str, slot: _Slot) -> None:
        node = slot.node
        now = self.env.now
        obs = self.observer
        sends = node.take_sends()
        if sends:
            net_rng = self._net_rng
            transit = self.underlay.transit
            push = self._push
            self.messages_sent += len(sends)
            last_msg: Message | None = None
            size = 0
            run = 0  # copies of last_msg sent so far, told to the observer at once
            for s in sends:
                msg = s.msg
                # A gossip round sends one message object to several peers: size it once.
                if msg is not last_msg:
                    if run:
                        obs.sent(now, host, last_msg, size, run)  # type: ignore[arg-type]
                    last_msg = msg
                    size = s.size if s.size is not None else encoded_size(msg)
                    run = 0
                run += 1
                delay = transit(host, s.dst, size, net_rng, s.reliable)
                if delay is None:
                    self.messages_lost += 1
                    continue
                push(now + delay, (s.dst, host, msg, size))
            obs.sent(now, host, last_msg, size, run)  # type: ignore[arg-type]
        events = node.take_events()
        if events:
            for ev in events:
                if isinstance(ev, MemberEvent):
                    obs.member_event(now, host, ev)
                else:
                    obs.entry_event(now, host, ev)
        nt = node.next_timer()
        if nt is not None and (slot.timer_at is None or nt < slot.timer_at or slot.timer_at <= now):
            slot.timer_at = nt
            delay = nt - now
            self._push(now + (delay if delay > 0 else 0.0), (host, None, slot, nt))

    def _deliver(self, dst: str, src: str, msg: Message, size: int) -> None:
        slot = self.slots.get(dst)
        if slot is None:
            self.messages_lost += 1
            return
        now = self.env.now
        self.messages_delivered += 1
        self.observer.received(now, dst, msg, size)
        if slot.node.receive(src, msg, now):
            self._after(dst, slot)

    def _fire(self, host: str, slot: _Slot, deadline: float) -> None:
        if self.slots.get(host) is not slot or slot.timer_at != deadline:
            return  # superseded timer or crashed node
        slot.timer_at = None
        self.timers_fired += 1
        slot.node.handle_timer(self.env.now)
        self._after(host, slot)


class _Batch:
    """One SimPy heap entry: actions due at one instant, scheduled back to back.

    Quacks like a triggered SimPy event for ``Environment.step`` (``callbacks``, ``_ok``).
    An action is ``(dst, src, msg, size)`` for a delivery or ``(host, None, slot,
    deadline)`` for a timer; ``items`` is None once the batch has started running.
    """

    __slots__ = ("callbacks", "t", "eid", "items")
    _ok = True

    def __init__(self, callbacks: tuple, t: float, eid: int, item: tuple) -> None:
        self.callbacks = callbacks
        self.t = t
        self.eid = eid
        self.items: list[tuple] | None = [item]
