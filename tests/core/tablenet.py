"""A small fake wire for tables tests: deliveries on a heap in virtual time.

Every message goes through the real codec (``encode``/``decode`` with the datagram or
stream size limit), so a message the tables could not put on the wire fails the test.
Unreliable sends are lost with probability ``loss``; every send gets a random delay in
``delay``, so messages are reordered. Partitions and a drop predicate cut links;
reliable sends (bulk sync) are never lost at random but are cut by partitions.

With ``objects=True`` a receiver gets the very message object that was sent, as in the
simulator (derived fields such as a message's record numbers are kept); each message
is still encoded, so the size and limit checks hold either way.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from overlaysim.core.config import TableConfig
from overlaysim.core.events import EntryEvent
from overlaysim.core.tables import Tables
from overlaysim.core.wire import MAX_DATAGRAM, MAX_STREAM, Message, decode, encode


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a node."""

    t: float
    src: str  # node name
    dst: str  # node name
    msg: Message


class TableNet:
    """Nodes by name, a heap of in-flight messages, and a virtual clock."""

    def __init__(
        self,
        seed: int = 0,
        *,
        loss: float = 0.0,
        delay: tuple[float, float] = (0.001, 0.05),
        objects: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.objects = objects
        self.loss = loss
        self.delay = delay
        self.now = 0.0
        self.nodes: dict[str, Tables] = {}
        self._by_addr: dict[str, str] = {}
        self._heap: list[tuple[float, int, str, str, bytes | Message, bool]] = []
        self._seq = itertools.count()
        self._groups: list[set[str]] | None = None
        #: drop(src, dst, msg) -> True cuts that message.
        self.drop: Callable[[str, str, Message], bool] | None = None
        self.delivered: list[Delivery] = []
        #: Every EntryEvent each node emitted, with the virtual time it was collected.
        self.events: dict[str, list[tuple[float, EntryEvent]]] = {}
        #: delay(src, dst, msg) -> seconds, or None for the random default.
        self.delay_fn: Callable[[str, str, Message], float | None] | None = None
        self.lost = 0
        #: Called after each delivery has been handled.
        self.observer: Callable[[Delivery], None] | None = None

    # -- building --------------------------------------------------------------------

    @staticmethod
    def addr_of(name: str) -> str:
        return f"addr-{name}"

    def add(
        self, name: str, config: TableConfig, *, epoch: int = 0, seed: int | None = None
    ) -> Tables:
        """Create, register and start a node (replacing one of the same name)."""
        rng = random.Random(self.rng.getrandbits(64) if seed is None else seed)
        t = Tables(name=name, addr=self.addr_of(name), config=config, rng=rng, epoch=epoch)
        self.nodes[name] = t
        self.events.setdefault(name, [])
        self._by_addr[t.addr] = name
        t.start(self.now)
        return t

    def cluster(self, names: Iterable[str], config: TableConfig) -> list[Tables]:
        """Add nodes and tell each that all others are alive (what membership would)."""
        out = [self.add(n, config) for n in names]
        self.introduce()
        return out

    def introduce(self, names: Iterable[str] | None = None) -> None:
        """member_alive for every pair among ``names`` (default: all nodes)."""
        chosen = list(self.nodes if names is None else names)
        for a in chosen:
            for b in chosen:
                if a != b:
                    tb = self.nodes[b]
                    self.nodes[a].member_alive(b, tb.addr, tb.epoch, self.now)

    # -- faults ----------------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        self._groups = [set(g) for g in groups]

    def heal(self) -> None:
        self._groups = None

    def reachable(self, a: str, b: str) -> bool:
        if self._groups is None:
            return True
        return any(a in g and b in g for g in self._groups)

    # -- running ---------------------------------------------------------------------

    def flush(self) -> None:
        """Route whatever every node has queued to send."""
        for name, node in self.nodes.items():
            self._route(name, node)

    def _route(self, src: str, node: Tables) -> None:
        self.events[src].extend((self.now, ev) for ev in node.take_events())
        for s in node.take_sends():
            data = encode(s.msg)
            # A size the sender states (gossip packed from records of known size) is
            # what a driver may use instead of encoding: it must be the real length.
            assert s.size is None or s.size == len(data), (type(s.msg).__name__, s.size)
            limit = MAX_STREAM if s.reliable else MAX_DATAGRAM
            assert len(data) <= limit, f"{type(s.msg).__name__} of {len(data)} bytes"
            dst = self._by_addr.get(s.dst)
            assert dst is not None, f"send to unknown address {s.dst!r}"
            if not self.reachable(src, dst):
                self.lost += 1
                continue
            if self.drop is not None and self.drop(src, dst, s.msg):
                self.lost += 1
                continue
            if not s.reliable and self.rng.random() < self.loss:
                self.lost += 1
                continue
            d = self.delay_fn(src, dst, s.msg) if self.delay_fn is not None else None
            t = self.now + (self.rng.uniform(*self.delay) if d is None else d)
            sent = s.msg if self.objects else data
            heapq.heappush(self._heap, (t, next(self._seq), src, dst, sent, s.reliable))

    def run_until(self, until: float) -> None:
        """Deliver messages and fire timers in time order up to ``until``."""
        self.flush()
        while True:
            t_msg = self._heap[0][0] if self._heap else None
            t_timer, who = None, None
            for name, node in self.nodes.items():
                nt = node.next_timer()
                if nt is not None and (t_timer is None or nt < t_timer):
                    t_timer, who = nt, name
            times = [t for t in (t_msg, t_timer) if t is not None]
            nxt = min(times) if times else None
            if nxt is None or nxt > until:
                break
            self.now = max(self.now, nxt)
            if t_msg is not None and t_msg <= nxt:
                _, _, src, dst, data, reliable = heapq.heappop(self._heap)
                if isinstance(data, Message):
                    msg = data
                else:
                    msg = decode(data, MAX_STREAM if reliable else MAX_DATAGRAM)
                node = self.nodes[dst]
                node.receive(self.addr_of(src), msg, self.now)
                self._route(dst, node)
                d = Delivery(self.now, src, dst, msg)
                self.delivered.append(d)
                if self.observer is not None:
                    self.observer(d)
            else:
                node = self.nodes[who]
                node.handle_timer(self.now)
                after = node.next_timer()
                assert after is None or after > self.now, f"{who}: timer did not advance"
                self._route(who, node)
        self.now = max(self.now, until)

    def run(self, duration: float) -> None:
        self.run_until(self.now + duration)

    # -- views -----------------------------------------------------------------------

    def kinds(self, name: str, key: str) -> list[str]:
        """The event kinds ``name`` emitted for ``key``, in order."""
        return [ev.kind.value for _, ev in self.events[name] if ev.key == key]

    def view(self, name: str, network: str) -> dict[tuple[str, str], tuple[str, dict[str, str]]]:
        """A node's live entries as (table, key) -> (owner, value)."""
        return {k: (e.owner, e.value) for k, e in self.nodes[name].entries(network).items()}
