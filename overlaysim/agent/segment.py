"""TCP segmentation and coalescing of Ethernet frames in user space (TSO and GRO).

The encrypted data path reads GSO super-frames (up to ~64 KB) from its TAP device.
Sealed whole, such a frame becomes one UDP datagram the underlay must fragment into
~45 IP fragments and the peer must reassemble. :func:`tcp_segments` instead cuts it
into the wire-sized TCP segments the kernel's TSO would have produced, so each can be
sealed as its own ESP packet that fits the underlay MTU. :func:`coalesce` is the
receiving half: consecutive segments of one TCP flow are merged back into one
super-frame, written to the TAP with a GSO virtio-net header, so the receiving stack
handles one frame instead of ~45.

Pure functions over bytes; IPv4 (options allowed, no fragments) and IPv6 (no extension
headers) carrying TCP. Anything else is returned as it came (``None`` from
:func:`tcp_segments`: the caller sends the frame whole).

Checksums: segments leave with a correct IPv4 header checksum and, in the TCP checksum
field, the folded pseudo-header sum for their own length: the *partial* checksum a
TAP reader gets with ``NEEDS_CSUM`` (the payload part is never summed; the receiver
marks every TCP frame ``NEEDS_CSUM`` again, and the AEAD already proved the bytes).
"""

from __future__ import annotations

import struct

from overlaysim.agent.frames import (
    ETH_IPV4,
    ETH_IPV6,
    ETH_LEN,
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR,
)

_TCP = 6
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80
#: Flags that end a merge: a segment carrying one is the last of its super-frame.
_END = 0x01 | 0x02 | 0x04 | 0x08 | 0x20  # FIN, SYN, RST, PSH, URG
#: Largest IPv4 total length / IPv6 payload length of a merged frame.
MAX_MERGED = 65535 - 40


def _fold(total: int) -> int:
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(data: bytes) -> int:
    """Sum of the big-endian 16-bit words of ``data`` (even length)."""
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _layout(frame: bytes) -> tuple[bool, int, int, int] | None:
    """``(ipv4, l3 length, TCP header length, header end)`` of a TCP frame, else None."""
    kind = frame[12:14]
    if kind == ETH_IPV4 and len(frame) >= ETH_LEN + 40:
        ihl = (frame[ETH_LEN] & 0x0F) * 4
        if frame[ETH_LEN + 9] != _TCP or frame[ETH_LEN + 6] & 0x3F or frame[ETH_LEN + 7]:
            return None  # not TCP, or a fragment
        v4, l3 = True, ihl
    elif kind == ETH_IPV6 and len(frame) >= ETH_LEN + 60:
        if frame[ETH_LEN + 6] != _TCP:
            return None  # extension headers are not walked
        v4, l3 = False, 40
    else:
        return None
    tcp = ETH_LEN + l3
    if len(frame) < tcp + 20:
        return None
    thl = (frame[tcp + 12] >> 4) * 4
    if thl < 20 or len(frame) < tcp + thl:
        return None
    return v4, l3, thl, tcp + thl


def _pseudo_base(frame: bytes, v4: bool) -> int:
    # Addresses and protocol of the TCP pseudo-header; the length is added per segment.
    if v4:
        return _words(frame[ETH_LEN + 12 : ETH_LEN + 20]) + _TCP
    return _words(frame[ETH_LEN + 8 : ETH_LEN + 40]) + _TCP


def tcp_segments(frame: bytes, mss: int) -> list[bytes] | None:
    """Cut TCP super-frame ``frame`` into segments of at most ``mss`` payload bytes.

    Each segment gets the headers TSO would give it: IPv4 total length, consecutive
    IDs and a fresh header checksum (IPv6: payload length), the TCP sequence number
    advanced by the bytes before it, FIN and PSH on the last segment only, CWR on the
    first only, and the partial checksum for its length. Returns ``None`` when
    ``frame`` is not a TCP frame we can cut; a frame whose payload fits one segment
    comes back alone.
    """
    layout = _layout(frame)
    if layout is None or mss < 1:
        return None
    v4, l3, thl, hdr_end = layout
    payload_len = len(frame) - hdr_end
    if payload_len <= mss:
        return [frame]
    ip, tcp = ETH_LEN, ETH_LEN + l3
    head = bytearray(frame[:hdr_end])
    flags = frame[tcp + 13]
    seq0 = struct.unpack_from("!I", frame, tcp + 4)[0]
    pseudo = _pseudo_base(frame, v4)
    pack_into = struct.pack_into
    if v4:
        ip_id = struct.unpack_from("!H", frame, ip + 4)[0]
        struct.pack_into("!HH", head, ip + 2, 0, 0)  # total length, id
        struct.pack_into("!H", head, ip + 10, 0)  # header checksum
        ip_base = _words(bytes(head[ip:tcp]))
    out = []
    append = out.append
    last = (payload_len - 1) // mss
    view = memoryview(frame)
    for i in range(last + 1):
        start = hdr_end + i * mss
        size = mss if i < last else len(frame) - start
        seg_flags = flags if i == last else flags & ~(_FIN | _PSH)
        if i:
            seg_flags &= ~_CWR
        tcp_len = thl + size
        if v4:
            tot = l3 + tcp_len
            seg_id = (ip_id + i) & 0xFFFF
            pack_into("!HH", head, ip + 2, tot, seg_id)
            pack_into("!H", head, ip + 10, ~_fold(ip_base + tot + seg_id) & 0xFFFF)
        else:
            pack_into("!H", head, ip + 4, tcp_len)
        pack_into("!I", head, tcp + 4, (seq0 + i * mss) & 0xFFFFFFFF)
        head[tcp + 13] = seg_flags
        pack_into("!H", head, tcp + 16, _fold(pseudo + tcp_len))
        append(bytes(head) + view[start : start + size])
    return out


def coalesce(frames: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Merge runs of consecutive segments of one TCP flow; ``(vnet header, frame)`` each.

    Segments merge when their IP and TCP headers match except for the fields TSO
    changes (lengths, IPv4 ID and checksum, sequence number, TCP checksum, PSH/FIN/CWR),
    each continues the previous one's sequence, all but the last have the first one's
    size, and no earlier one carried FIN, SYN, RST, PSH or URG (those end a
    super-frame). A merged frame's header says GSO with the segments' payload size; a
    frame left alone comes with an empty header (the caller builds the usual one).
    """
    out: list[tuple[bytes, bytes]] = []
    run: list[bytes] = []
    layout: tuple[bool, int, int, int] | None = None
    next_seq = total = seg_size = hdr_end = tcp = 0
    flags = 0
    # Six invariant byte ranges (a0:b0 ... a5:b5) and the first segment's bytes there.
    a0 = b0 = a1 = b1 = a2 = b2 = a3 = b3 = a4 = b4 = a5 = b5 = 0
    r0 = r1 = r2 = r3 = r4 = r5 = b""
    unpack = struct.unpack_from
    for frame in frames:
        if layout is not None:
            size = len(frame) - hdr_end
            if (
                0 < size <= seg_size
                and len(run[-1]) - hdr_end == seg_size
                and total + size <= MAX_MERGED
                and not run[-1][tcp + 13] & _END
                and frame[tcp + 13] & ~(_FIN | _PSH) == flags
                and unpack("!I", frame, tcp + 4)[0] == next_seq
                and frame[a0:b0] == r0
                and frame[a2:b2] == r2
                and frame[a3:b3] == r3
                and frame[a1:b1] == r1
                and frame[a4:b4] == r4
                and frame[a5:b5] == r5
            ):
                run.append(frame)
                next_seq = (next_seq + size) & 0xFFFFFFFF
                total += size
                continue
        if run:
            out.append(_merge(run, layout))
        run = [frame]
        layout = _layout(frame)
        if layout is not None:
            v4, l3, thl, hdr_end = layout
            tcp = ETH_LEN + l3
            (a0, b0), (a1, b1), (a2, b2), (a3, b3), (a4, b4), (a5, b5) = _invariant(
                v4, tcp, hdr_end
            )
            r0, r1, r2 = frame[a0:b0], frame[a1:b1], frame[a2:b2]
            r3, r4, r5 = frame[a3:b3], frame[a4:b4], frame[a5:b5]
            flags = frame[tcp + 13] & ~(_FIN | _PSH | _CWR)
            seg_size = len(frame) - hdr_end
            total = l3 + thl + seg_size
            next_seq = (unpack("!I", frame, tcp + 4)[0] + seg_size) & 0xFFFFFFFF
    if run:
        out.append(_merge(run, layout))
    return out


def _invariant(v4: bool, tcp: int, hdr_end: int) -> tuple[tuple[int, int], ...]:
    """Byte ranges that every segment of one super-frame shares: all of the headers
    but lengths, IPv4 ID and checksum, TCP sequence number, flags and checksum (the
    flags are compared apart, since the first and last segments differ)."""
    ip = ETH_LEN
    if v4:
        head = ((0, ip + 2), (ip + 6, ip + 10), (ip + 12, tcp + 4))
    else:  # the empty range keeps the count at six
        head = ((0, ip + 4), (ip + 6, tcp + 4), (0, 0))
    return (*head, (tcp + 8, tcp + 13), (tcp + 14, tcp + 16), (tcp + 18, hdr_end))


def _merge(run: list[bytes], layout: tuple[bool, int, int, int] | None) -> tuple[bytes, bytes]:
    if len(run) == 1 or layout is None:
        return b"", run[0]
    v4, l3, thl, hdr_end = layout
    ip, tcp = ETH_LEN, ETH_LEN + l3
    head = bytearray(run[0][:hdr_end])
    payload = sum(len(f) for f in run) - len(run) * hdr_end
    head[tcp + 13] |= run[-1][tcp + 13] & (_FIN | _PSH)
    if v4:
        struct.pack_into("!H", head, ip + 2, l3 + thl + payload)
        struct.pack_into("!H", head, ip + 10, 0)
        struct.pack_into("!H", head, ip + 10, ~_fold(_words(bytes(head[ip:tcp]))) & 0xFFFF)
    else:
        struct.pack_into("!H", head, ip + 4, thl + payload)
    pseudo = _pseudo_base(run[0], v4)
    struct.pack_into("!H", head, tcp + 16, _fold(pseudo + thl + payload))
    frame = b"".join([bytes(head), *(memoryview(f)[hdr_end:] for f in run)])
    mss = len(run[0]) - hdr_end
    vnet = VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4 if v4 else GSO_TCPV6, hdr_end, mss, tcp, 16)
    return vnet, frame
