"""User-space TSO/GRO of the encrypted data path: cut super-frames, merge them back."""

from __future__ import annotations

import os
import struct

import pytest

from overlaysim.agent import frames
from overlaysim.agent.segment import MAX_MERGED, coalesce, tcp_segments

MAC = bytes.fromhex("02420a000003") + bytes.fromhex("02420a000002")


def _checksum_ok(header: bytes) -> bool:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _tcp_v4(payload: bytes, *, seq: int = 1000, flags: int = 0x18, ip_id: int = 7) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 5201, 40000, seq, 55, 8 << 4, flags, 500, 0xABCD, 0)
    tcp += bytes.fromhex("0101080a0000000100000002")  # NOP NOP timestamps
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), ip_id, 0x4000, 64, 6, 0,
        bytes([10, 42, 0, 2]), bytes([10, 42, 0, 3]),
    )  # fmt: skip
    total = sum(struct.unpack("!10H", ip))
    total = (total & 0xFFFF) + (total >> 16)
    ip = ip[:10] + struct.pack("!H", ~total & 0xFFFF) + ip[12:]
    return MAC + frames.ETH_IPV4 + ip + tcp + payload


def _tcp_v6(payload: bytes, *, seq: int = 1000, flags: int = 0x18) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 5201, 40000, seq, 55, 5 << 4, flags, 500, 0, 0)
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp) + len(payload), 6, 64, b"a" * 16, b"b" * 16)
    return MAC + frames.ETH_IPV6 + ip + tcp + payload


def test_segments_carry_what_tso_would_and_merge_back_to_the_super_frame():
    payload = os.urandom(64000)
    frame = _tcp_v4(payload, flags=0x18 | 0x80 | 0x01)  # ACK PSH CWR FIN
    segs = tcp_segments(frame, 1348)
    assert segs is not None and len(segs) == -(-64000 // 1348)
    hdr = 14 + 20 + 32
    assert b"".join(s[hdr:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert struct.unpack_from("!H", s, 16)[0] == len(s) - 14  # IPv4 total length
        assert struct.unpack_from("!H", s, 18)[0] == 7 + i  # consecutive IDs
        assert _checksum_ok(s[14:34])
        assert struct.unpack_from("!I", s, 38)[0] == 1000 + i * 1348
        flags = s[47]
        assert bool(flags & 0x80) == (i == 0)  # CWR on the first only
        assert bool(flags & 0x09) == (i == len(segs) - 1)  # PSH, FIN on the last only
        assert s[14 + 20 + 20 : hdr] == frame[14 + 20 + 20 : hdr]  # options untouched
    ((vnet, merged),) = coalesce(segs)
    flags, gso, hdr_len, gso_size, csum_start, csum_off = frames.VNET_HDR.unpack(vnet)
    assert (flags, gso, hdr_len, gso_size, csum_start, csum_off) == (
        frames.NEEDS_CSUM, frames.GSO_TCPV4, hdr, 1348, 34, 16,
    )  # fmt: skip
    # Identical to the original except for the TCP checksum field (partial, recomputed).
    assert merged[:50] == frame[:50] and merged[52:] == frame[52:]
    assert _checksum_ok(merged[14:34])


def test_ipv6_segments_and_merge():
    payload = os.urandom(5000)
    frame = _tcp_v6(payload)
    segs = tcp_segments(frame, 1200)
    assert segs is not None and len(segs) == 5
    assert [struct.unpack_from("!H", s, 18)[0] for s in segs] == [1220] * 4 + [20 + 200]
    ((vnet, merged),) = coalesce(segs)
    assert frames.VNET_HDR.unpack(vnet)[1] == frames.GSO_TCPV6
    assert merged[:70] == frame[:70] and merged[72:] == frame[72:]


def test_frames_that_are_not_tcp_super_frames_are_left_alone():
    small = _tcp_v4(b"x" * 100)
    assert tcp_segments(small, 1348) == [small]
    arp = MAC + frames.ETH_ARP + bytes(28)
    assert tcp_segments(arp, 1348) is None
    udp = bytearray(_tcp_v4(b"x" * 3000))
    udp[23] = 17
    assert tcp_segments(bytes(udp), 1348) is None
    assert coalesce([arp, small]) == [(b"", arp), (b"", small)]


def test_coalesce_keeps_flows_gaps_and_ends_apart():
    a = tcp_segments(_tcp_v4(os.urandom(4000), seq=1), 1000)
    b = tcp_segments(_tcp_v4(os.urandom(3000), seq=1 + 4000, ip_id=20), 1000)
    assert a is not None and b is not None
    # a ends with PSH: b starts a new frame even though its sequence continues.
    assert [len(f) for _, f in coalesce(a + b)] == [14 + 52 + 4000, 14 + 52 + 3000]
    # A missing segment splits the run; the rest still merge where they can.
    got = coalesce(a[:1] + a[2:])
    assert [len(f) for _, f in got] == [14 + 52 + 1000, 14 + 52 + 2000]
    # Another flow in between is not merged into the first.
    other = bytearray(a[1])
    other[36] ^= 1  # source port
    got = coalesce([a[0], bytes(other), a[1]])
    assert [v for v, _ in got] == [b"", b"", b""]


def test_coalesce_never_builds_a_frame_beyond_the_ip_limit():
    segs = []
    for i in range(60):  # 60 x 1400 bytes > 64 KB, no PSH anywhere
        segs.append(_tcp_v4(bytes(1400), seq=1 + i * 1400, flags=0x10, ip_id=i))
    merged = coalesce(segs)
    assert len(merged) == 2
    assert all(len(f) - 14 <= MAX_MERGED for _, f in merged)
    assert sum(len(f) - 66 for _, f in merged) == 60 * 1400


@pytest.mark.parametrize("mss", [0, -5])
def test_bad_mss_is_refused(mss):
    assert tcp_segments(_tcp_v4(bytes(3000)), mss) is None
