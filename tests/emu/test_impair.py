"""Impairments on a live 3-host star: loss, per-link loss, partitions, rate, crashes.

One underlay serves most of the module (built once, ~1 s); the ``u`` fixture checks it
is healthy before each test and clears impairments, heals and restores links after it.
Loss is measured one way with UDP datagrams: the receiver counts what arrives. The
rendering tests at the top need neither root nor Mininet.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import emulation_or_skip, running_underlay

from overlaysim.emu.impair import UnsupportedImpairment
from overlaysim.emu.net import Underlay
from overlaysim.emu.netem import EgressShape, qdisc_argv
from overlaysim.emu.nftrules import numgen_drop, render_table
from overlaysim.emu.rootns import list_nft_tables
from overlaysim.errors import UserError
from overlaysim.scenario.topology import Link, Topology

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


@pytest.fixture(scope="module")
def underlay() -> Iterator[Underlay]:
    with running_underlay(STAR) as shared:
        yield shared


@pytest.fixture
def u(underlay: Underlay) -> Iterator[Underlay]:
    """The shared star, checked healthy before and reset after each test."""
    for a, b in [("h1", "h2"), ("h2", "h3"), ("h3", "h1")]:
        assert pings(underlay, a, b), f"{a} cannot reach {b} before the test"
    yield underlay
    imp = underlay.impairments
    imp.clear()
    imp.heal()
    for h in underlay.hosts:
        imp.restore_links(h)


# --- rendering (pure) ---------------------------------------------------------------------


def test_qdisc_commands_for_each_shape() -> None:
    assert qdisc_argv("eth0", EgressShape(), 1500) == []
    (tbf,) = qdisc_argv("eth0", EgressShape(rate_mbps=20), 1500)
    assert tbf[:8] == ["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:"]
    assert tbf[8:] == ["tbf", "rate", "20000kbit", "burst", "10000", "latency", "50ms"]
    # Slow links still get a bucket of two full frames.
    assert qdisc_argv("eth0", EgressShape(rate_mbps=1), 9000)[0][12] == str(2 * 9014)
    netem, child = qdisc_argv("eth0", EgressShape(rate_mbps=5, delay_ms=40, jitter_ms=5), 1500)
    assert netem[5:] == ["root", "handle", "1:", "netem", "delay", "40000us", "5000us"]
    assert child[5:9] == ["parent", "1:1", "handle", "10:"] and child[9] == "tbf"
    (only_delay,) = qdisc_argv("eth0", EgressShape(delay_ms=0.5), 1500)
    assert only_delay[-3:] == ["netem", "delay", "500us"]


def test_rendered_table_is_one_atomic_replacement() -> None:
    drop10 = numgen_drop(10)
    assert drop10[0]["match"]["right"] == 1000  # out of 10000
    assert numgen_drop(0.01)[0]["match"]["right"] == 1
    chains = [{"dev": "osima3s1-2", "hook": "ingress", "rules": [drop10]}]
    cmds = json.loads(render_table("osim_a3", chains, ["172.30.0.3"]))["nftables"]
    # add + delete + add: the table is reset in the same transaction, whatever it held.
    assert [next(iter(c)) for c in cmds[:3]] == ["add", "delete", "add"]
    assert cmds[3]["add"]["set"]["elem"] == ["172.30.0.3"]
    chain = cmds[4]["add"]["chain"]
    assert (chain["hook"], chain["dev"], chain["name"]) == (
        "ingress",
        "osima3s1-2",
        "ing_osima3s1_2",
    )
    assert cmds[5]["add"]["rule"]["chain"] == "ing_osima3s1_2"


# --- on a live star --------------------------------------------------------------------


def pings(u: Underlay, src: str, dst: str) -> bool:
    argv = ["ping", "-c", "2", "-i", "0.1", "-W", "0.5", u.underlay_ip(dst)]
    return u.cmd(src, argv).returncode == 0


def udp_loss(u: Underlay, src: str, dst: str, count: int = 300) -> float:
    """Fraction of ``count`` datagrams from ``src`` that ``dst`` did not receive."""
    ip = u.underlay_ip(dst)
    rx = u.popen(
        dst,
        [sys.executable, "-c", _RECEIVER, ip, "9000", "0.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert rx.stdout is not None
    assert rx.stdout.readline().strip() == "ready"
    u.cmd(src, [sys.executable, "-c", _SENDER, ip, "9000", str(count)], check=True)
    out, _ = rx.communicate(timeout=10)
    return 1.0 - int(out.strip()) / count


def gso_max_segs(root_ifname: str) -> int:
    out = subprocess.run(
        ["ip", "-j", "-d", "link", "show", root_ifname], capture_output=True, text=True
    )
    return int(json.loads(out.stdout)[0]["gso_max_segs"])


def iperf_mbps(u: Underlay, src: str, dst: str, seconds: float = 2.0) -> float:
    """TCP throughput from ``src`` to ``dst`` in Mbit/s, as the receiver saw it."""
    ip = u.underlay_ip(dst)
    server = u.popen(dst, ["iperf3", "-s", "-1", "-B", ip], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):  # until the server listens
            out = u.cmd(src, ["iperf3", "-c", ip, "-t", str(seconds), "-J"])
            # iperf3 3.12 exits 0 even when it cannot connect; the JSON says so.
            result = json.loads(out.stdout) if out.stdout.strip() else {"error": out.stderr}
            if "error" not in result:
                return result["end"]["sum_received"]["bits_per_second"] / 1e6
            time.sleep(0.1)
        raise AssertionError(f"iperf3 client failed: {result['error']}")
    finally:
        server.kill()
        server.wait()


@pytest.mark.emu
def test_loss_everywhere_is_end_to_end(u: Underlay) -> None:
    assert udp_loss(u, "h1", "h2") < 0.02
    u.impairments.loss(10)
    lossy = udp_loss(u, "h1", "h2")
    assert 0.03 <= lossy <= 0.25, lossy
    assert "numgen" in u.mechanisms["loss"]
    # Senders into a lossy ingress stop sending GSO super-packets while it is active.
    port = u.links_between("h2", "s1")[0].b.ifname
    assert gso_max_segs(port) == 1
    u.impairments.clear()
    assert gso_max_segs(port) > 1
    assert udp_loss(u, "h1", "h2") < 0.02


@pytest.mark.emu
def test_link_loss_only_hits_that_link(u: Underlay) -> None:
    u.impairments.loss(40, link=("h1", "s1"))
    out_of_h1 = udp_loss(u, "h1", "h2")
    into_h1 = udp_loss(u, "h3", "h1")
    elsewhere = udp_loss(u, "h2", "h3")
    assert 0.25 <= out_of_h1 <= 0.55, out_of_h1
    assert 0.25 <= into_h1 <= 0.55, into_h1
    assert elsewhere < 0.02, elsewhere
    u.impairments.clear(link=("s1", "h1"))  # either order names the link
    assert udp_loss(u, "h1", "h2") < 0.02


@pytest.mark.emu
def test_the_end_of_a_timed_rate_leaves_the_loss_on_that_link(u: Underlay) -> None:
    """Regression: an untimed loss, then a timed rate on the same link; the rate's end
    (``clear(kind="rate")``, as the planner emits it) used to remove the loss too."""
    u.impairments.loss(40, link=("h1", "s1"))
    u.impairments.rate(200, link=("h1", "s1"))
    u.impairments.clear(("h1", "s1"), kind="rate")
    assert 0.2 < udp_loss(u, "h1", "h2") < 0.6
    u.impairments.clear(("h1", "s1"), kind="loss")
    assert udp_loss(u, "h1", "h2") < 0.02


@pytest.mark.emu
def test_partition_blocks_across_groups_and_heal_restores(u: Underlay) -> None:
    imp = u.impairments
    imp.partition([["h1", "h2"], ["h3"]])
    assert pings(u, "h1", "h2") and pings(u, "h2", "h1")
    assert not pings(u, "h1", "h3")
    assert not pings(u, "h3", "h2")
    imp.partition([["h1"], ["h2", "h3"]])  # a new partition replaces the old one
    assert pings(u, "h2", "h3") and not pings(u, "h1", "h2")
    imp.heal()
    assert pings(u, "h1", "h3") and pings(u, "h3", "h1")
    with pytest.raises(UserError, match="more than one"):
        imp.partition([["h1", "h2"], ["h2"]])


@pytest.mark.emu
def test_unlisted_hosts_are_isolated_like_in_the_simulator(u: Underlay) -> None:
    u.impairments.partition([["h1", "h2"]])
    assert pings(u, "h1", "h2")
    assert not pings(u, "h3", "h1")


@pytest.mark.emu
def test_crash_links_silences_a_host(u: Underlay) -> None:
    imp = u.impairments
    imp.crash_links("h2")
    assert not pings(u, "h1", "h2")
    assert not pings(u, "h2", "h3")
    assert pings(u, "h1", "h3")
    imp.restore_links("h2")
    assert pings(u, "h1", "h2") and pings(u, "h2", "h3")


@pytest.mark.emu
def test_rate_limits_throughput(u: Underlay) -> None:
    unlimited = iperf_mbps(u, "h1", "h2")
    u.impairments.rate(20)
    limited = iperf_mbps(u, "h1", "h2")
    print(f"\nTCP h1->h2: {unlimited:.0f} Mbit/s unlimited, {limited:.1f} Mbit/s at rate 20")
    assert limited <= 20 * 1.1
    assert limited >= 20 * 0.5  # limited, not broken
    assert unlimited > 2 * limited
    out = u.cmd("h1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout
    assert "tbf" in out and "20Mbit" in out
    u.impairments.clear()
    assert "1Gbit" in u.cmd("h1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout


@pytest.mark.emu
def test_delay_is_carried_by_netem_or_the_delay_line_never_skipped(u: Underlay) -> None:
    imp = u.impairments
    mech = imp.delay_mechanism()
    if mech == "none":
        with pytest.raises(UnsupportedImpairment, match="delay needs sch_netem"):
            imp.delay(20)
        assert "unsupported" in u.mechanisms["delay"]
        return
    imp.delay(5, link=("h1", "s1"))
    if mech == "netem":
        assert "netem" in u.cmd("h1", ["tc", "qdisc", "show", "dev", "eth0"]).stdout
    else:
        assert "NFQUEUE delay line" in u.mechanisms["delay"]
        rules = u.cmd("h1", ["iptables", "-w", "-S", "OSIM_DELAY"]).stdout
        assert f"-s {u.underlay_ip('h2')}/32 -j NFQUEUE" in rules
    # h1-h2 crosses h1-s1 once each way: 2 x (0.5 + 5) + 2 x 0.5 ms of the access links.
    assert _rtt_ms(u, "h1", "h2") == pytest.approx(12.0, rel=0.15, abs=1.5)


def _rtt_ms(u: Underlay, a: str, b: str, count: int = 5) -> float:
    out = u.cmd(a, ["ping", "-U", "-q", "-c", str(count), "-i", "0.2", u.underlay_ip(b)]).stdout
    summary = out.strip().splitlines()[-1]  # rtt min/avg/max/mdev = 1.0/2.0/3.0/0.1 ms
    return float(summary.split("=")[1].split("/")[0])


@pytest.mark.emu
def test_bad_arguments_are_user_errors(u: Underlay) -> None:
    imp = u.impairments
    with pytest.raises(UserError):
        imp.loss(150)
    with pytest.raises(UserError):
        imp.rate(0)
    with pytest.raises(UserError, match="no link between"):
        imp.loss(5, link=("h1", "h2"))
    with pytest.raises(UserError):
        imp.crash_links("h9")


@pytest.mark.emu
def test_switch_link_loss_uses_the_root_table_and_goes_at_stop() -> None:
    emulation_or_skip()
    line = Topology(
        name="line",
        hosts=("h1", "h2", "h3"),
        switches=("s1", "s2"),
        links=(
            Link(a="h1", b="s1"),
            Link(a="s1", b="s2"),
            Link(a="h2", b="s2"),
            Link(a="h3", b="s2"),
        ),
    )
    u = Underlay(line)
    u.build()
    u.start()
    try:
        assert u.plan is not None
        table = f"osim_{u.plan.tag}"
        assert pings(u, "h1", "h2") and pings(u, "h2", "h3")
        u.impairments.loss(40, link=("s2", "s1"))
        assert table in {name for _f, name in list_nft_tables()}
        across = udp_loss(u, "h2", "h1")
        same_switch = udp_loss(u, "h2", "h3")
        assert 0.25 <= across <= 0.55, across
        assert same_switch < 0.02, same_switch
    finally:
        u.stop()
    assert table not in {name for _f, name in list_nft_tables()}


@pytest.mark.emu
def test_switch_loops_run_stp_and_still_forward() -> None:
    emulation_or_skip()
    ring = Topology(
        name="ring",
        hosts=("h1", "h2", "h3"),
        switches=("s1", "s2", "s3"),
        links=(
            Link(a="h1", b="s1"),
            Link(a="h2", b="s2"),
            Link(a="h3", b="s3"),
            Link(a="s1", b="s2"),
            Link(a="s2", b="s3"),
            Link(a="s3", b="s1"),
        ),
    )
    u = Underlay(ring, shape=False)
    u.build()
    u.start()
    try:
        assert u.plan is not None and u.plan.stp
        states = {
            p: open(f"/sys/class/net/{p}/brport/state").read().strip() for p in u.plan.root_ports()
        }
        assert "4" in states.values()  # one ring port blocks: no broadcast storm
        assert pings(u, "h1", "h2") and pings(u, "h2", "h3") and pings(u, "h3", "h1")
        assert "not applied" in u.mechanisms["link_bandwidth"]
    finally:
        u.stop()
