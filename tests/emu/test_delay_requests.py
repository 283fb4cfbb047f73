"""The delay mechanisms without a kernel: netem's exact ``tc`` requests, the delay line's
schedule and iptables rules, and the per-host holds both derive from the topology.

The netem path cannot run on a kernel without ``sch_netem``; these tests pin what it
would ask the kernel for, through the same ``Impairments`` code the emulator runs.
"""

from __future__ import annotations

import random
import subprocess
from dataclasses import dataclass, field
from typing import Any

import pytest

from overlaysim.emu import delay as dl
from overlaysim.emu import delaycal
from overlaysim.emu.delaycal import Calibration, CalPoint
from overlaysim.emu.delayline import DelayLine, Hold, restore_script
from overlaysim.emu.impair import Impairments, UnsupportedImpairment
from overlaysim.emu.plan import plan_underlay
from overlaysim.scenario.generators import two_site
from overlaysim.scenario.topology import LinkSpec

TOPO = two_site(2, LinkSpec(latency_ms=0.5, bandwidth_mbps=1000), LinkSpec(latency_ms=15.0))


@dataclass
class FakeUnderlay:
    """An ``UnderlayView`` for ``Impairments``: records every command it is given."""

    topology: Any = TOPO
    state: str = "running"
    mtu: int = 1500
    record: Any = None
    calls: list[tuple[str | None, list[str], str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.plan = plan_underlay(self.topology, "a3")

    def run_in(self, ns: str | None, argv: list[str], *, input: str | None = None) -> Any:  # noqa: A002
        self.calls.append((ns, list(argv), input))
        return subprocess.CompletedProcess(argv, 0, "", "")


def _with_netem(netem: bool, nfqueue: bool = False) -> tuple[FakeUnderlay, Impairments]:
    u = FakeUnderlay()
    imp = Impairments(u)  # type: ignore[arg-type]
    imp._netem = netem
    imp._delay_mech = dl.choose(netem, nfqueue)
    imp._delay_why = dl.why_none(netem, nfqueue)
    return u, imp


def _tc(u: FakeUnderlay) -> list[tuple[str | None, str]]:
    return [(ns, " ".join(argv)) for ns, argv, _ in u.calls if argv[0] == "tc"]


def test_netem_path_puts_each_links_latency_on_both_ends_egress() -> None:
    u, imp = _with_netem(True)
    imp.apply_baseline(shape=False)
    tc = sorted(_tc(u), key=lambda c: (c[0] or "", c[1]))
    # h1..h4 on their eth0; the switch ends of the access links and both WAN ends in the
    # root namespace: 0.5 ms on access links, 15 ms on s1-s2.
    assert ("h1", "tc qdisc add dev eth0 root handle 1: netem delay 500us") in tc
    wan = [c for c in tc if "15000us" in c[1]]
    assert [ns for ns, _ in wan] == [None, None]
    assert {c.split()[4] for _, c in wan} == {"osima3s1-3", "osima3s2-3"}
    assert len(tc) == 2 * len(TOPO.links)


def test_netem_delay_step_replaces_the_qdisc_with_rate_as_a_tbf_child() -> None:
    u, imp = _with_netem(True)
    imp.apply_baseline(shape=True)
    u.calls.clear()
    imp.delay(20, jitter_ms=2, link=("s1", "s2"))
    assert _tc(u) == [
        (None, "tc qdisc del dev osima3s1-3 root"),
        (None, "tc qdisc add dev osima3s1-3 root handle 1: netem delay 35000us 2000us"),
        (None, "tc qdisc add dev osima3s1-3 parent 1:1 handle 10: tbf rate 1000000kbit "
         "burst 500000 latency 50ms"),
        (None, "tc qdisc del dev osima3s2-3 root"),
        (None, "tc qdisc add dev osima3s2-3 root handle 1: netem delay 35000us 2000us"),
        (None, "tc qdisc add dev osima3s2-3 parent 1:1 handle 10: tbf rate 1000000kbit "
         "burst 500000 latency 50ms"),
    ]  # fmt: skip
    u.calls.clear()
    imp.delay(5)  # end to end: once, at every host's egress
    hosts = [c for c in _tc(u) if c[0] is not None and "netem" in c[1]]
    assert len(hosts) == 4 and all("netem delay 5500us" in c for _, c in hosts)
    u.calls.clear()
    imp.clear()
    assert (None, "tc qdisc add dev osima3s1-3 root handle 1: netem delay 15000us") in _tc(u)


def test_without_netem_no_netem_is_requested_and_the_line_gets_the_delay() -> None:
    u, imp = _with_netem(False, nfqueue=True)
    holds = imp._wanted_holds()
    ip = {h.name: h.ip for h in u.plan.hosts}
    # h1 from h2 (same site): two access links; h1 from h3: access + WAN + access.
    assert holds["h1"][ip["h2"]] == Hold(1.0, 0.0)
    assert holds["h1"][ip["h3"]] == Hold(16.0, 0.0)
    imp._extra_delay[2 * 2] = (10.0, 3.0)  # the WAN link is the fifth link
    imp._global_delay = (1.0, 0.5)
    assert imp._wanted_holds()["h3"][ip["h1"]] == Hold(27.0, 3.5)
    assert all("netem" not in " ".join(s) for s in map(str, imp._wanted_shapes().values()))


def test_no_mechanism_refuses_delay_with_the_reason() -> None:
    _, imp = _with_netem(False, nfqueue=False)
    with pytest.raises(UnsupportedImpairment, match="sch_netem missing.*NFQUEUE"):
        imp.delay(10)


def test_choose_prefers_netem_then_the_delay_line() -> None:
    assert dl.choose(True, True) == dl.NETEM
    assert dl.choose(False, True) == (dl.DELAY_LINE if dl.binding_available() else dl.NONE)
    assert dl.choose(False, False) == dl.NONE


def test_restore_script_queues_only_delayed_destinations() -> None:
    script = restore_script(
        {"10.0.0.10": Hold(5), "10.0.0.9": Hold(0, 1), "10.0.0.2": Hold(0)}, first=True
    )
    assert script.splitlines() == [
        "*filter",
        ":OSIM_DELAY - [0:0]",
        "-I INPUT 1 -j OSIM_DELAY",
        "-A OSIM_DELAY -s 10.0.0.9/32 -j NFQUEUE --queue-num 4242 --queue-bypass",
        "-A OSIM_DELAY -s 10.0.0.10/32 -j NFQUEUE --queue-num 4242 --queue-bypass",
        "COMMIT",
    ]
    assert "-I INPUT" not in restore_script({}, first=False)


def test_delay_line_holds_releases_in_order_and_draws_jitter_from_its_seed() -> None:
    a, b = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])

    def run(seed: int) -> list[tuple[str, float]]:
        line = DelayLine(rng=random.Random(seed))
        line.set_table({"10.0.0.2": Hold(10, 4), "10.0.0.3": Hold(1)})
        times = []
        for i in range(50):
            due = line.admit(a if i % 2 else b, i * 0.001, f"p{i}")
            assert due is not None
            times.append((f"p{i}", round(due, 9)))
        assert line.admit(bytes([10, 0, 0, 9]), 0.0, "x") is None  # no hold: passed
        out = []
        now = 0.0
        while line.next_due() is not None:
            now = line.next_due()  # type: ignore[assignment]
            out += line.due(now)
        assert line.stats.held == 50 and line.stats.released == 50
        to_a = [p for p in out if int(p[1:]) % 2]
        assert to_a == sorted(to_a, key=lambda p: int(p[1:]))  # never reordered
        return times

    first = run(7)
    assert first == run(7)
    assert first != run(8)
    for name, due in first:
        i = int(name[1:])
        if i % 2:  # to a: 10 ms ± 4 ms after it arrived (or after the one before it)
            assert 0.006 - 1e-9 <= due - i * 0.001 <= 0.014 + 0.004
        else:
            assert due == pytest.approx(i * 0.001 + 0.001)


def test_ceiling_describes_itself_and_flags_throughput_near_it() -> None:
    c = dl.Ceiling(
        pps=30000, mbps=350, packet_bytes=1400, hold_ms=1, seconds=2, max_late_ms=1,
        measured_at="2026-01-01T00:00:00Z", kernel="k", cpus=2,
    )  # fmt: skip
    assert "30,000 packets/s, 350 Mbit/s" in c.describe()
    assert dl.exceeds([100, 290, 400], c) == [290, 400]


def test_hold_counts_from_the_kernels_arrival_stamp_not_from_our_wake_up() -> None:
    import time

    from overlaysim.emu import delayline

    class Pkt:
        def __init__(self, stamp: float) -> None:
            self.stamp = stamp

        def get_timestamp(self) -> float:
            return self.stamp

    before = time.monotonic()
    arrived, queued = delayline._arrival(Pkt(time.time() - 0.004))  # waited 4 ms for us
    assert 0.004 <= queued < 0.5
    assert arrived <= before - 0.003
    line = DelayLine(rng=random.Random(1))
    line.set_table({"10.0.0.2": Hold(10)})
    due = line.admit(bytes([10, 0, 0, 2]), arrived, "p", queued)
    assert due is not None and abs(due - (arrived + 0.010)) < 1e-9
    assert line.stats.max_queued_ms >= 4.0
    # no stamp (the kernel was not stamping): the packet arrived now
    arrived, queued = delayline._arrival(Pkt(0.0))
    assert queued == 0.0 and arrived >= before
    # a stamp from before a wall-clock step is capped, never trusted blindly
    _, queued = delayline._arrival(Pkt(time.time() - 3600))
    assert queued == delayline._MAX_QUEUED_S


def _calibration(*points: tuple[float, float]) -> Calibration:
    return Calibration(
        points=tuple(CalPoint(hold_ms=h, overhead_us=us, queued_rtt_ms=0, samples=24)
                     for h, us in points),
        unqueued_rtt_ms=0.1, unqueued_samples=24, late_us_p50=50.0, seconds=3.0,
        measured_at="2026-01-01T00:00:00Z",
    )  # fmt: skip


def test_calibration_interpolates_between_its_holds_and_never_goes_below_zero() -> None:
    cal = _calibration((1.0, 80.0), (31.0, 200.0))
    assert cal.overhead_ms(0.5) == pytest.approx(0.080)  # flat below the first hold
    assert cal.overhead_ms(16.0) == pytest.approx(0.140)  # halfway
    assert cal.overhead_ms(51.0) == pytest.approx(0.200)  # flat above the last
    assert cal.effective(Hold(1.0, 0.3)) == Hold(0.92, 0.3)  # jitter kept as asked
    assert cal.effective(Hold(31.0)) == Hold(30.8)
    assert cal.effective(Hold(0.05)) == Hold(0.0)  # shorter than the overhead: at once
    assert cal.effective(Hold(0.0, 2.0)) == Hold(0.0, 2.0)  # jitter only: untouched
    assert _calibration((1.0, -30.0)).overhead_ms(1.0) == 0.0  # early line: no correction
    assert cal.overhead_us == 140.0
    assert "80 µs at 1 ms, 200 µs at 31 ms" in cal.describe()
    assert cal.as_dict()["overhead_us"] == 140.0


def test_calibration_holds_are_the_runs_own_path_delays() -> None:
    holds = {"h1": {"a": Hold(1.0), "b": Hold(31.0)}, "h2": {"c": Hold(1.0), "d": Hold(0, 2)}}
    assert delaycal.points_for(holds) == (1.0, 31.0)
    many = {"h1": {str(i): Hold(float(i)) for i in range(1, 8)}}
    assert delaycal.points_for(many) == (1.0, 4.0, 7.0)
    assert delaycal.points_for({"h1": {}}) == ()


def test_the_line_is_told_each_hold_minus_the_overhead_and_short_holds_are_reported() -> None:
    proc = dl.DelayLineProcess(FakeUnderlay())  # type: ignore[arg-type]
    told: list[dict[str, Any]] = []
    proc._start = lambda: None  # type: ignore[method-assign]
    proc._ask = lambda msg: told.append(msg) or "ok"  # type: ignore[method-assign,func-returns-value]
    proc._attached.add("h1")
    proc.calibration = _calibration((1.0, 80.0), (31.0, 200.0))
    proc.set("h1", {"10.0.0.2": Hold(1.0), "10.0.0.3": Hold(31.0), "10.0.0.4": Hold(0.05)})
    assert told[-1]["delays"] == {
        "10.0.0.2": [0.92, 0.0], "10.0.0.3": [30.8, 0.0], "10.0.0.4": [0.0, 0.0]
    }  # fmt: skip
    report = proc.report()
    assert report["applied"] and report["overhead_us"] == 140.0
    assert report["below_overhead"]["paths"] == 1
    assert report["below_overhead"]["examples"] == [
        {"to": "h1", "from": "10.0.0.4", "hold_ms": 0.05}
    ]
    uncalibrated = dl.DelayLineProcess(FakeUnderlay(), calibrate=False)  # type: ignore[arg-type]
    assert uncalibrated.report() == {"applied": False, "why": "disabled"}
    failed = dl.DelayLineProcess(FakeUnderlay())  # type: ignore[arg-type]
    failed.calibration_error = "ping: too few echoes"
    assert failed.report() == {"applied": False, "why": "ping: too few echoes"}


def test_calibration_waits_for_a_hold_and_a_failure_leaves_holds_as_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[float, ...]] = []

    def measure(_ask: Any, points: tuple[float, ...]) -> Calibration:
        asked.append(tuple(points))
        if points == (7.0,):
            raise delaycal.CalibrationError("too few echoes")
        return _calibration((5.0, 100.0))

    monkeypatch.setattr(delaycal, "measure", measure)
    proc = dl.DelayLineProcess(FakeUnderlay())  # type: ignore[arg-type]
    proc._start = lambda: None  # type: ignore[method-assign]
    proc.start({"h1": {"10.0.0.2": Hold(0, 2)}})  # jitter only: nothing to calibrate yet
    assert asked == [] and proc.calibration is None and proc.calibration_error is None
    proc.start({"h1": {"10.0.0.2": Hold(5)}})
    assert asked == [(5.0,)] and proc.calibration is not None
    proc.start({"h1": {"10.0.0.2": Hold(9)}})  # measured once per line
    assert asked == [(5.0,)]
    failed = dl.DelayLineProcess(FakeUnderlay())  # type: ignore[arg-type]
    failed._start = lambda: None  # type: ignore[method-assign]
    failed.start({"h1": {"10.0.0.2": Hold(7)}})
    assert failed.calibration is None and failed.report()["why"] == "too few echoes"


def test_measure_takes_medians_per_hold_and_refuses_an_implausible_overhead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import contextlib

    from overlaysim.emu import capabilities

    @contextlib.contextmanager
    def fake_ns(suffix: str = "") -> Any:
        yield f"ns{suffix}"

    @contextlib.contextmanager
    def attached(_ask: Any, _a: str, _b: str) -> Any:
        yield {"late_us_p50": 50.0}

    queued: dict[str, float | None] = {"hold": None}
    extra_ms = {1.0: 0.08, 16.0: 0.2}

    def rules(_a: str, _b: str, hold: float | None, *, first: bool) -> None:
        queued["hold"] = hold

    def ping(_ns: str, count: int) -> list[float]:
        h = queued["hold"]
        rtt = 0.1 if h is None else 0.1 + 2 * (h + extra_ms[h])
        return [rtt + 5.0, *[rtt] * (count - 1)]  # one late echo: the median ignores it

    monkeypatch.setattr(capabilities, "probe_netns", fake_ns)
    monkeypatch.setattr(delaycal, "_attached", attached)
    monkeypatch.setattr(delaycal, "_rules", rules)
    monkeypatch.setattr(delaycal, "_ping", ping)
    monkeypatch.setattr(delaycal, "_run", lambda *_a, **_k: None)
    cal = delaycal.measure(lambda _msg: "ok", (1.0, 16.0))
    assert [(p.hold_ms, p.overhead_us) for p in cal.points] == [(1.0, 80.0), (16.0, 200.0)]
    assert cal.unqueued_rtt_ms == 0.1 and cal.late_us_p50 == 50.0
    assert all(p.samples == delaycal.ROUNDS * delaycal.PINGS for p in cal.points)
    extra_ms[16.0] = 1.5  # a saturated machine, not the line
    with pytest.raises(delaycal.CalibrationError, match="implausible overhead 1500 µs at 16 ms"):
        delaycal.measure(lambda _msg: "ok", (1.0, 16.0))
