"""A tiny fake wire for sans-I/O cores, stepping virtual time.

Cores are keyed by address. One heap holds message deliveries and timer wake-ups,
ordered by (time, sequence) so runs are deterministic. Messages can be dropped by a
predicate (loss, partitions, targeted drops) and whole nodes crashed: a crashed node
gets no messages and no timers, and what it had in flight is lost.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from overlaysim.core import wire
from overlaysim.core.events import Send


class Core(Protocol):
    def receive(self, src: str, msg: wire.Message, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def next_timer(self) -> float | None: ...
    def take_sends(self) -> list[Send]: ...
    def take_events(self) -> list[Any]: ...


#: drop(src, dst, send, now) -> True to lose the message.
DropFn = Callable[[str, str, Send, float], bool]


@dataclass(frozen=True, slots=True)
class Logged:
    """Something a node did or observed at ``time``."""

    time: float
    node: str
    item: Any  # an event from take_events(), or a Send for the sent log


class FakeNet:
    """Deliver messages between cores with a fixed latency (plus optional jitter)."""

    def __init__(
        self,
        *,
        latency: float = 0.001,
        jitter: float = 0.0,
        seed: int = 0,
        codec: bool = False,
        log_sends: bool = False,
    ) -> None:
        self.latency = latency
        self.jitter = jitter
        self.rng = random.Random(seed)
        #: Round-trip every message through wire.encode/decode (and check UDP sizes).
        self.codec = codec
        self.log_sends = log_sends
        self.now = 0.0
        self.cores: dict[str, Core] = {}
        self.down: set[str] = set()
        self.drop: DropFn | None = None
        self.events: list[Logged] = []
        self.sent: list[Logged] = []
        #: Called after each delivery as hook(now, dst, msg).
        self.on_deliver: Callable[[float, str, wire.Message], None] | None = None
        self._heap: list[tuple[float, int, str, str, wire.Message | None]] = []
        self._armed: dict[str, float | None] = {}
        self._ids = itertools.count()

    # -- setup ---------------------------------------------------------------------

    def add(self, addr: str, core: Core) -> None:
        """Attach (or replace, for a restart) the core at ``addr``."""
        self.cores[addr] = core
        self.down.discard(addr)
        self._armed[addr] = None
        self.flush(addr)

    def crash(self, addr: str) -> None:
        """Stop delivering to/from ``addr`` and stop its timers."""
        self.down.add(addr)

    # -- stepping ------------------------------------------------------------------

    def flush(self, addr: str) -> None:
        """Collect sends, events and the next timer of one core after touching it."""
        core = self.cores[addr]
        for ev in core.take_events():
            self.events.append(Logged(self.now, addr, ev))
        for send in core.take_sends():
            self._transmit(addr, send)
        t = core.next_timer()
        if t is not None and t != self._armed.get(addr):
            self._armed[addr] = t
            heapq.heappush(self._heap, (t, next(self._ids), addr, "", None))

    def _transmit(self, src: str, send: Send) -> None:
        if self.log_sends:
            self.sent.append(Logged(self.now, src, send))
        msg = send.msg
        if self.codec:
            data = wire.encode(msg)
            if not send.reliable:
                assert len(data) <= wire.MAX_DATAGRAM, f"{len(data)} byte datagram"
            msg = wire.decode(data, wire.MAX_STREAM if send.reliable else wire.MAX_DATAGRAM)
        if src in self.down or (self.drop is not None and self.drop(src, send.dst, send, self.now)):
            return
        delay = self.latency + (self.rng.random() * self.jitter if self.jitter else 0.0)
        heapq.heappush(self._heap, (self.now + delay, next(self._ids), send.dst, src, msg))

    def step(self) -> bool:
        """Process the next delivery or timer; False when nothing is left."""
        while self._heap:
            at, _, dst, src, msg = heapq.heappop(self._heap)
            if dst not in self.cores or dst in self.down:
                continue
            if msg is None:
                if self._armed.get(dst) != at:
                    continue  # superseded wake-up
                self._armed[dst] = None
                self.now = max(self.now, at)
                self.cores[dst].handle_timer(self.now)
                self.flush(dst)
                return True
            if src in self.down:
                continue  # lost with the crashed sender
            self.now = max(self.now, at)
            self.cores[dst].receive(src, msg, self.now)
            self.flush(dst)
            if self.on_deliver is not None:
                self.on_deliver(self.now, dst, msg)
            return True
        return False

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> None:
        """Step until virtual time ``t`` (or until ``stop()`` is true)."""
        while self._heap and self._heap[0][0] <= t:
            self.step()
            if stop is not None and stop():
                return
        self.now = max(self.now, t)

    # -- queries -------------------------------------------------------------------

    def events_of(self, kind: Any = None, subject: str | None = None) -> list[Logged]:
        """Logged events, filtered by event kind and by the node they are about."""
        return [
            e
            for e in self.events
            if (kind is None or e.item.kind is kind)
            and (subject is None or getattr(e.item, "node", None) == subject)
        ]
