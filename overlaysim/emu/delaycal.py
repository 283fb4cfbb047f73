"""The delay line's own cost per traversal, measured at the start of each run and subtracted.

A packet held by the NFQUEUE delay line for ``h`` ms arrives later than ``h``: the line
wakes up after the due time (a sleeping process, often a CPU leaving idle), issues the
verdict, and the kernel reinjects the packet. netem has no user-space hop, so that cost is
an artefact of the mechanism: a user who asks for a 0.5 ms link should get 0.5 ms.

:func:`measure` times it with the run's own delay-line process, just before the run's
holds are set: two throwaway namespaces joined by a veth pair, both queues attached to
the line, and ``ping -U`` echoes between them alternately with the path unqueued and
queued at each calibration hold (rounds interleaved, so load drift hits both alike). Per
hold, the overhead per traversal is ``(median queued RTT - median unqueued RTT) / 2 -
hold``: what the queue adds beyond the requested hold. The unqueued path (veth, the
stack, ping's own timing) cancels out; it is real and is never compensated.

The overhead depends on the hold (measured here: about 30 µs at 0.5 ms, 130-250 µs from
1 ms up, as longer sleeps let the CPU idle deeper), so it is measured at the run's own
hold values (at most :data:`MAX_POINTS` of them) and interpolated between them.
:meth:`Calibration.effective` subtracts it from a hold, clamped at 0: a hold shorter than
the overhead is released at once, and the manifest says which paths were.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from overlaysim.agent.names import DELAY_CAL_A, DELAY_CAL_B
from overlaysim.emu.delayline import Hold, restore_script

#: Calibration holds: the run's distinct path delays, at most this many (min, middle, max).
MAX_POINTS = 3
#: Rounds (each: one unqueued batch, then one batch per hold) and echoes per batch.
ROUNDS = 3
PINGS = 8
#: Echo spacing within a batch (root may go below ping's 0.2 s minimum).
PING_INTERVAL_S = 0.02
#: SCHED_FIFO priority of the calibration's pinger: below the line's (10), above CFS.
PING_PRIORITY = 5
#: An overhead above this (per traversal) is not the line's: this machine's line costs
#: 30-250 µs; such a calibration is refused and the run goes on uncompensated.
MAX_PLAUSIBLE_US = 1000.0

METHOD = (
    "ping -U (SCHED_FIFO 5) between two throwaway namespaces served by this run's delay line, path "
    "unqueued vs queued at each calibration hold, interleaved rounds; overhead per "
    "traversal = (median queued RTT - median unqueued RTT) / 2 - hold"
)

_ADDR_A, _ADDR_B = "192.0.2.1", "192.0.2.2"  # TEST-NET-1, inside the throwaway pair only
_VETH_A, _VETH_B = DELAY_CAL_A, DELAY_CAL_B
_CAL_A, _CAL_B = "~cal-a", "~cal-b"  # host keys in the line (no topology host has "~")

Ask = Callable[[dict[str, Any]], str]


class CalibrationError(RuntimeError):
    """The calibration could not be measured (the run goes on uncompensated, and says so)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CalPoint:
    """The overhead measured at one hold."""

    hold_ms: float
    overhead_us: float  # per traversal; negative would mean the line released early
    queued_rtt_ms: float  # median over the queued echoes
    samples: int  # queued echoes at this hold


@dataclass(frozen=True, slots=True, kw_only=True)
class Calibration:
    """The delay line's cost per traversal on this run, as a function of the hold."""

    points: tuple[CalPoint, ...]  # sorted by hold
    unqueued_rtt_ms: float  # median over every unqueued echo
    unqueued_samples: int
    late_us_p50: float | None  # the line's median release lateness while calibrating
    seconds: float
    measured_at: str
    method: str = METHOD

    @property
    def overhead_us(self) -> float:
        """The headline number: the median over the calibration holds."""
        return round(statistics.median(p.overhead_us for p in self.points), 1)

    def overhead_ms(self, hold_ms: float) -> float:
        """The overhead for a hold: interpolated between the measured holds, held flat
        outside them, never negative."""
        pts = self.points
        if hold_ms <= pts[0].hold_ms:
            us = pts[0].overhead_us
        elif hold_ms >= pts[-1].hold_ms:
            us = pts[-1].overhead_us
        else:
            hi = next(i for i, p in enumerate(pts) if p.hold_ms >= hold_ms)
            lo, up = pts[hi - 1], pts[hi]
            f = (hold_ms - lo.hold_ms) / (up.hold_ms - lo.hold_ms)
            us = lo.overhead_us + f * (up.overhead_us - lo.overhead_us)
        return max(us, 0.0) / 1000.0

    def effective(self, hold: Hold) -> Hold:
        """What the line is told to hold so that the packet arrives after ``hold``."""
        if hold.ms <= 0:
            return hold
        return Hold(round(max(hold.ms - self.overhead_ms(hold.ms), 0.0), 6), hold.jitter_ms)

    def describe(self) -> str:
        """One line for the manifest's mechanisms and the docs."""
        per = ", ".join(f"{p.overhead_us:.0f} µs at {p.hold_ms:g} ms" for p in self.points)
        return (
            f"own overhead per traversal measured at start-up ({per}; "
            f"{self.unqueued_samples} unqueued + "
            f"{sum(p.samples for p in self.points)} queued echoes) and subtracted from each hold"
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``manifest.json``."""
        return {"overhead_us": self.overhead_us, **asdict(self)}


def points_for(holds: Mapping[str, Mapping[str, Hold]]) -> tuple[float, ...]:
    """The calibration holds for a run: its distinct path delays (min, middle, max)."""
    values = sorted(
        {round(h.ms, 3) for table in holds.values() for h in table.values() if h.ms > 0}
    )
    if len(values) <= MAX_POINTS:
        return tuple(values)
    return (values[0], values[len(values) // 2], values[-1])


def measure(ask: Ask, points: Sequence[float]) -> Calibration:
    """Time the line's overhead at each hold in ``points`` (see the module docstring).

    ``ask`` sends one command to the run's delay-line process and returns its answer
    (raising on an error answer). Needs root and ``ping``; the namespaces, the veth pair
    and the two queues exist only while this runs.
    """
    from overlaysim.emu.capabilities import probe_netns

    if not points:
        raise CalibrationError("no hold to calibrate")
    start = time.monotonic()
    with probe_netns("-cla") as a, probe_netns("-clb") as b, _attached(ask, a, b) as late:
        _run(a, ["ip", "link", "add", _VETH_A, "type", "veth", "peer", _VETH_B, "netns", b])
        for ns, dev, ip in ((a, _VETH_A, _ADDR_A), (b, _VETH_B, _ADDR_B)):
            _run(ns, ["ip", "addr", "add", f"{ip}/24", "dev", dev])
            _run(ns, ["ip", "link", "set", dev, "up"])
        _rules(a, b, None, first=True)
        _ping(a, 2)  # ARP and first-packet costs stay out of the samples
        unqueued: list[float] = []
        queued: dict[float, list[float]] = {p: [] for p in points}
        for _ in range(ROUNDS):
            _rules(a, b, None, first=False)
            unqueued += _ping(a, PINGS)
            for p in points:
                ask({"op": "set", "host": _CAL_A, "delays": {_ADDR_B: [p, 0.0]}})
                ask({"op": "set", "host": _CAL_B, "delays": {_ADDR_A: [p, 0.0]}})
                _rules(a, b, p, first=False)
                queued[p] += _ping(a, PINGS)
        _rules(a, b, None, first=False)
    if len(unqueued) < PINGS or any(len(v) < PINGS for v in queued.values()):
        raise CalibrationError(
            f"too few echoes ({len(unqueued)} unqueued, "
            f"{min(len(v) for v in queued.values())} queued at some hold)"
        )
    base = statistics.median(unqueued)
    cal_points = tuple(
        CalPoint(
            hold_ms=p,
            overhead_us=round(((statistics.median(v) - base) / 2 - p) * 1000.0, 1),
            queued_rtt_ms=round(statistics.median(v), 3),
            samples=len(v),
        )
        for p, v in sorted(queued.items())
    )
    worst = max(cal_points, key=lambda p: p.overhead_us)
    if worst.overhead_us > MAX_PLAUSIBLE_US:
        raise CalibrationError(
            f"implausible overhead {worst.overhead_us:.0f} µs at {worst.hold_ms:g} ms "
            f"(over {MAX_PLAUSIBLE_US:.0f} µs: the machine was saturated while calibrating?)"
        )
    return Calibration(
        points=cal_points,
        unqueued_rtt_ms=round(base, 3),
        unqueued_samples=len(unqueued),
        late_us_p50=late.get("late_us_p50"),
        seconds=round(time.monotonic() - start, 2),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


@contextlib.contextmanager
def _attached(ask: Ask, a: str, b: str) -> Iterator[dict[str, float | None]]:
    """Both throwaway queues attached to the line for the block, detached after it (the
    detach answer's lateness median lands in the yielded dict)."""
    late: dict[str, float | None] = {}
    fds = [os.open(f"/run/netns/{ns}", os.O_RDONLY) for ns in (a, b)]
    try:
        # The line runs in a host's mount namespace, where /run/netns may not be visible;
        # our open descriptors are, through /proc.
        for key, fd in zip((_CAL_A, _CAL_B), fds, strict=True):
            ask({"op": "attach", "host": key, "netns": f"/proc/{os.getpid()}/fd/{fd}"})
        yield late
    finally:
        samples = []
        for key in (_CAL_A, _CAL_B):
            with contextlib.suppress(Exception):  # a dead line has nothing bound
                got = ask({"op": "detach", "host": key})
                if got != "nan":
                    samples.append(float(got))
        late["late_us_p50"] = round(statistics.median(samples), 1) if samples else None
        for fd in fds:
            os.close(fd)


def _rules(a: str, b: str, hold: float | None, *, first: bool) -> None:
    """Queue the pair's echoes both ways (``hold`` set) or let them pass (None)."""
    for ns, src in ((a, _ADDR_B), (b, _ADDR_A)):
        delays = {} if hold is None else {src: Hold(hold)}
        _run(ns, ["iptables-restore", "-w", "--noflush"], restore_script(delays, first=first))


_TIME = re.compile(r"time=([\d.]+)")


def _ping(ns: str, count: int) -> list[float]:
    # The pinger runs real-time (below the line's priority): on a saturated machine a
    # normal ping that sleeps through a held echo wakes milliseconds late, an unqueued
    # one (0.1 ms) hardly sleeps, and that difference is ping's, not the line's.
    rt = ["chrt", "-f", str(PING_PRIORITY)] if shutil.which("chrt") else []
    out = subprocess.run(
        ["ip", "netns", "exec", ns, *rt, "ping", "-U", "-n", "-c", str(count),
         "-i", f"{PING_INTERVAL_S:g}", "-W", "1", _ADDR_B],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    return [float(x) for x in _TIME.findall(out.stdout)]


def _run(ns: str, argv: list[str], stdin: str | None = None) -> None:
    from overlaysim.emu.capabilities import run_in_netns

    out = run_in_netns(ns, argv, stdin)
    if out.returncode != 0:
        raise CalibrationError(f"{' '.join(argv[:3])}: {out.stderr.strip()}")
