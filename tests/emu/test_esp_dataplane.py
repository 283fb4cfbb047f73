"""The encrypted data path below the agent: DataPlane + EspTunnel in named namespaces.

Same two "underlay hosts" as test_dataplane.py (``osimt-u1``/``osimt-u2``), but the
network is encrypted: a TAP port on the sandbox bridge, frames sealed as ESP-in-UDP.
Pure frame helpers are tested first (no root needed).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_dataplane import IP1, IP2, PREFIX, U1, U2, pings, run_in, underlay  # noqa: F401

from overlaysim.agent import frames
from overlaysim.agent.dataplane import DataPlane, DataPlaneError, NetInfo, docker_mac
from overlaysim.core import esp
from overlaysim.core.mtu import derive_mtu

SECRET = NetInfo(
    name="secret", vni=4201, subnet="10.37.0.0/24", gateway="10.37.0.1", encrypted=True
)
KEYS = [esp.Key(tag, bytes([tag]) * 20) for tag in (11, 12, 13)]


# --- frames (pure) ---------------------------------------------------------------------


def _ipv4_tcp(payload_len: int, *, frag: int = 0, proto: int = 6) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    ip = bytes([0x45, 0]) + struct.pack("!HHHBB", 20 + 20 + payload_len, 1, frag, 64, proto)
    ip += b"\x00\x00" + socket.inet_aton("10.0.0.1") + socket.inet_aton("10.0.0.2")
    tcp = struct.pack("!HHIIBBHHH", 1, 2, 0, 0, 5 << 4, 0x18, 1000, 0, 0)
    return eth + ip + tcp + bytes(payload_len)


def test_rx_header_marks_tcp_and_udp_partial_and_big_tcp_as_gso() -> None:
    flags, gso, hdr_len, size, start, off = frames.VNET_HDR.unpack(
        frames.rx_vnet_header(_ipv4_tcp(100), 1450)
    )
    assert (flags, gso, start, off) == (frames.NEEDS_CSUM, frames.GSO_NONE, 34, 16)
    flags, gso, hdr_len, size, start, off = frames.VNET_HDR.unpack(
        frames.rx_vnet_header(_ipv4_tcp(60000), 1450)
    )
    assert (gso, hdr_len, size, start, off) == (frames.GSO_TCPV4, 54, 1450 - 40, 34, 16)
    udp = frames.VNET_HDR.unpack(frames.rx_vnet_header(_ipv4_tcp(100, proto=17), 1450))
    assert udp[0] == frames.NEEDS_CSUM and udp[5] == 6
    # fragments and other protocols keep their own checksums: the stack verifies them
    assert frames.rx_vnet_header(_ipv4_tcp(100, frag=0x2000), 1450) == bytes(10)
    assert frames.rx_vnet_header(_ipv4_tcp(100, proto=1), 1450) == bytes(10)
    assert frames.rx_vnet_header(b"\x00" * 14, 1450) == bytes(10)


def test_proxy_arp_reply_answers_the_request() -> None:
    sender_mac, sender_ip = bytes.fromhex("024200000002"), socket.inet_aton("10.0.0.2")
    target_ip = socket.inet_aton("10.0.0.3")
    request = (
        b"\xff" * 6 + sender_mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01"
        + sender_mac + sender_ip + bytes(6) + target_ip
    )  # fmt: skip
    assert frames.arp_target(request) == target_ip
    mac = frames.mac_bytes("02:42:0a:00:00:03")
    reply = frames.arp_reply(request, mac)
    assert reply[:6] == sender_mac and reply[6:12] == mac  # back to the asker, from target
    assert reply[20:22] == b"\x00\x02"  # op = reply
    assert reply[22:28] == mac and reply[28:32] == target_ip
    assert frames.arp_target(reply) is None  # a reply is not a request
    assert frames.arp_target(_ipv4_tcp(10)) is None


# --- the data path (root) ----------------------------------------------------------------


@pytest.fixture
def planes(underlay: None, tmp_path: Path) -> Iterator[tuple[DataPlane, DataPlane]]:  # noqa: F811
    d1 = DataPlane(host="u1", underlay_ip=IP1, host_netns=U1, prefix=PREFIX,
                   record_path=tmp_path / "u1.jsonl")  # fmt: skip
    d2 = DataPlane(host="u2", underlay_ip=IP2, host_netns=U2, prefix=PREFIX,
                   record_path=tmp_path / "u2.jsonl")  # fmt: skip
    try:
        yield d1, d2
    finally:
        d1.close()
        d2.close()


def _connect(d1: DataPlane, d2: DataPlane) -> tuple[str, str]:
    """Both planes get the ring; c1 on u1 and c2 on u2 on SECRET, each knowing the other."""
    for d in (d1, d2):
        d.install_keys(KEYS, 12)
    a, b = "10.37.0.2", "10.37.0.3"
    d1.attach("c1", SECRET, a, 24, docker_mac(a))
    d2.attach("c2", SECRET, b, 24, docker_mac(b))
    d1.add_remote("secret", b, docker_mac(b), IP2)
    d2.add_remote("secret", a, docker_mac(a), IP1)
    return a, b


def _nft_tables(ns: str) -> list[str]:
    out = run_in(ns, "nft", "-j", "list", "tables").stdout or '{"nftables": []}'
    return [i["table"]["name"] for i in json.loads(out)["nftables"] if "table" in i]


@pytest.mark.emu
def test_no_keys_no_network(planes: tuple[DataPlane, DataPlane]) -> None:
    d1, _ = planes
    with pytest.raises(DataPlaneError, match="no network keys"):
        d1.attach("c1", SECRET, "10.37.0.2", 24, docker_mac("10.37.0.2"))
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{PREFIX}-u1-")]


@pytest.mark.emu
def test_encrypted_ping_kernel_state_and_clean_close(
    planes: tuple[DataPlane, DataPlane],
) -> None:
    d1, d2 = planes
    a, b = _connect(d1, d2)
    c1 = d1.container_netns("c1")
    assert pings(c1, b)
    # the remote endpoint is the path's forwarding state, read back like kernel state
    fdb, neigh = d1.kernel_state("secret")
    assert fdb == {(docker_mac(b), IP2)} and neigh == {(b, docker_mac(b))}
    assert d1.reconcile("secret", {(b, docker_mac(b), IP2)}) == {"added": [], "removed": []}
    state = d1.crypto_state()
    net = state["networks"]["secret"]
    assert net["counters"]["tx_frames"] >= 2 and net["counters"]["rx_frames"] >= 2
    assert net["counters"]["arp_proxied"] >= 1  # c1 asked for b's MAC; nobody flooded it
    assert state["primary"] == 12 and state["keys"] == [11, 12, 13]
    # container MTU leaves room for ESP, and its GSO size fits one sealed datagram
    link = json.loads(run_in(c1, "ip", "-j", "-d", "link", "show", "eth0").stdout)[0]
    assert link["gso_max_size"] <= 65000
    # the core's rule (VXLAN 50 + ESP 45); the data plane used to give 1450 here
    assert link["mtu"] == derive_mtu(d1.underlay_mtu(), True) == 1405
    full = str(link["mtu"] - 28)  # a full-size packet, don't fragment: it must get through
    assert run_in(c1, "ping", "-c", "1", "-W", "2", "-M", "do", "-s", full, b).returncode == 0
    assert "osim_esp" in _nft_tables(U1)
    sandbox = d1.sandbox_netns(SECRET)
    d1.close()
    assert "osim_esp" not in _nft_tables(U1)
    assert sandbox not in os.listdir("/run/netns")
    assert subprocess.run(["ip", "netns", "exec", U1, "ss", "-uln", "sport", "= :4500"],
                          capture_output=True, text=True).stdout.count("4500") == 0  # fmt: skip


@pytest.mark.emu
def test_rotation_in_place_keeps_traffic(planes: tuple[DataPlane, DataPlane]) -> None:
    d1, d2 = planes
    _, b = _connect(d1, d2)
    c1 = d1.container_netns("c1")
    assert pings(c1, b)
    new = esp.Key(14, bytes([14]) * 20)
    d1.install_keys([*KEYS[1:], new], 13)  # one side ahead by one rotation
    assert pings(c1, b)
    d2.install_keys([*KEYS[1:], new], 13)
    assert pings(c1, b)
    counters = d2.crypto_state()["counters"]
    assert counters["drop_unknown_spi"] == 0 and counters["drop_auth_failed"] == 0


def _thread_cpu_ticks(tid: int) -> int:
    """User+system clock ticks of this process's thread ``tid`` (native id)."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.emu
def test_removing_one_network_leaves_the_others_idle(
    planes: tuple[DataPlane, DataPlane],
) -> None:
    import time

    d1, d2 = planes
    _connect(d1, d2)
    other = NetInfo(name="other", vni=4202, subnet="10.38.0.0/24", gateway="10.38.0.1",
                    encrypted=True)  # fmt: skip
    d1.attach("c3", other, "10.38.0.2", 24, docker_mac("10.38.0.2"))
    d1.detach("c3", "other")  # its send loop stops; SECRET's must not start spinning
    tunnel = d1.tunnel
    assert tunnel is not None
    threads = {"send loop": tunnel._nets[SECRET.vni].thread, "receive loop": tunnel._rx}
    hz = os.sysconf("SC_CLK_TCK")
    for what, thread in threads.items():
        assert thread is not None and thread.native_id is not None
        before, t0 = _thread_cpu_ticks(thread.native_id), time.monotonic()
        time.sleep(1.0)
        busy = (_thread_cpu_ticks(thread.native_id) - before) / hz / (time.monotonic() - t0)
        assert busy < 0.5, f"{what} busy {busy:.0%} of a core with no traffic"


_SERVER = """
import hashlib, socket
s = socket.create_server(("{ip}", 5601))
c, _ = s.accept()
h, n = hashlib.sha256(), 0
while chunk := c.recv(1 << 16):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest())
"""
_CLIENT = """
import hashlib, random, socket, time
data = random.Random(7).randbytes({size})
for _ in range(50):
    try:
        c = socket.create_connection(("{ip}", 5601), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
c.sendall(data)
c.close()
print(len(data), hashlib.sha256(data).hexdigest())
"""


def _ip_stats(ns: str) -> dict[str, int]:
    lines = [ln.split() for ln in run_in(ns, "cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [ln for ln in lines if ln[0] == "Ip:"][:2]
    return dict(zip(names[1:], map(int, values[1:]), strict=True))


@pytest.mark.emu
@pytest.mark.parametrize("mode", ["gso", "segments", "whole"])
def test_bulk_tcp_arrives_intact_and_unfragmented_per_segment(
    planes: tuple[DataPlane, DataPlane], mode: str
) -> None:
    """8 MB of TCP through the encrypted path: the bytes arrive intact in every send
    mode; sealed per segment nothing is IP-fragmented (sealed whole it is, which shows
    the counters see fragmentation), and with UDP GSO/GRO many packets share a call."""
    import sys

    d1, d2 = planes
    for d in (d1, d2):
        d.install_keys(KEYS, 12)
    agent_mtu = NetInfo(
        name="bulk", vni=4203, subnet="10.39.0.0/24", gateway="10.39.0.1", encrypted=True, mtu=1405
    )  # mtu: the agent's on a 1500 underlay (1500 - 95)
    a, b = "10.39.0.2", "10.39.0.3"
    d1.attach("c1", agent_mtu, a, 24, docker_mac(a))
    d2.attach("c2", agent_mtu, b, 24, docker_mac(b))
    d1.add_remote("bulk", b, docker_mac(b), IP2)
    d2.add_remote("bulk", a, docker_mac(a), IP1)
    for d in (d1, d2):
        assert d.tunnel is not None
        d.tunnel.send_mode = mode
    before = _ip_stats(U1), _ip_stats(U2)
    server = subprocess.Popen(
        ["ip", "netns", "exec", d2.container_netns("c2"), sys.executable, "-c",
         _SERVER.format(ip=b)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        sent = run_in(d1.container_netns("c1"), sys.executable, "-c",
                      _CLIENT.format(ip=b, size=8 << 20), timeout=60)  # fmt: skip
        got, _ = server.communicate(timeout=60)
    finally:
        server.kill()
    assert sent.returncode == 0, sent.stderr
    assert got.split() == sent.stdout.split()  # length and SHA-256
    after = _ip_stats(U1), _ip_stats(U2)
    frags = after[0]["FragCreates"] - before[0]["FragCreates"]
    reasm = after[1]["ReasmReqds"] - before[1]["ReasmReqds"]
    tx = d1.crypto_state()["networks"]["bulk"]["counters"]
    rx = d2.crypto_state()["counters"]
    assert {k: v for k, v in rx.items() if k.startswith("drop_") and k != "drop_flood" and v} == {}
    if mode == "whole":
        assert frags > 0 and reasm > 0
        return
    assert frags == 0 and reasm == 0
    assert tx["tx_frames"] > (8 << 20) // 1405  # one ESP packet per segment at least
    if mode == "gso":
        assert tx["tx_calls"] * 4 < tx["tx_frames"]  # several packets per send call
        assert rx["rx_calls"] * 4 < rx["rx_frames"]  # and per receive call (UDP GRO)
    else:
        assert tx["tx_calls"] == tx["tx_frames"]
