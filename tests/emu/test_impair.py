"""Impairments on a live 3-host star: loss, per-link loss, partitions, rate, crashes.

One underlay serves the whole module (built once, ~1 s); every test leaves it clean
(an autouse fixture clears impairments, heals and restores links after each test).
Loss is measured one way with UDP datagrams: the receiver counts what arrives.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from overlaysim.emu.impair import UnsupportedImpairment
from overlaysim.emu.net import Underlay
from overlaysim.emu.setup import emulation_problems
from overlaysim.errors import UserError
from overlaysim.scenario.topology import Link, Topology

pytestmark = pytest.mark.emu

STAR = Topology(
    name="impair-star",
    hosts=("h1", "h2", "h3"),
    switches=("s1",),
    links=(Link(a="h1", b="s1"), Link(a="h2", b="s1"), Link(a="h3", b="s1")),
)

_RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
n = 0
try:
    while True:
        s.recv(2048)
        n += 1
except socket.timeout:
    pass
print(n, flush=True)
"""

_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"x" * 200, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.001)
"""


def _emulation_or_skip() -> None:
    problems = emulation_problems()
    if not problems:
        return
    reason = "; ".join(problems)
    strict = os.environ.get("OVERLAYSIM_REQUIRE_EMU") == "1" or os.environ.get(
        "CI", ""
    ).lower() in ("1", "true", "yes")
    if strict:
        pytest.fail(f"emulation required here but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def underlay() -> Iterator[Underlay]:
    _emulation_or_skip()
    u = Underlay(STAR)
    u.build()
    u.start()
    try:
        yield u
    finally:
        u.stop()


@pytest.fixture(autouse=True)
def pristine(underlay: Underlay) -> Iterator[Underlay]:
    for a, b in [("h1", "h2"), ("h2", "h3"), ("h3", "h1")]:
        assert pings(underlay, a, b), f"{a} cannot reach {b} before the test"
    yield underlay
    imp = underlay.impairments
    imp.clear()
    imp.heal()
    for h in underlay.hosts:
        imp.restore_links(h)


def pings(u: Underlay, src: str, dst: str) -> bool:
    argv = ["ping", "-c", "2", "-i", "0.2", "-W", "1", u.underlay_ip(dst)]
    return u.cmd(src, argv).returncode == 0


def udp_loss(u: Underlay, src: str, dst: str, count: int = 400) -> float:
    """Fraction of ``count`` datagrams from ``src`` that ``dst`` did not receive."""
    ip = u.underlay_ip(dst)
    rx = u.popen(
        dst,
        [sys.executable, "-c", _RECEIVER, ip, "9000", "1.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert rx.stdout is not None
    assert rx.stdout.readline().strip() == "ready"
    u.cmd(src, [sys.executable, "-c", _SENDER, ip, "9000", str(count)], check=True)
    out, _ = rx.communicate(timeout=10)
    return 1.0 - int(out.strip()) / count


def iperf_mbps(u: Underlay, src: str, dst: str, seconds: float = 2.0) -> float:
    """TCP throughput from ``src`` to ``dst`` in Mbit/s, as the receiver saw it."""
    ip = u.underlay_ip(dst)
    server = u.popen(dst, ["iperf3", "-s", "-1", "-B", ip], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):  # until the server listens
            out = u.cmd(src, ["iperf3", "-c", ip, "-t", str(seconds), "-J"])
            if out.returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"iperf3 client failed: {out.stdout[-300:]} {out.stderr}")
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        server.kill()
        server.wait()


def test_loss_everywhere_is_end_to_end(underlay: Underlay) -> None:
    assert udp_loss(underlay, "h1", "h2") < 0.02
    underlay.impairments.loss(10)
    lossy = udp_loss(underlay, "h1", "h2")
    assert 0.03 <= lossy <= 0.25, lossy
    assert "numgen" in underlay.mechanisms["loss"]
    # Senders into a lossy ingress stop sending GSO super-packets while it is active.
    port = underlay.links_between("h2", "s1")[0].b.ifname
    shown = subprocess.run(["ip", "-j", "-d", "link", "show", port], capture_output=True, text=True)
    assert json.loads(shown.stdout)[0]["gso_max_segs"] == 1
    underlay.impairments.clear()
    assert (
        json.loads(
            subprocess.run(
                ["ip", "-j", "-d", "link", "show", port], capture_output=True, text=True
            ).stdout
        )[0]["gso_max_segs"]
        > 1
    )
    assert udp_loss(underlay, "h1", "h2") < 0.02


def test_link_loss_only_hits_that_link(underlay: Underlay) -> None:
    underlay.impairments.loss(40, link=("h1", "s1"))
    out_of_h1 = udp_loss(underlay, "h1", "h2")
    into_h1 = udp_loss(underlay, "h3", "h1")
    elsewhere = udp_loss(underlay, "h2", "h3")
    assert 0.25 <= out_of_h1 <= 0.55, out_of_h1
    assert 0.25 <= into_h1 <= 0.55, into_h1
    assert elsewhere < 0.02, elsewhere
    underlay.impairments.clear(link=("s1", "h1"))  # either order names the link
    assert udp_loss(underlay, "h1", "h2") < 0.02


def test_partition_blocks_across_groups_and_heal_restores(underlay: Underlay) -> None:
    imp = underlay.impairments
    imp.partition([["h1", "h2"], ["h3"]])
    assert pings(underlay, "h1", "h2") and pings(underlay, "h2", "h1")
    assert not pings(underlay, "h1", "h3")
    assert not pings(underlay, "h3", "h2")
    imp.partition([["h1"], ["h2", "h3"]])  # a new partition replaces the old one
    assert pings(underlay, "h2", "h3") and not pings(underlay, "h1", "h2")
    imp.heal()
    assert pings(underlay, "h1", "h3") and pings(underlay, "h3", "h1")
    with pytest.raises(UserError, match="more than one"):
        imp.partition([["h1", "h2"], ["h2"]])


def test_unlisted_hosts_are_isolated_like_in_the_simulator(underlay: Underlay) -> None:
    underlay.impairments.partition([["h1", "h2"]])
    assert pings(underlay, "h1", "h2")
    assert not pings(underlay, "h3", "h1")


def test_crash_links_silences_a_host(underlay: Underlay) -> None:
    imp = underlay.impairments
    imp.crash_links("h2")
    assert not pings(underlay, "h1", "h2")
    assert not pings(underlay, "h2", "h3")
    assert pings(underlay, "h1", "h3")
    imp.restore_links("h2")
    assert pings(underlay, "h1", "h2") and pings(underlay, "h2", "h3")


def test_rate_limits_throughput(underlay: Underlay) -> None:
    unlimited = iperf_mbps(underlay, "h1", "h2")
    underlay.impairments.rate(20)
    limited = iperf_mbps(underlay, "h1", "h2")
    print(f"\nTCP h1->h2: {unlimited:.0f} Mbit/s unlimited, {limited:.1f} Mbit/s at rate 20")
    assert limited <= 20 * 1.1
    assert limited >= 20 * 0.5  # limited, not broken
    assert unlimited > 2 * limited
    out = underlay.cmd("h1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout
    assert "tbf" in out and "20Mbit" in out
    underlay.impairments.clear()
    assert "1Gbit" in underlay.cmd("h1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout


def test_delay_without_netem_is_refused_not_skipped(underlay: Underlay) -> None:
    imp = underlay.impairments
    if imp.netem_available():
        imp.delay(5, link=("h1", "s1"))
        assert "netem" in underlay.cmd("h1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout
        return
    with pytest.raises(UnsupportedImpairment, match="delay needs sch_netem"):
        imp.delay(20)
    imp.delay(0)  # no delay is always possible
    assert "unsupported" in underlay.mechanisms["delay"]


def test_bad_arguments_are_user_errors(underlay: Underlay) -> None:
    imp = underlay.impairments
    with pytest.raises(UserError):
        imp.loss(150)
    with pytest.raises(UserError):
        imp.rate(0)
    with pytest.raises(UserError, match="no link between"):
        imp.loss(5, link=("h1", "h2"))
    with pytest.raises(UserError):
        imp.crash_links("h9")
