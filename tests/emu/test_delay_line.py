"""Link latency and ``delay`` on a live two-site underlay (15 ms WAN, 0.5 ms access links).

On a kernel with ``sch_netem`` these run through netem; here (no netem) through the
NFQUEUE delay line. Round-trip times are read from ``ping``; expectations are the
simulator's: twice the sum of the one-way delays on the path.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import emulation_or_skip, running_underlay

from overlaysim.emu.net import Underlay, underlay_session
from overlaysim.scenario.generators import two_site
from overlaysim.scenario.topology import LinkSpec

pytestmark = pytest.mark.emu

TOPO = two_site(2, LinkSpec(latency_ms=0.5), LinkSpec(latency_ms=15.0, bandwidth_mbps=100.0))
SAME_SITE_MS = 2 * (0.5 + 0.5)
CROSS_SITE_MS = 2 * (0.5 + 15.0 + 0.5)


def rtt_ms(u: Underlay, a: str, b: str, count: int = 6) -> float | None:
    """Lowest ping RTT from ``a`` to ``b`` (None: no reply at all), timed in user space."""
    out = u.cmd(
        a, ["ping", "-U", "-q", "-n", "-c", str(count), "-i", "0.2", "-W", "2", u.underlay_ip(b)]
    )
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    if "=" not in last:
        return None
    return float(last.split("=")[1].split("/")[0])  # min: wake-up lag only adds


def replies(u: Underlay, a: str, b: str, count: int) -> int:
    out = u.cmd(
        a, ["ping", "-U", "-q", "-n", "-c", str(count), "-i", "0.02", "-W", "1", u.underlay_ip(b)]
    )
    line = next(ln for ln in out.stdout.splitlines() if "received" in ln)
    return int(line.split(",")[1].split()[0])


@pytest.fixture(scope="module")
def underlay() -> Iterator[Underlay]:
    with running_underlay(TOPO, seed=11) as shared:
        yield shared


@pytest.fixture
def u(underlay: Underlay) -> Iterator[Underlay]:
    yield underlay
    underlay.impairments.clear()
    underlay.impairments.heal()


def test_wan_link_gives_twice_its_latency_plus_access(u: Underlay) -> None:
    mech = u.impairments.delay_mechanism()
    assert mech in ("netem", "nfqueue"), u.mechanisms["link_latency"]
    if mech == "nfqueue":  # the line measured its own cost at start-up and subtracts it
        cal = u.impairments.delay_report()["calibration"]
        print(f"calibration: {cal}")
        assert cal["applied"], cal
        assert [p["hold_ms"] for p in cal["points"]] == [1.0, 16.0]  # this run's paths
        assert all(p["samples"] >= 8 for p in cal["points"]) and cal["unqueued_samples"] >= 8
        assert "subtracted from each hold" in u.mechanisms["link_latency"]
    got = {pair: rtt_ms(u, *pair) for pair in (("h1", "h3"), ("h4", "h2"), ("h1", "h2"))}
    print(f"lowest RTTs (ms): {got}")
    # Within 5 % across sites and 15 % inside one: the line's own overhead is calibrated
    # out, what is left is the host stack and ping's timing (0.1-0.3 ms here).
    assert got["h1", "h3"] == pytest.approx(CROSS_SITE_MS, rel=0.05), got
    assert got["h4", "h2"] == pytest.approx(CROSS_SITE_MS, rel=0.05), got
    assert got["h1", "h2"] == pytest.approx(SAME_SITE_MS, rel=0.15), got


def test_delay_step_adds_what_it_says_and_clear_removes_it(u: Underlay) -> None:
    imp = u.impairments
    imp.delay(20, link=("s1", "s2"))
    assert rtt_ms(u, "h1", "h3") == pytest.approx(CROSS_SITE_MS + 40, rel=0.15)
    assert rtt_ms(u, "h1", "h2") == pytest.approx(SAME_SITE_MS, abs=1.5)  # not on its path
    imp.delay(5)  # end to end, on top of the link's
    assert rtt_ms(u, "h1", "h3") == pytest.approx(CROSS_SITE_MS + 50, rel=0.15)
    assert rtt_ms(u, "h2", "h1") == pytest.approx(SAME_SITE_MS + 10, rel=0.15, abs=1.5)
    imp.clear(("s1", "s2"), kind="delay")
    assert rtt_ms(u, "h1", "h3") == pytest.approx(CROSS_SITE_MS + 10, rel=0.15)
    imp.clear()
    assert rtt_ms(u, "h1", "h3") == pytest.approx(CROSS_SITE_MS, rel=0.15)


def test_loss_and_partition_compose_with_delay(u: Underlay) -> None:
    imp = u.impairments
    imp.delay(10, link=("s1", "s2"))
    imp.loss(30, link=("s1", "s2"))  # each way: 0.7 x 0.7 of the pings come back
    got = replies(u, "h1", "h3", 200)
    assert 0.3 * 200 < got < 0.7 * 200, got
    assert rtt_ms(u, "h1", "h2") == pytest.approx(SAME_SITE_MS, abs=1.5)
    imp.loss(0, link=("s1", "s2"))
    imp.partition([["h1", "h2"], ["h3", "h4"]])
    assert rtt_ms(u, "h1", "h3", count=2) is None
    assert rtt_ms(u, "h3", "h4") == pytest.approx(SAME_SITE_MS, abs=1.5)
    imp.heal()
    assert rtt_ms(u, "h1", "h3") == pytest.approx(CROSS_SITE_MS + 20, rel=0.15)


def test_rate_composes_with_delay(u: Underlay, require_tools) -> None:  # type: ignore[no-untyped-def]
    require_tools("iperf3")
    u.impairments.rate(20, link=("s1", "s2"))
    server = u.popen("h3", ["iperf3", "-s", "-1", "-B", u.underlay_ip("h3")])
    try:
        import time

        time.sleep(0.5)
        out = u.cmd("h1", ["iperf3", "-c", u.underlay_ip("h3"), "-t", "3", "-J"], timeout=30)
    finally:
        server.kill()
    import json

    mbps = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    assert 4 < mbps <= 22, mbps  # limited by the rate, slowed by the 32 ms round trip
    assert rtt_ms(u, "h1", "h3") == pytest.approx(CROSS_SITE_MS, rel=0.15)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split()[2] == "Z"


@pytest.mark.parametrize("how", ["clean", "error", "interrupt"])
def test_nothing_left_after_a_run_a_failure_or_ctrl_c(how: str) -> None:
    emulation_or_skip()
    pid = tag = run_dir = None
    exc = {"clean": None, "error": RuntimeError("boom"), "interrupt": KeyboardInterrupt()}[how]
    try:
        with underlay_session(TOPO, seed=1) as u:
            u.impairments.delay(3, link=("s1", "s2"))
            line = u.impairments._line
            assert line is not None and line.running
            pid = line._proc.pid  # type: ignore[union-attr]
            tag = u.plan.tag  # type: ignore[union-attr]
            run_dir = u.record.path.parent  # type: ignore[union-attr]
            if exc is not None:
                raise exc
    except (RuntimeError, KeyboardInterrupt) as caught:
        assert caught is exc
    assert pid is not None and not _alive(pid)
    nets = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert f"osim{tag}" not in nets
    assert run_dir is not None and not run_dir.exists()  # its error file went with it
    assert not _calibration_namespaces()


def _calibration_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if f"-probe-{os.getpid()}-cl" in ln]


def test_ctrl_c_during_the_calibration_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    emulation_or_skip()
    from overlaysim.emu import delay as dl
    from overlaysim.emu import delaycal

    real_ping, real_start = delaycal._ping, dl.DelayLineProcess.start
    lines: list[dl.DelayLineProcess] = []
    seen: list[tuple[list[str], list[int]]] = []

    def start(self: dl.DelayLineProcess, holds: Any) -> None:
        lines.append(self)
        real_start(self, holds)

    def ping_then_interrupt(ns: str, count: int) -> list[float]:
        real_ping(ns, count)
        pids = [ln._proc.pid for ln in lines if ln._proc is not None and ln.running]
        seen.append((_calibration_namespaces(), pids))
        raise KeyboardInterrupt

    monkeypatch.setattr(delaycal, "_ping", ping_then_interrupt)
    monkeypatch.setattr(dl.DelayLineProcess, "start", start)
    links_before = _osim_links()
    with pytest.raises(KeyboardInterrupt), underlay_session(TOPO, seed=1):
        pass  # the 15 ms WAN link starts the line in start(): calibration first
    assert seen, "the calibration never ran"
    namespaces, pids = seen[0]
    assert len(namespaces) == 2 and pids  # interrupted with both namespaces and the line up
    assert not _calibration_namespaces()
    assert not _still_alive(pids), [_describe(p) for p in pids]
    assert _osim_links() <= links_before


def _still_alive(pids: list[int], within_s: float = 3.0) -> list[int]:
    """The pids still alive after ``within_s`` (a SIGKILLed process may take a moment)."""
    import time

    deadline = time.monotonic() + within_s
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _describe(pid: int) -> str:
    try:
        stat = open(f"/proc/{pid}/stat").read().split()
        cmd = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return f"{pid}: gone"
    return f"{pid}: state {stat[2]} ppid {stat[3]} {cmd}"


def _osim_links() -> set[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    return {ln.split()[0] for ln in out.splitlines() if ln.startswith("osim")}
