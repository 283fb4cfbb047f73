"""Encrypted overlays on Mininet with real agents: what "done" means for issue 4.

A 3-host star, ``local`` timing. Network ``secure`` is encrypted (user-space ESP over
UDP 4500), ``plain`` is not. ``s1`` (h1) and ``s2`` (h2) sit on ``secure``; h3 joins
later, and in one test without the cluster's gossip key. The control plane is sealed
with a key made for the run (the runner does that whenever a network is encrypted).
One testbed serves the whole module (about a minute as root); the tests run in file
order and leave nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import booted_world
from test_emu_overlay import _ECHO_CLIENT, _ECHO_SERVER, until

from overlaysim.emu.probes import Endpoint
from overlaysim.emu.runner import EmuWorld

SCENARIO = {
    "name": "encrypted-done",
    "seed": 5,
    "duration": 600,
    "profile": "local",
    "topology": {"generator": "star", "hosts": 3},
    "managers": ["h1"],
    "networks": [
        {"name": "secure", "subnet": "10.35.0.0/24", "attachable": True, "encrypted": True},
        {"name": "plain", "subnet": "10.36.0.0/24", "attachable": True},
    ],
    "containers": [
        {"name": "s1", "host": "h1", "networks": ["secure"]},
        {"name": "s2", "host": "h2", "networks": ["secure", "plain"]},
    ],
    # h3 is not part of the initial cluster (the event lies beyond every test)
    "events": [{"at": 599, "action": "join", "host": "h3"}],
}
MARKER = "OVERLAYSIM-SECRET-MARKER"
ESP = 4500

_SINK = """
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
conn, _ = s.accept()
h, n = hashlib.sha256(), 0
while True:
    chunk = conn.recv(1 << 16)
    if not chunk:
        break
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""

_SOURCE = """
import hashlib, random, socket, sys, time
total, seconds = int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(7)
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
h, sent, chunk = hashlib.sha256(), 0, 1 << 16
start = time.monotonic()
while sent < total:
    data = rng.randbytes(min(chunk, total - sent))
    s.sendall(data)
    h.update(data)
    sent += len(data)
    ahead = sent / total * seconds - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)  # paced, so the transfer spans the key rotations
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(sent, h.hexdigest(), flush=True)
"""


@pytest.fixture(scope="module")
def world() -> Iterator[EmuWorld]:
    """The booted testbed (its control plane sealed with a key made here); afterwards
    nothing with its prefix may remain."""
    with booted_world(SCENARIO, 5, cluster_key=os.urandom(32)) as w:
        yield w


def ep(w: EmuWorld, name: str) -> Endpoint:
    return next(e for e in w.endpoints() if e.name == name)


def crypto(w: EmuWorld, host: str) -> dict[str, Any]:
    return w.testbed.call(host, "crypto")


def secure_counters(w: EmuWorld, host: str) -> dict[str, int]:
    return crypto(w, host)["networks"]["secure"]["counters"]


def vni(w: EmuWorld, network: str) -> int:
    return next(n["vni"] for n in w.networks if n["name"] == network)


def in_ns(w: EmuWorld, e: Endpoint, *argv: str, **kw: Any) -> subprocess.Popen[Any]:
    return w.underlay.popen(e.host, ["ip", "netns", "exec", e.netns, *argv], **kw)


def stop(*procs: subprocess.Popen[Any] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # tcpdump flushes its file on SIGINT
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def capture(w: EmuWorld, host: str, pcap: Path, *bpf: str) -> subprocess.Popen[Any]:
    dump = w.underlay.popen(
        host,
        ["tcpdump", "-n", "--immediate-mode", "-i", "eth0", "-U", "-w", str(pcap), *bpf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert dump.stderr is not None
    assert "listening" in dump.stderr.readline().decode()
    return dump


def udp_payloads(path: Path) -> list[tuple[str, str, int, bytes]]:
    """(src, dst, dport, payload) of unfragmented or first-fragment UDP packets in a pcap."""
    data = path.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[off : off + 16])[2]
        pkt = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 42 or pkt[12:14] != b"\x08\x00" or pkt[23] != 17:
            continue
        if struct.unpack("!H", pkt[20:22])[0] & 0x1FFF:
            continue  # a later fragment: no UDP header
        ihl = (pkt[14] & 0x0F) * 4
        udp = 14 + ihl
        dport = struct.unpack("!H", pkt[udp + 2 : udp + 4])[0]
        src, dst = socket.inet_ntoa(pkt[26:30]), socket.inet_ntoa(pkt[30:34])
        out.append((src, dst, dport, pkt[udp + 8 :]))
    return out


def echo(w: EmuWorld, server: Endpoint, client: Endpoint, network: str, port: int) -> str:
    srv = in_ns(w, server, sys.executable, "-c", _ECHO_SERVER, server.ips[network], str(port),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == b"ready"
        out = w.underlay.cmd(
            client.host,
            ["ip", "netns", "exec", client.netns, sys.executable, "-c", _ECHO_CLIENT,
             server.ips[network], str(port), MARKER],
            timeout=60,
        )  # fmt: skip
        return out.stdout.strip() or out.stderr.strip()
    finally:
        stop(srv)


def inject(w: EmuWorld, host: str, dst: str, port: int, payloads: list[bytes]) -> None:
    """Send raw UDP payloads from ``host``'s underlay address (inside the run only)."""
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(({w.underlay.underlay_ip(host)!r}, 0))\n"
        "for hexed in sys.argv[1:]:\n"
        f"    s.sendto(bytes.fromhex(hexed), ({dst!r}, {port}))\n"
    )
    out = w.underlay.cmd(host, [sys.executable, "-c", script, *(p.hex() for p in payloads)])
    assert out.returncode == 0, out.stderr


# --- the data path ------------------------------------------------------------------------


@pytest.mark.emu
def test_tcp_crosses_encrypted_network_and_the_wire_shows_only_esp(
    world: EmuWorld, tmp_path: Path
) -> None:
    s1, s2 = ep(world, "s1"), ep(world, "s2")
    until(lambda: crypto(world, "h1")["networks"]["secure"]["sas"]["outbound"], 10, "h1's SAs")
    pcap = tmp_path / "wire.pcap"
    dump = capture(world, "h2", pcap, "udp")
    try:
        assert echo(world, s2, s1, "secure", 7101) == "echoed"
    finally:
        stop(dump)
    raw = pcap.read_bytes()
    assert MARKER.encode() not in raw  # the payload never crossed in clear
    packets = udp_payloads(pcap)
    h1, h2 = world.underlay.underlay_ip("h1"), world.underlay.underlay_ip("h2")
    esp = [p for p in packets if p[2] == ESP]
    assert {(p[0], p[1]) for p in esp} == {(h1, h2), (h2, h1)}  # both directions sealed
    assert not [p for p in packets if p[2] == 4789]  # no cleartext VXLAN at all

    # tshark, given the SAs and keys, decodes the same capture and finds the marker
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.fail("tshark is required to check that captures decode")
    ring = world.testbed.manager_call("keys")
    material = {k["tag"]: k["material"] for k in ring["keys"]}  # hex over the control API
    opts = ["-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE"]  # fmt: skip
    for host, local in (("h1", h1), ("h2", h2)):
        for sa in crypto(world, host)["networks"]["secure"]["sas"]["outbound"]:
            opts += ["-o", f'uat:esp_sa:"IPv4","{local}","{sa["peer"]}","{sa["spi"]:#010x}",'
                     f'"AES-GCM with 16 octet ICV [RFC4106]","0x{material[sa["tag"]]}","NULL",""']  # fmt: skip
    out = subprocess.run([tshark, "-r", str(pcap), "-V", *opts], capture_output=True,
                         text=True, timeout=120, check=True).stdout  # fmt: skip
    assert "Next header: Ethernet (0x8f)" in out
    assert "[correct]" in out and "[incorrect]" not in out  # every ICV verified
    assert MARKER.encode().hex() in out.replace(":", "")  # the inner TCP payload, decrypted


@pytest.mark.emu
def test_rotate_keys_mid_transfer_loses_nothing(world: EmuWorld) -> None:
    s1, s2 = ep(world, "s1"), ep(world, "s2")
    before = world.testbed.manager_call("keys")
    total, seconds = 48 << 20, 6.0
    sink = in_ns(world, s2, sys.executable, "-c", _SINK, s2.ips["secure"], "7102",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    source = None
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
        source = in_ns(world, s1, sys.executable, "-c", _SOURCE, s2.ips["secure"], "7102",
                       str(total), str(seconds), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(1.5)
        world.rotate_keys()
        time.sleep(1.5)
        world.rotate_keys()
        sent = source.communicate(timeout=120)
        got = sink.communicate(timeout=30)
    finally:
        stop(source, sink)
    assert source.returncode == 0, sent[1]
    assert sent[0].split() == got[0].split()  # same byte count and SHA-256
    assert int(got[0].split()[0]) == total
    after = world.testbed.manager_call("keys")
    assert after["generation"] == before["generation"] + 2
    assert after["primary"] not in {k["tag"] for k in before["keys"][:2]}
    for host in ("h1", "h2"):
        state = crypto(world, host)
        assert state["generation"] == after["generation"]
        assert state["primary"] == after["primary"]  # every node sends with the new key
    rotations = [json.loads(r[7]) for r in world.events.rows if r[2] == "rotate_keys"]
    assert len(rotations) == 2 and all(not r["late"] for r in rotations)


@pytest.mark.emu
def test_forged_replayed_flipped_and_wrong_key_packets_are_dropped_and_counted(
    world: EmuWorld, tmp_path: Path
) -> None:
    from overlaysim.core import esp

    s1, s2 = ep(world, "s1"), ep(world, "s2")
    h1, h2 = world.underlay.underlay_ip("h1"), world.underlay.underlay_ip("h2")
    pcap = tmp_path / "one.pcap"
    dump = capture(world, "h2", pcap, "udp", "dst", "port", str(ESP), "and", "src", "host", h1)
    try:
        assert echo(world, s2, s1, "secure", 7103) == "echoed"
    finally:
        stop(dump)
    genuine = next(p[3] for p in udp_payloads(pcap) if len(p[3]) < 1400)
    spi, seq = struct.unpack("!II", genuine[:8])
    flipped_seq = genuine[:4] + struct.pack("!I", seq ^ 0x40000000) + genuine[8:]
    body = bytearray(flipped_seq)
    body[24] ^= 0x01  # and one ciphertext bit
    ring = world.testbed.manager_call("keys")
    secure = vni(world, "secure")
    wrong = esp.SecurityAssociation(
        esp.derive_spi(h1, h2, ring["primary"], secure), esp.Key(ring["primary"], os.urandom(20))
    )
    forged_under_wrong_key = wrong.seal(b"\x02" * 14 + MARKER.encode(), 2**31)
    retired = esp.SecurityAssociation(
        esp.derive_spi(h1, h2, 0xDEAD, secure), esp.Key(0xDEAD, os.urandom(20))
    )
    under_unknown_key = retired.seal(b"\x02" * 14 + MARKER.encode(), 1)
    s2_mac = bytes.fromhex(
        world.testbed.call("h2", "tables")["secure"]["s2"]["value"]["mac"].replace(":", "")
    )
    inner = s2_mac + b"\x02\x42\x0a\x23\x00\x63" + b"\x08\x00" + MARKER.encode()
    clear_vxlan = b"\x08\x00\x00\x00" + secure.to_bytes(3, "big") + b"\x00" + inner

    def totals() -> tuple[dict[str, int], dict[str, int], int]:
        c = crypto(world, "h2")
        return (
            c["networks"]["secure"]["counters"],
            c["counters"],
            c["clear_vxlan_dropped"].get(str(secure), 0),
        )

    net0, all0, clear0 = totals()
    inject(world, "h1", h2, ESP, [genuine])  # replay
    inject(world, "h1", h2, ESP, [flipped_seq, bytes(body)])  # bit flips
    inject(world, "h1", h2, ESP, [forged_under_wrong_key])  # right SPI, wrong key
    inject(world, "h1", h2, ESP, [under_unknown_key])  # a key not in the ring
    inject(world, "h1", h2, ESP, [b"garbage"])  # not even ESP
    inject(world, "h1", h2, 4789, [clear_vxlan])  # cleartext VXLAN for the encrypted VNI
    time.sleep(0.5)
    net1, all1, clear1 = totals()
    assert net1["drop_replay"] - net0["drop_replay"] == 1
    assert net1["drop_auth_failed"] - net0["drop_auth_failed"] == 3
    assert all1["drop_unknown_spi"] - all0["drop_unknown_spi"] == 1
    assert all1["drop_bad_packet"] - all0["drop_bad_packet"] == 1
    assert clear1 - clear0 == 1
    assert net1["rx_frames"] == net0["rx_frames"]  # none of them was delivered
    # and the agents shrugged it all off: traffic still flows
    assert echo(world, s2, s1, "secure", 7104) == "echoed"


@pytest.mark.emu
def test_plain_and_encrypted_networks_stay_apart(world: EmuWorld) -> None:
    state = crypto(world, "h2")
    assert set(state["networks"]) == {"secure"}  # plain uses kernel VXLAN, no TAP
    kernel = world.testbed.call("h2", "kernel")
    assert set(kernel) == {"secure", "plain"}
    s1 = ep(world, "s1")
    assert s1.ips.keys() == {"secure"}


@pytest.mark.emu
def test_node_without_the_gossip_key_cannot_join(world: EmuWorld) -> None:
    tb = world.testbed
    tb.start_agent("h3", ["h1"], keyed=False)
    try:
        tb.wait_ready(["h3"])
        before = tb.call("h1", "status")["counters"]["auth_errors"]
        until(lambda: tb.call("h1", "status")["counters"]["auth_errors"] > before, 15,
              "h1 to reject h3's unauthenticated packets")  # fmt: skip
        time.sleep(3)  # several join retries and probe rounds
        members = tb.call("h1", "members")
        assert members.get("h3", {}).get("state") != "alive"
        own = tb.call("h3", "members")
        assert [n for n, m in own.items() if m["state"] == "alive"] == ["h3"]
        # nor can it fetch network keys: the manager channel is sealed too
        with pytest.raises(Exception, match="manager"):
            tb.call("h3", "keys")
    finally:
        tb.kill_agent("h3")
        tb.wait_exit("h3")


@pytest.mark.emu
def test_a_restarted_node_talks_again_without_a_rotation(world: EmuWorld, tmp_path: Path) -> None:
    """A crashed agent comes back with fresh SAs (sequence numbers from 1) under the
    same keys: its peers reset their replay windows for it, and its IVs differ from
    the previous boot's, so no nonce repeats under a key."""
    s1, s2 = ep(world, "s1"), ep(world, "s2")
    h2 = world.underlay.underlay_ip("h2")
    generation = world.testbed.manager_call("keys")["generation"]
    before, after = tmp_path / "before.pcap", tmp_path / "after.pcap"
    dump = capture(world, "h1", before, "udp", "dst", "port", str(ESP), "and", "src", "host", h2)
    try:  # s2 sends enough that its sequence numbers run far past the replay window
        sink = in_ns(world, s1, sys.executable, "-c", _SINK, s1.ips["secure"], "7105",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
        src = world.underlay.cmd("h2", ["ip", "netns", "exec", s2.netns, sys.executable, "-c",
                                        _SOURCE, s1.ips["secure"], "7105", str(32 << 20), "1"],
                                 timeout=60)  # fmt: skip
        assert src.returncode == 0, src.stderr
        sink.communicate(timeout=30)
    finally:
        stop(dump)
    world.crash("h2")
    time.sleep(1)
    world.start_host("h2", "node_restart")
    s2 = until(lambda: next((e for e in world.endpoints() if e.name == "s2" and e.netns), None),
               20, "s2 back on h2")  # fmt: skip
    dump = capture(world, "h1", after, "udp", "dst", "port", str(ESP), "and", "src", "host", h2)
    try:
        t0 = time.monotonic()
        until(lambda: echo(world, s2, s1, "secure", 7106) == "echoed", 30, "echo after restart")
        took = time.monotonic() - t0
    finally:
        stop(dump)
    assert took < 15  # generous: a blackholed peer would never recover without a rotation
    assert world.testbed.manager_call("keys")["generation"] == generation  # no rotation used
    old = {(p[3][:4], p[3][8:16]) for p in udp_payloads(before)}
    new = {(p[3][:4], p[3][8:16]) for p in udp_payloads(after)}
    # well past the 256-packet replay window; the exact count follows TCP's super-frame sizes
    assert len(old) > 300 and new
    assert not old & new  # no (SPI, IV) pair, i.e. no nonce under a key, used twice
