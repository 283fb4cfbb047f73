"""A user-space delay line: packets wait in an NFQUEUE and are released with a late verdict.

Kernels without ``sch_netem`` still have NFQUEUE (the iptables ``NFQUEUE`` target, via
nft_compat here) and ``CONFIG_NETFILTER_NETLINK_QUEUE``. In each host's network namespace
an iptables chain ``OSIM_DELAY``, jumped to from ``INPUT``, sends the packets whose
source is behind a delayed path to queue ``QUEUE_NUM``; every other packet never leaves
the kernel. Packets are held where they arrive, not where they leave: a packet held
below the sender's TCP socket still counts against TCP Small Queues, which would cap a
connection at a few packets per round trip (netem orphans its packets for the same
reason; a queue verdict cannot). One process per underlay (``python -m overlaysim.emu.delayline``)
binds that queue in every host's namespace and serves them all from one event loop.
Each queued packet is held for its path's one-way delay plus a jitter drawn from a
seeded ``random.Random`` per host (uniform in ±jitter, like netem without a
distribution table), then accepted. Releases from one source never overtake each
other (netem with jitter reorders; TCP over a reordering line would measure reordering).

The rules are written by the parent (``restore_script``), the queues are served here.
Control is line-oriented JSON on stdin, one answer line on stdout:

* ``{"op": "attach", "host": "h1", "netns": "/proc/PID/ns/net"}`` binds h1's queue;
* ``{"op": "set", "host": "h1", "delays": {"10.0.0.2": [ms, jitter_ms]}}`` replaces its
  table (keyed by source address);
* ``{"op": "detach", "host": "h1"}`` releases h1's packets and unbinds its queue (the
  start-up calibration's throwaway queues); answers the median release lateness in µs;
* ``{"op": "stats"}`` answers each host's counters as JSON;
* end of stdin, SIGTERM or SIGINT: held packets are released and the queues unbound.

A hold counts from the kernel's receive stamp of the packet (this process keeps stamping
switched on), so the time a packet waits for this process to wake up is part of its hold,
not added to it. The same stamp is taken before INPUT, so tools
that read it (``ping`` by default) see only the sender-side half of the hold: time with
user-space clocks (``ping -U``), as applications do.

The rules use ``--queue-bypass``: while no process serves the queue (before the first
attach, after this process ends), packets pass undelayed instead of being dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import ipaddress
import json
import os
import random
import select
import signal
import socket
import statistics
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CHAIN = "OSIM_DELAY"
#: Queue number inside the host's namespace (queues are per network namespace).
QUEUE_NUM = 4242
#: Packets the kernel may hold for us before it drops: 100 ms at about 80 kpps.
QUEUE_MAXLEN = 8192
#: The IPv4 header is all we read (the source address decides the hold).
COPY_RANGE = 20
#: Release lateness samples kept per host (the most recent ones) for the median.
LATE_SAMPLES = 4096


@dataclass(frozen=True, slots=True)
class Hold:
    """How long packets from one source wait: ``ms`` ± uniform ``jitter_ms``."""

    ms: float
    jitter_ms: float = 0.0


def restore_script(delays: Mapping[str, Hold], *, first: bool, queue: int = QUEUE_NUM) -> str:
    """``iptables-restore --noflush`` input replacing the chain's rules atomically.

    ``first``: also hook the chain into ``INPUT`` (once per namespace).
    """
    lines = ["*filter", f":{CHAIN} - [0:0]"]  # declaring the chain flushes it
    if first:
        lines.append(f"-I INPUT 1 -j {CHAIN}")
    for ip in sorted(delays, key=lambda a: ipaddress.IPv4Address(a)):
        if delays[ip].ms > 0 or delays[ip].jitter_ms > 0:
            lines.append(f"-A {CHAIN} -s {ip}/32 -j NFQUEUE --queue-num {queue} --queue-bypass")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Stats:
    """Counters since start (for tests, ceilings and the manifest)."""

    held: int = 0
    passed: int = 0  # queued but with no hold (a rule raced a table change)
    released: int = 0
    max_depth: int = 0
    max_late_ms: float = 0.0  # worst release later than planned (scheduling lag)
    max_queued_ms: float = 0.0  # worst wait between the kernel's arrival stamp and us
    #: The latest releases' lateness (seconds after their due time), for medians.
    late: deque[float] = field(default_factory=lambda: deque(maxlen=LATE_SAMPLES))


@dataclass(slots=True)
class DelayLine:
    """The schedule: pure apart from the verdict callbacks it is handed (testable alone)."""

    rng: random.Random
    table: dict[bytes, Hold] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    _heap: list[tuple[float, int, Any]] = field(default_factory=list)
    _last: dict[bytes, float] = field(default_factory=dict)
    _seq: int = 0

    def set_table(self, delays: Mapping[str, Hold]) -> None:
        """Replace the per-source holds (packets already held keep their time)."""
        self.table = {ipaddress.IPv4Address(ip).packed: h for ip, h in delays.items()}

    def admit(self, src: bytes, now: float, packet: Any, queued: float = 0.0) -> float | None:
        """Schedule ``packet`` from ``src``; returns its release time, None if not held.

        ``now`` is when the packet arrived; ``queued`` how long it then waited in the
        kernel's queue before we saw it (counted in ``max_queued_ms``).
        """
        self.stats.max_queued_ms = max(self.stats.max_queued_ms, queued * 1000.0)
        hold = self.table.get(src)
        if hold is None:
            self.stats.passed += 1
            return None
        ms = hold.ms
        if hold.jitter_ms:
            ms += self.rng.uniform(-hold.jitter_ms, hold.jitter_ms)
        due = max(now + max(ms, 0.0) / 1000.0, self._last.get(src, 0.0))
        self._last[src] = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, packet))
        self.stats.held += 1
        self.stats.max_depth = max(self.stats.max_depth, len(self._heap))
        return due

    def next_due(self) -> float | None:
        """When the next packet is due (None: nothing held)."""
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[Any]:
        """Pop every packet whose time has come, in release order."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, pkt = heapq.heappop(heap)
            self.stats.max_late_ms = max(self.stats.max_late_ms, (now - due) * 1000.0)
            self.stats.late.append(now - due)
            out.append(pkt)
        self.stats.released += len(out)
        return out

    def drain(self) -> list[Any]:
        """Everything still held (released at once on exit)."""
        out = [pkt for _, _, pkt in sorted(self._heap)]
        self._heap.clear()
        self.stats.released += len(out)
        return out


# --- the process -------------------------------------------------------------------------


@dataclass(slots=True)
class _Queue:
    """One host's queue: bound inside its network namespace, with its own schedule."""

    nfq: Any
    line: DelayLine


def _bind_in(netns: str, callback: Any) -> Any:
    """A NetfilterQueue whose netlink socket lives in ``netns`` (a namespace file)."""
    from netfilterqueue import COPY_PACKET, NetfilterQueue

    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    try:
        _setns(target)
        try:
            # A netlink socket stays in the namespace it was opened in.
            nfq = NetfilterQueue()
            nfq.bind(QUEUE_NUM, callback, max_len=QUEUE_MAXLEN, mode=COPY_PACKET, range=COPY_RANGE)
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
    os.set_blocking(nfq.get_fd(), False)
    return nfq


_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    """setns(2) for a network namespace (``os.setns`` arrives only in Python 3.12)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Server:
    """The delay-line process: queues per host, one event loop, commands on stdin."""

    def __init__(self, seed: int) -> None:
        """Nothing bound yet; ``attach`` binds a host's queue."""
        self.seed = seed
        self.queues: dict[str, _Queue] = {}
        self.by_fd: dict[int, _Queue] = {}

    def attach(self, host: str, netns: str) -> None:
        """Bind host ``host``'s queue in ``netns``; its jitter draws from its own seeded RNG."""
        if host in self.queues:
            return
        line = DelayLine(rng=random.Random(f"{self.seed}:{host}"))

        def on_packet(pkt: Any) -> None:
            try:
                src = pkt.get_payload()[12:16]
            except Exception:  # a packet we cannot read is passed, never lost
                pkt.accept()
                return
            arrived, queued = _arrival(pkt)
            if line.admit(src, arrived, pkt, queued) is None:
                pkt.accept()

        q = _Queue(nfq=_bind_in(netns, on_packet), line=line)
        self.queues[host] = q
        self.by_fd[q.nfq.get_fd()] = q

    def detach(self, host: str) -> str:
        """Release what ``host``'s queue holds and unbind it; answers its median release
        lateness in µs (``nan`` when nothing was released)."""
        q = self.queues.pop(host)
        self.by_fd.pop(q.nfq.get_fd(), None)
        for pkt in q.line.drain():
            pkt.accept()
        q.nfq.unbind()
        late = q.line.stats.late
        return f"{statistics.median(late) * 1e6:.1f}" if late else "nan"

    def command(self, raw: bytes) -> str:
        """Answer one control line (errors are answered, never fatal)."""
        try:
            msg = json.loads(raw)
            op = msg.get("op")
            if op == "attach":
                self.attach(str(msg["host"]), str(msg["netns"]))
                return "ok"
            if op == "detach":
                return self.detach(str(msg["host"]))
            if op == "set":
                self.queues[str(msg["host"])].line.set_table(_parse_delays(msg["delays"]))
                return "ok"
            if op == "stats":
                return json.dumps({h: _stats(q.line.stats) for h, q in sorted(self.queues.items())})
            return f"error: unknown op {op!r}"
        except Exception as exc:
            return f"error: {type(exc).__name__}: {exc}"

    def next_due(self) -> float | None:
        """The earliest release over every queue."""
        dues = [d for q in self.queues.values() if (d := q.line.next_due()) is not None]
        return min(dues, default=None)

    def release(self, now: float) -> None:
        """Accept every packet whose time has come."""
        for q in self.queues.values():
            for pkt in q.line.due(now):
                pkt.accept()

    def close(self) -> None:
        """Release everything still held and unbind (the rules go with the namespaces)."""
        for q in self.queues.values():
            for pkt in q.line.drain():
                pkt.accept()
            q.nfq.unbind()
        self.queues.clear()
        self.by_fd.clear()


#: ``SO_TIMESTAMP`` (Linux value; older Pythons do not name it).
_SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)
#: A kernel stamp further back than this is not trusted (a wall-clock step).
_MAX_QUEUED_S = 1.0


def _arrival(pkt: Any) -> tuple[float, float]:
    """``(arrival on the monotonic clock, seconds it waited for us)`` for a queued packet.

    The hold counts from the kernel's receive stamp, not from when this process got to
    the packet: on a busy machine the wake-up alone takes milliseconds, which would add
    to every hold (measured here: 7 ms median under load without the stamp). Without a
    stamp the packet's arrival is now.
    """
    now = time.monotonic()
    try:
        stamp = float(pkt.get_timestamp())
    except Exception:
        stamp = 0.0
    if stamp <= 0.0:
        return now, 0.0
    queued = min(max(time.time() - stamp, 0.0), _MAX_QUEUED_S)
    return now - queued, queued


def _keep_stamping() -> socket.socket | None:
    """A socket asking for receive timestamps, so the kernel stamps every packet.

    The kernel only records receive times while some socket wants them (the switch is
    global), and the queue hands us that stamp; held open for the process's life.
    """
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMP, 1)
        return s
    except OSError:
        return None


def _stats(s: Stats) -> dict[str, float]:
    return {
        "held": s.held,
        "passed": s.passed,
        "released": s.released,
        "max_depth": s.max_depth,
        "max_late_ms": round(s.max_late_ms, 3),
        "max_queued_ms": round(s.max_queued_ms, 3),
        "late_ms_p50": round(statistics.median(s.late) * 1000.0, 3) if s.late else None,
    }


def _parse_delays(raw: Mapping[str, Any]) -> dict[str, Hold]:
    return {str(ip): Hold(float(v[0]), float(v[1])) for ip, v in raw.items()}


def serve(seed: int) -> int:
    """Run until stdin closes or SIGTERM/SIGINT arrives."""
    server = Server(seed)
    stopping = False
    stamping = _keep_stamping()
    # Release times are only as good as our wake-ups: on a busy machine a normal process
    # wakes milliseconds late. A low real-time priority fixes that; the loop always
    # blocks in select(), and the kernel's RT throttling bounds it anyway.
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    infd = sys.stdin.fileno()
    pending = b""
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    try:
        while not stopping:
            nxt = server.next_due()
            timeout = 0.5 if nxt is None else max(0.0, nxt - time.monotonic())
            try:
                ready, _, _ = select.select([infd, *server.by_fd], [], [], timeout)
            except InterruptedError:
                continue
            for fd in ready:
                q = server.by_fd.get(fd)
                if q is not None:
                    q.nfq.run(block=False)
            if infd in ready:
                chunk = os.read(infd, 65536)
                if not chunk:
                    break
                pending += chunk
                while b"\n" in pending:
                    raw, pending = pending.split(b"\n", 1)
                    out.write(server.command(raw) + "\n")
                    out.flush()
            server.release(time.monotonic())
    finally:
        server.close()
        if stamping is not None:
            stamping.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m overlaysim.emu.delayline``."""
    ap = argparse.ArgumentParser(description="overlaysim NFQUEUE delay line")
    ap.add_argument("--seed", type=int, default=0, help="the scenario's seed (jitter draws)")
    args = ap.parse_args(argv)
    return serve(args.seed)


if __name__ == "__main__":
    sys.exit(main())
