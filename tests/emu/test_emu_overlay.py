"""The overlay on Mininet with real agents: what "done" means for the data plane.

A 3-host star, ``local`` timing, two networks: ``a1`` on h1 (web), ``a2`` on h2 (web
and db), ``a3`` on h3 (db). Each test boots that testbed through the runner's
:class:`EmuWorld` (h1 serves the manager) and checks, after teardown, that nothing with
the run's prefix is left. As root; about 30 s for the module.
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import booted_world

from overlaysim.emu.probes import Endpoint, in_container, ping
from overlaysim.emu.runner import EmuWorld
from overlaysim.scenario.steps import Heal, Partition

SCENARIO = {
    "name": "overlay-done",
    "seed": 3,
    "duration": 60,
    "profile": "local",
    "topology": {"generator": "star", "hosts": 3},
    "managers": ["h1"],
    "networks": [
        {"name": "web", "subnet": "10.31.0.0/24", "attachable": True},
        {"name": "db", "subnet": "10.32.0.0/24", "attachable": True},
    ],
    "containers": [
        {"name": "a1", "host": "h1", "networks": ["web"]},
        {"name": "a2", "host": "h2", "networks": ["web", "db"]},
        {"name": "a3", "host": "h3", "networks": ["db"]},
    ],
}
HOSTS = ("h1", "h2", "h3")

_ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
conn, _ = s.accept()
data = b""
while not data.endswith(b"END"):
    chunk = conn.recv(65536)
    if not chunk:
        break
    data += chunk
conn.sendall(data)
conn.close()
"""

_ECHO_CLIENT = """
import socket, sys
payload = sys.argv[3].encode() * 200 + b"END"
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(payload)
back = b""
while len(back) < len(payload):
    chunk = s.recv(65536)
    if not chunk:
        break
    back += chunk
print("echoed" if back == payload else f"mismatch {len(back)}/{len(payload)}")
"""


@pytest.fixture
def world() -> Iterator[EmuWorld]:
    """The booted 3-host testbed; afterwards, nothing with its prefix may remain."""
    with booted_world(SCENARIO, 3) as w:
        yield w


def until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def ep(w: EmuWorld, name: str) -> Endpoint:
    return next(e for e in w.endpoints() if e.name == name)


def reaches(w: EmuWorld, src: str, dst: str, network: str) -> bool:
    return ping(w.underlay, ep(w, src), ep(w, dst).ips[network])


def drift(w: EmuWorld, host: str) -> dict[str, Any]:
    """Per network, what the kernel holds that the tables do not want, and vice versa."""
    tables = w.testbed.call(host, "tables")
    kernel = w.testbed.call(host, "kernel")
    out = {}
    for network, k in kernel.items():
        remote = [e["value"] for e in tables.get(network, {}).values() if e["owner"] != host]
        want_fdb = {(v["mac"], v["vtep"]) for v in remote}
        want_neigh = {(v["ip"], v["mac"]) for v in remote}
        have_fdb = {tuple(x) for x in k["fdb"]}
        have_neigh = {tuple(x) for x in k["neigh"]}
        if want_fdb != have_fdb or want_neigh != have_neigh:
            out[network] = {
                "fdb": (sorted(want_fdb ^ have_fdb)),
                "neigh": sorted(want_neigh ^ have_neigh),
            }
    return out


def kernel_ips(w: EmuWorld, host: str, network: str) -> set[str]:
    """Remote endpoint IPs programmed in ``host``'s sandbox for ``network``."""
    kernel = w.testbed.call(host, "kernel")
    return {ip for ip, _mac in kernel.get(network, {}).get("neigh", [])}


def vni(w: EmuWorld, network: str) -> int:
    return next(n["vni"] for n in w.networks if n["name"] == network)


# --- pcap -------------------------------------------------------------------------------


def vxlan_frames(path: Path) -> list[dict[str, Any]]:
    """Outer IPs, VNI and inner IPv4 (src, dst, proto, payload) of VXLAN frames in a pcap."""
    data = path.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    assert linktype == 1, f"expected Ethernet captures, got linktype {linktype}"
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[off : off + 16])[2]
        pkt = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 14 + 20 + 8 + 8 + 14 + 20 or pkt[12:14] != b"\x08\x00":
            continue
        ihl = (pkt[14] & 0x0F) * 4
        if pkt[14 + 9] != 17:
            continue
        udp = 14 + ihl
        dport = struct.unpack("!H", pkt[udp + 2 : udp + 4])[0]
        if dport != 4789:
            continue
        vx = udp + 8
        flags, vni_bytes = pkt[vx], pkt[vx + 4 : vx + 7]
        inner = vx + 8
        if pkt[inner + 12 : inner + 14] != b"\x08\x00":
            continue
        iip = inner + 14
        iihl = (pkt[iip] & 0x0F) * 4
        proto = pkt[iip + 9]
        payload = b""
        if proto == 6:
            tcp = iip + iihl
            payload = pkt[tcp + (pkt[tcp + 12] >> 4) * 4 :]
        frames.append(
            {
                "outer": (_ip(pkt[14 + 12 : 14 + 16]), _ip(pkt[14 + 16 : 14 + 20])),
                "flags": flags,
                "vni": int.from_bytes(vni_bytes, "big"),
                "inner": (_ip(pkt[iip + 12 : iip + 16]), _ip(pkt[iip + 16 : iip + 20])),
                "proto": proto,
                "payload": payload,
            }
        )
    return frames


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.emu
def test_tcp_between_hosts_rides_vxlan_with_the_network_vni(
    world: EmuWorld, tmp_path: Path
) -> None:
    u = world.underlay
    a1, a2 = ep(world, "a1"), ep(world, "a2")
    pcap = tmp_path / "h2.pcap"
    dump = u.popen(
        "h2",
        # immediate mode: packets still in the capture ring at SIGINT would be lost
        ["tcpdump", "-n", "--immediate-mode", "-i", "eth0", "-U", "-w", str(pcap)]
        + ["udp", "port", "4789"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = None
    try:
        assert dump.stderr is not None
        assert "listening" in dump.stderr.readline().decode()
        server = u.popen(
            "h2",
            [
                "ip",
                "netns",
                "exec",
                a2.netns,
                sys.executable,
                "-c",
                _ECHO_SERVER,
                a2.ips["web"],
                "7001",
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        out = in_container(
            u, a1, [sys.executable, "-c", _ECHO_CLIENT, a2.ips["web"], "7001", "overlay-probe"]
        )
        assert out.stdout.strip() == "echoed", out.stderr
        time.sleep(0.5)  # let the capture write the last frames
    finally:
        for proc in (server, dump):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # tcpdump flushes its file on SIGINT
                proc.wait(timeout=10)
    frames = vxlan_frames(pcap)
    data = [f for f in frames if f["proto"] == 6 and b"overlay-probe" in f["payload"]]
    assert data, f"no TCP payload inside the {len(frames)} VXLAN frames captured"
    h1, h2 = u.underlay_ip("h1"), u.underlay_ip("h2")
    for f in data:
        assert f["vni"] == vni(world, "web")
        assert f["flags"] == 0x08  # the I flag: a valid VNI follows
        assert {f["outer"], f["inner"]} <= {(h1, h2), (h2, h1), (a1.ips["web"], a2.ips["web"]),
                                            (a2.ips["web"], a1.ips["web"])}  # fmt: skip
    assert {f["outer"] for f in data} == {(h1, h2), (h2, h1)}  # both directions on the wire


@pytest.mark.emu
def test_kernel_fdb_and_neighbours_match_the_tables(world: EmuWorld) -> None:
    for host in HOSTS:
        until(lambda h=host: not drift(world, h), 10, f"{host}'s kernel to match its tables")
    a1, a2, a3 = (ep(world, n) for n in ("a1", "a2", "a3"))
    assert kernel_ips(world, "h1", "web") == {a2.ips["web"]}
    assert kernel_ips(world, "h2", "web") == {a1.ips["web"]}
    assert kernel_ips(world, "h2", "db") == {a3.ips["db"]}
    assert kernel_ips(world, "h3", "db") == {a2.ips["db"]}
    # a host only holds sandboxes for networks it has containers on
    assert set(world.testbed.call("h1", "kernel")) == {"web"}
    assert set(world.testbed.call("h3", "kernel")) == {"db"}


@pytest.mark.emu
def test_networks_are_isolated_and_a_two_network_container_reaches_both(
    world: EmuWorld,
) -> None:
    until(lambda: reaches(world, "a1", "a2", "web"), 10, "a1 -> a2 over web")
    assert reaches(world, "a2", "a1", "web")
    assert reaches(world, "a2", "a3", "db")
    assert reaches(world, "a3", "a2", "db")
    a1, a3 = ep(world, "a1"), ep(world, "a3")
    assert not ping(world.underlay, a1, a3.ips["db"], attempts=1)
    assert not ping(world.underlay, a3, a1.ips["web"], attempts=1)
    assert not ping(world.underlay, a1, ep(world, "a2").ips["db"], attempts=1)


@pytest.mark.emu
def test_a_crash_removes_endpoints_everywhere_and_a_restart_restores_them(
    world: EmuWorld,
) -> None:
    old = ep(world, "a2")
    until(lambda: kernel_ips(world, "h1", "web") == {old.ips["web"]}, 10, "a2 on h1")
    world.crash("h2")
    until(lambda: not kernel_ips(world, "h1", "web"), 20, "a2 gone from h1's kernel")
    until(lambda: not kernel_ips(world, "h3", "db"), 20, "a2 gone from h3's kernel")
    members = world.testbed.call("h1", "members")
    assert members["h2"]["state"] == "dead"

    world.start_host("h2", "node_restart")
    new = ep(world, "a2")
    until(lambda: kernel_ips(world, "h1", "web") == {new.ips["web"]}, 20, "a2 back on h1")
    until(lambda: kernel_ips(world, "h3", "db") == {new.ips["db"]}, 20, "a2 back on h3")
    until(lambda: reaches(world, "a1", "a2", "web"), 10, "a1 -> a2 after the restart")
    assert reaches(world, "a3", "a2", "db")
    for host in HOSTS:
        until(lambda h=host: not drift(world, h), 10, f"{host}'s kernel to match its tables")


@pytest.mark.emu
def test_partition_then_heal_converges_with_nothing_lost(world: EmuWorld) -> None:
    world.attach("a4", "h3", "web")  # h3 joins web too, so web spans the partition
    a2_web, a4_web = ep(world, "a2").ips["web"], ep(world, "a4").ips["web"]
    until(lambda: kernel_ips(world, "h1", "web") == {a2_web, a4_web}, 10, "web on h1")
    world.apply(Partition(at=0.0, groups=(("h1",), ("h2", "h3"))))
    # a change on each side while they cannot talk: h1 adds b1, h2 drops a2 from web
    world.attach("b1", "h1", "web")
    world.detach("a2", "web")
    b1_web = ep(world, "b1").ips["web"]
    time.sleep(3.0)
    assert a2_web in kernel_ips(world, "h1", "web")  # h1 cannot know yet
    assert b1_web not in kernel_ips(world, "h3", "web")
    world.apply(Heal(at=0.0))
    assert world.skipped == []

    def everyone_alive() -> bool:
        for host in HOSTS:
            members = world.testbed.call(host, "members")
            if any(members[h]["state"] != "alive" for h in HOSTS):
                return False
        return True

    until(everyone_alive, 30, "every agent to see every other alive after the heal")
    until(lambda: kernel_ips(world, "h1", "web") == {a4_web}, 30, "h1: a2 gone, a4 kept")
    a1_web = ep(world, "a1").ips["web"]
    until(lambda: kernel_ips(world, "h3", "web") == {a1_web, b1_web}, 30, "h3: b1 arrived")
    for host in ("h1", "h3"):
        assert set(world.testbed.call(host, "tables")["web"]) == {"a1", "a4", "b1"}
    for host in HOSTS:
        until(lambda h=host: not drift(world, h), 10, f"{host}'s kernel to match its tables")
    until(lambda: reaches(world, "b1", "a4", "web"), 10, "b1 -> a4 across the healed link")
    assert reaches(world, "a2", "a3", "db")
