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

import simpy
from simpy.events import Timeout

from overlaysim.core.config import MembershipConfig, TableConfig
from overlaysim.core.events import EntryEvent, MemberEvent
from overlaysim.core.node import Node
from overlaysim.core.wire import Message, encoded_size
from overlaysim.sim.underlay import Underlay


class Observer:
    """Receives what happens in the simulation; the runner records it."""

    def member_event(self, t: float, host: str, ev: MemberEvent) -> None: ...
    def entry_event(self, t: float, host: str, ev: EntryEvent) -> None: ...
    def sent(self, t: float, host: str, msg: Message, size: int) -> None: ...
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

    def _after(self, host: str, slot: _Slot) -> None:
        node = slot.node
        now = self.env.now
        obs = self.observer
        sends = node.take_sends()
        if sends:
            net_rng = self._net_rng
            transit = self.underlay.transit
            env = self.env
            last_msg: Message | None = None
            size = 0
            for s in sends:
                # A gossip round sends one message object to several peers: size it once.
                if s.msg is not last_msg:
                    last_msg = s.msg
                    size = encoded_size(last_msg)
                self.messages_sent += 1
                obs.sent(now, host, s.msg, size)
                delay = transit(host, s.dst, size, net_rng, s.reliable)
                if delay is None:
                    self.messages_lost += 1
                    continue
                ev = Timeout(env, delay)
                ev.callbacks.append(_Delivery(self, s.dst, host, s.msg, size))
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
            ev = Timeout(self.env, delay if delay > 0 else 0.0)
            ev.callbacks.append(_Timer(self, host, slot, nt))

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


class _Delivery:
    __slots__ = ("cluster", "dst", "src", "msg", "size")

    def __init__(self, cluster: SimCluster, dst: str, src: str, msg: Message, size: int) -> None:
        self.cluster = cluster
        self.dst = dst
        self.src = src
        self.msg = msg
        self.size = size

    def __call__(self, _ev: object) -> None:
        self.cluster._deliver(self.dst, self.src, self.msg, self.size)


class _Timer:
    __slots__ = ("cluster", "host", "slot", "deadline")

    def __init__(self, cluster: SimCluster, host: str, slot: _Slot, deadline: float) -> None:
        self.cluster = cluster
        self.host = host
        self.slot = slot
        self.deadline = deadline

    def __call__(self, _ev: object) -> None:
        self.cluster._fire(self.host, self.slot, self.deadline)
