"""Ethernet frame helpers for the encrypted data path: virtio-net headers and proxy ARP.

Pure functions over bytes. A TAP device opened with ``IFF_VNET_HDR`` prefixes every
frame with a 10-byte ``virtio_net_hdr`` (native byte order). Reading, it tells us the
frame may be a GSO super-frame (up to ~64 KB) whose checksum is only partial; the
wire format carries just the Ethernet frame, so the receiver rebuilds the header from
the frame itself (:func:`rx_vnet_header`).
"""

from __future__ import annotations

import struct

#: struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80

ETH_LEN = 14
ETH_IPV4 = b"\x08\x00"
ETH_IPV6 = b"\x86\xdd"
ETH_ARP = b"\x08\x06"
BROADCAST = b"\xff" * 6
_TCP = 6
_UDP = 17
_NO_VNET = bytes(VNET_HDR_LEN)

#: ARP request/reply for IPv4 over Ethernet: htype 1, ptype 0x0800, hlen 6, plen 4.
_ARP_IPV4 = b"\x00\x01\x08\x00\x06\x04"


def rx_vnet_header(frame: bytes, mtu: int) -> bytes:
    """The ``virtio_net_hdr`` to write ``frame`` into a TAP device with.

    TCP and UDP (unfragmented IPv4, IPv6 without extension headers) are marked
    ``NEEDS_CSUM`` at their transport header: the sender read them with a partial
    checksum, and the AEAD already proved the frame intact. A TCP frame longer than the
    network MTU is a GSO super-frame: the kernel segments it at ``gso_size`` if it must.
    Anything else gets an all-zero header (the stack checks it as usual).
    """
    kind = frame[12:14]
    if kind == ETH_IPV4 and len(frame) >= ETH_LEN + 20:
        ihl = (frame[ETH_LEN] & 0x0F) * 4
        if frame[ETH_LEN + 6] & 0x3F or frame[ETH_LEN + 7]:  # MF flag or fragment offset
            return _NO_VNET
        proto = frame[ETH_LEN + 9]
        l3, gso = ihl, GSO_TCPV4
    elif kind == ETH_IPV6 and len(frame) >= ETH_LEN + 40:
        proto = frame[ETH_LEN + 6]
        l3, gso = 40, GSO_TCPV6
    else:
        return _NO_VNET
    start = ETH_LEN + l3
    if proto == _TCP and len(frame) >= start + 20:
        tcp_len = (frame[start + 12] >> 4) * 4
        if len(frame) > ETH_LEN + mtu:
            size = max(mtu - l3 - tcp_len, 1)
            return VNET_HDR.pack(NEEDS_CSUM, gso, start + tcp_len, size, start, 16)
        return VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, start, 16)
    if proto == _UDP and len(frame) >= start + 8:
        return VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, start, 6)
    return _NO_VNET


def arp_target(frame: bytes) -> bytes | None:
    """The 4-byte target IPv4 address of an ARP request, or None for anything else."""
    if (
        len(frame) >= ETH_LEN + 28
        and frame[12:14] == ETH_ARP
        and frame[ETH_LEN : ETH_LEN + 6] == _ARP_IPV4
        and frame[ETH_LEN + 6 : ETH_LEN + 8] == b"\x00\x01"
    ):
        return frame[ETH_LEN + 24 : ETH_LEN + 28]
    return None


def arp_reply(request: bytes, mac: bytes) -> bytes:
    """The reply to ARP ``request`` saying its target address is at ``mac``."""
    sender_mac = request[ETH_LEN + 8 : ETH_LEN + 14]
    sender_ip = request[ETH_LEN + 14 : ETH_LEN + 18]
    target_ip = request[ETH_LEN + 24 : ETH_LEN + 28]
    return (
        sender_mac + mac + ETH_ARP + _ARP_IPV4 + b"\x00\x02"
        + mac + target_ip + sender_mac + sender_ip
    )  # fmt: skip


def mac_bytes(mac: str) -> bytes:
    """``"02:42:0a:00:00:02"`` as 6 bytes."""
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    """6 bytes as ``"02:42:0a:00:00:02"``."""
    return ":".join(f"{b:02x}" for b in raw)
