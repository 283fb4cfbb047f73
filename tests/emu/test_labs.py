"""The workshop labs, driven through the same functions the ``overlaysim lab`` CLI calls.

One lab testbed (a star of 3 hosts, ``local`` timing) is brought up by
:func:`overlaysim.lab.session.lab_session` for the module; each test runs one lab's
commands and checks their effect. Afterwards nothing with the run's prefix may remain
(``ip netns``, ``ip -o link``). As root; well under two minutes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import STAR3, emulation_or_skip, link_names, netns_names

from overlaysim.lab import commands as cmds
from overlaysim.lab.commands import Lab, LabError
from overlaysim.lab.vxlan import decode, decode_esp, read_pcap

emu = pytest.mark.emu


def _state(members_text: str, node: str) -> str:
    """``node``'s state in :func:`cmds.members` output ("" when it is not listed)."""
    for row in members_text.splitlines():
        cols = row.split()
        if cols[:1] == [node]:
            return cols[1]
    return ""


def _until(check, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The running 3-host lab with network ``web`` and containers c1@h1, c2@h2, c3@h3."""
    emulation_or_skip()
    from overlaysim.lab.session import lab_session

    topo = tmp_path_factory.mktemp("lab") / "star3.yaml"
    topo.write_text(STAR3)
    prefix = ""
    with lab_session(topo, profile="local", say=False) as lb:
        prefix = lb.testbed.prefix
        yield lb
    assert prefix
    assert not {n for n in netns_names() if n.startswith(prefix)}
    assert not [n for n in link_names() if prefix in n]


def _ready(lab: Lab) -> None:
    """Lab 1's state: network ``web`` and c1, c2, c3 on h1, h2, h3 (idempotent)."""
    if "web" not in cmds.network_ls(lab):
        cmds.network_create(lab, "web", subnet="10.40.0.0/24", attachable=True)
    for c, h in (("c1", "h1"), ("c2", "h2"), ("c3", "h3")):
        if c not in lab.containers and h not in lab.crashed:
            cmds.run(lab, c, "web", h)


@emu
def test_lab1_first_overlay(lab: Lab) -> None:
    out = cmds.network_create(lab, "web", subnet="10.40.0.0/24", attachable=True)
    assert "VNI 4096" in out and "10.40.0.0/24" in out
    ls = cmds.network_ls(lab)
    assert "web" in ls and "4096" in ls
    assert "10.40.0." in cmds.run(lab, "c1", "web", "h1")
    cmds.run(lab, "c2", "web", "h2")
    cmds.run(lab, "c3", "web", "h3")
    assert _until(lambda: cmds.ping_received(cmds.ping(lab, "c1", "c2", 2)) == 2)
    assert cmds.ping_received(cmds.ping(lab, "c3", "c1", 2)) == 2
    with pytest.raises(LabError, match="no container"):
        cmds.ping(lab, "c1", "nosuch")


@emu
def test_lab2_gossip_converges(lab: Lab) -> None:
    _ready(lab)
    c2 = lab.containers["c2"]
    ip2 = c2.ips["web"]
    vtep2 = lab.underlay.underlay_ip("h2")
    members = cmds.members(lab, "h3")
    assert [_state(members, h) for h in ("h1", "h2", "h3")] == ["alive"] * 3
    # h1 holds c2's entry with h2 as owner and VTEP, and has programmed it in its kernel.
    assert _until(lambda: ip2 in cmds.tables(lab, "h1"))
    row = next(r for r in cmds.tables(lab, "h1").splitlines() if r.strip().startswith("c2 "))
    assert row.split()[1] == "h2" and row.split()[-1] == vtep2
    fdb = cmds.fdb(lab, "h1", "web")
    assert f"dst {vtep2}" in fdb and f"neigh {ip2} lladdr" in fdb
    assert f"dst {lab.underlay.underlay_ip('h1')}" not in fdb  # only remote endpoints
    # The wire: VXLAN between the two VTEPs with the network's VNI and the inner IPs.
    ip1 = lab.containers["c1"].ips["web"]
    out = cmds.capture(lab, "h2", 4, during=lambda: cmds.ping(lab, "c1", "c2", 3))
    pkts = [ln for ln in out.splitlines() if "VNI" in ln]
    assert pkts, out
    assert all("VNI 4096" in p for p in pkts)
    assert any(f"ICMP {ip1} > {ip2}" in p for p in pkts)
    # Removing a container deletes its entry everywhere.
    cmds.run(lab, "tmp", "web", "h3")
    assert _until(lambda: "tmp " in cmds.tables(lab, "h1"))
    cmds.rm(lab, "tmp")
    assert _until(lambda: "tmp " not in cmds.tables(lab, "h1"))


@emu
def test_lab3_loss_and_crash(lab: Lab) -> None:
    _ready(lab)
    try:
        with pytest.raises(LabError, match="at most 99.99"):
            cmds.loss(lab, 100)
        cmds.loss(lab, 99.99)
        assert cmds.ping_received(cmds.ping(lab, "c1", "c3", 2)) == 0
    finally:
        assert "removed" in cmds.loss(lab, 0)
    assert _until(lambda: cmds.ping_received(cmds.ping(lab, "c1", "c3", 1)) == 1)
    ip2 = lab.containers["c2"].ips["web"]
    assert "crashed" in cmds.crash(lab, "h2")
    assert "c2" not in lab.containers
    with pytest.raises(LabError, match="crashed"):
        cmds.members(lab, "h2")

    def h2_gone() -> bool:
        return (
            _state(cmds.members(lab, "h1"), "h2") in ("dead", "")
            and ip2 not in cmds.tables(lab, "h1")
            and ip2 not in cmds.fdb(lab, "h3", "web")
        )

    assert _until(h2_gone, timeout=30)
    assert "restarted" in cmds.restart(lab, "h2")

    def h2_back() -> bool:
        return _state(cmds.members(lab, "h1"), "h2") == "alive"

    assert _until(h2_back, timeout=30)
    cmds.run(lab, "c2", "web", "h2")
    assert _until(lambda: cmds.ping_received(cmds.ping(lab, "c1", "c2", 1)) == 1)


@emu
def test_lab4_partition_and_heal(lab: Lab) -> None:
    _ready(lab)
    assert _until(lambda: cmds.ping_received(cmds.ping(lab, "c1", "c3", 1)) == 1)
    try:
        out = cmds.partition(lab, [["h1", "h2"], ["h3"]])
        assert "h1,h2 | h3" in out
        assert cmds.ping_received(cmds.ping(lab, "c1", "c3", 2)) == 0
        assert cmds.ping_received(cmds.ping(lab, "c1", "c2", 2)) == 2  # same side
    finally:
        cmds.heal(lab)
    assert _until(lambda: cmds.ping_received(cmds.ping(lab, "c1", "c3", 1)) == 1, timeout=30)


def _sealed_frames(crypto_text: str, way: str) -> int:
    """Frames on the ``sealed`` or ``opened`` line of :func:`cmds.crypto` output."""
    m = re.search(rf"^\s+{way}\s+(\d+) frames", crypto_text, re.M)
    assert m, crypto_text
    return int(m.group(1))


def _esp_lines(capture_text: str) -> list[str]:
    return [ln for ln in capture_text.splitlines() if " ESP SPI " in ln]


@emu
def test_lab5_price_of_encryption(lab: Lab) -> None:
    _ready(lab)
    out = cmds.network_create(lab, "secret", subnet="10.41.0.0/24", attachable=True, encrypted=True)
    assert "encrypted (ESP over UDP 4500)" in out
    secret_vni = int(re.search(r"VNI (\d+)", out).group(1))  # type: ignore[union-attr]
    # 1500-byte underlay: VXLAN's 50 bytes and the ESP-in-UDP budget of 45 come off
    assert "MTU 1405" in cmds.run(lab, "e1", "secret", "h1")
    assert "MTU 1405" in cmds.run(lab, "e2", "secret", "h2")
    assert _until(lambda: cmds.ping_received(cmds.ping(lab, "e1", "e2", 1)) == 1)
    vtep1, vtep2 = lab.underlay.underlay_ip("h1"), lab.underlay.underlay_ip("h2")
    ip1, ip2 = lab.containers["e1"].ips["secret"], lab.containers["e2"].ips["secret"]

    # The wire carries ESP between the VTEPs, no VXLAN, and no container address.
    out = cmds.capture(lab, "h2", 4, during=lambda: cmds.ping(lab, "e1", "e2", 3))
    assert "3 received" in out
    esp = _esp_lines(out)
    assert len(esp) == 4 and "4 ESP packet(s) on h2 eth0 (UDP 4500)" in out, out
    assert not [ln for ln in out.splitlines() if "VNI" in ln]
    assert {ln.split()[0] for ln in esp} == {vtep1, vtep2}  # both directions
    packets = "\n".join(esp)
    assert ip1 not in packets and ip2 not in packets
    before = cmds.crypto(lab, "h1")
    old_primary = re.search(r"primary (0x[0-9a-f]{8})", before).group(1)  # type: ignore[union-attr]
    assert all(f"network secret, key {old_primary}" in ln for ln in esp), out

    # Both ends sealed and opened frames; nothing was dropped on the way.
    for host in ("h1", "h2"):
        text = cmds.crypto(lab, host)
        assert f"network secret (VNI {secret_vni})" in text
        assert _sealed_frames(text, "sealed") > 0 and _sealed_frames(text, "opened") > 0
        assert "auth failed 0, replay 0, unknown SPI 0" in text
        assert f"cleartext VXLAN with VNI {secret_vni} dropped: 0" in text
    assert "h3 has no encrypted data path: it holds no network keys" in cmds.crypto(lab, "h3")

    # Rotation: the former next key becomes primary on every agent, and traffic goes on
    # under it (the capture names the key each packet was sealed with).
    out = cmds.rotate(lab)
    m = re.search(r"generation (\d+) -> (\d+), primary (0x\w+) -> (0x\w+)", out)
    assert m, out
    gen, new_primary = int(m.group(2)), m.group(4)
    assert int(m.group(1)) + 1 == gen and m.group(3) == old_primary != new_primary
    for host in lab.hosts:
        assert f"{host}: installed generation {gen}, primary {new_primary}" in out, out
    assert f"primary {new_primary}" in cmds.crypto(lab, "h2")
    out = cmds.capture(lab, "h1", 4, during=lambda: cmds.ping(lab, "e2", "e1", 3))
    assert "3 received" in out  # no ping lost across the rotation
    esp = _esp_lines(out)
    assert len(esp) == 4 and all(f"key {new_primary}" in ln for ln in esp), out

    # The last container gone, the encrypted path of the network goes with it.
    cmds.rm(lab, "e1")
    cmds.rm(lab, "e2")
    assert "no container on an encrypted network here" in cmds.crypto(lab, "h1")


@emu
def test_cli_script_uses_the_same_commands(lab: Lab, tmp_path: Path, capfd) -> None:  # type: ignore[no-untyped-def]
    """The Mininet CLI parses, calls the commands and prints; bad input does not raise."""
    from overlaysim.lab.cli import LabCLI

    _ready(lab)
    script = tmp_path / "s.txt"
    script.write_text(
        "network ls\nmembers h1\nc1 ping c2 1\nfdb h9\nloss lots\n"
        "network create x --opt encrypted --attachable\nkeys rotate\ncrypto h3\nkeys now\n"
        "pingall\n"
    )
    with open("/dev/null") as devnull:
        LabCLI(lab, stdin=devnull, script=str(script))
    out = capfd.readouterr().out
    assert "web" in out and "4096" in out
    assert "membership seen by h1" in out
    assert "1 received" in out
    assert "no host 'h9'" in out
    assert "PERCENT must be a number" in out
    assert re.search(r"network x created: .*, attachable, encrypted \(ESP over UDP 4500\)", out)
    assert re.search(r"keys rotated at the manager: generation \d+ -> \d+", out)
    assert "encrypted data path on h3 (ESP in UDP 4500" in out  # keys, no container
    assert "keys: usage: keys rotate" in out
    # Mininet's own pingall runs on the adapter (its output goes through Mininet's
    # logger, which pytest may capture anywhere, so only check that it did not fail).
    assert "*** pingall:" not in out


def _frame(vni: int, inner_proto: int = 1) -> bytes:
    """An outer Ethernet/IPv4/UDP 4789/VXLAN frame around an inner IPv4 packet."""
    inner_ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, inner_proto, 0, 0, 10, 9, 0, 2, 10, 9, 0, 3])
    inner = bytes.fromhex("02420a09000302420a0900020800") + inner_ip + bytes(8)
    vxlan = bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"
    udp = (54321).to_bytes(2, "big") + (4789).to_bytes(2, "big") + bytes(4) + vxlan + inner
    ip = bytes([0x45, 0, 0, 20 + len(udp), 0, 0, 0, 0, 64, 17, 0, 0, 172, 30, 0, 1, 172, 30, 0, 2])
    return bytes(6) + bytes(6) + b"\x08\x00" + ip + udp


def test_vxlan_decoder_reads_vni_and_inner_addresses() -> None:
    """The decoder behind ``capture`` (no root needed)."""
    p = decode(_frame(0x012345))
    assert p is not None
    assert (p.outer_src, p.outer_dst, p.vni) == ("172.30.0.1", "172.30.0.2", 0x012345)
    assert (p.inner_kind, p.inner_src, p.inner_dst) == ("ICMP", "10.9.0.2", "10.9.0.3")
    assert p.inner_src_mac == "02:42:0a:09:00:02"
    assert decode(_frame(7)[:-40]) is None  # inner frame cut short
    # Not VXLAN: another UDP port, or the VNI flag unset.
    other = bytearray(_frame(5))
    other[36:38] = (53).to_bytes(2, "big")
    assert decode(bytes(other)) is None
    noflag = bytearray(_frame(5))
    noflag[42] = 0
    assert decode(bytes(noflag)) is None
    # A pcap stream with two records, the second cut short (capture stopped mid-packet).
    f = _frame(4096)
    head = bytes.fromhex("d4c3b2a1") + (2).to_bytes(2, "little") + (4).to_bytes(2, "little")
    head += bytes(8) + (65535).to_bytes(4, "little") + (1).to_bytes(4, "little")
    rec = bytes(8) + len(f).to_bytes(4, "little") * 2 + f
    frames = read_pcap(head + rec + rec[:30])
    assert frames == [f]
    with pytest.raises(ValueError, match="not a pcap"):
        read_pcap(b"x" * 40)


def _esp_frame(spi: int, seq: int, payload: int = 64, frag: int = 0) -> bytes:
    """An outer Ethernet/IPv4/UDP 4500 frame around an ESP packet of ``payload`` bytes."""
    esp = spi.to_bytes(4, "big") + seq.to_bytes(4, "big") + bytes(payload - 8)
    udp = (4500).to_bytes(2, "big") * 2 + (8 + len(esp)).to_bytes(2, "big") + bytes(2) + esp
    ip = bytes([0x45, 0, 0, 0, 0, 0]) + frag.to_bytes(2, "big")
    ip += bytes([64, 17, 0, 0, 172, 30, 0, 1, 172, 30, 0, 2])
    return bytes(12) + b"\x08\x00" + ip + udp


def test_esp_decoder_reads_spi_sequence_and_length() -> None:
    """``capture``'s ESP decoder reads only the cleartext header (no root needed)."""
    p = decode_esp(_esp_frame(0x9AC3D10F, 17, payload=1453))
    assert p is not None
    assert (p.outer_src, p.outer_dst, p.spi, p.seq, p.length) == (
        "172.30.0.1", "172.30.0.2", 0x9AC3D10F, 17, 1453,
    )  # fmt: skip
    assert not p.fragmented
    assert p.line() == "172.30.0.1 > 172.30.0.2  ESP SPI 0x9ac3d10f seq 17 len 1453"
    first = decode_esp(_esp_frame(0x1234, 2, frag=0x2000))  # more fragments follow
    assert first is not None and first.fragmented and "IP-fragmented" in first.line()
    assert decode_esp(_esp_frame(0x1234, 3, frag=0x2000 | 185)) is None  # a later fragment
    assert decode_esp(_esp_frame(0, 1)) is None  # RFC 3948 non-ESP marker
    assert decode_esp(_frame(4096)) is None  # VXLAN is not ESP ...
    assert decode(_esp_frame(0x1234, 1)) is None  # ... nor ESP VXLAN
    other = bytearray(_esp_frame(0x1234, 1))
    other[36:38] = (4501).to_bytes(2, "big")
    assert decode_esp(bytes(other)) is None
