"""Decode VXLAN packets from a pcap byte stream (what ``tcpdump -w -`` writes).

Only what the workshop shows: outer source and destination (the VTEPs), the VNI, and
the inner frame's addresses (IPv4 with its protocol, or ARP). Anything that does not
parse is reported as such rather than guessed at.

Encrypted networks put ESP in UDP on the wire instead (RFC 3948, port 4500):
:func:`decode_esp` reads only its cleartext header (SPI, sequence number) and length;
the frame inside stays sealed.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

VXLAN_PORT = 4789
#: UDP port of encrypted networks' ESP (the agent's default, ``overlayd --esp-port``).
ESP_PORT = 4500
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}
_PCAP_MAGIC_NS = {b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
_LINKTYPE_ETHERNET = 1
_ETH_IPV4 = 0x0800
_ETH_ARP = 0x0806
_PROTOS = {1: "ICMP", 6: "TCP", 17: "UDP"}


@dataclass(frozen=True, slots=True, kw_only=True)
class VxlanPacket:
    """One captured VXLAN packet: the outer VTEPs, the VNI and the inner frame."""

    outer_src: str
    outer_dst: str
    vni: int
    inner_src_mac: str
    inner_dst_mac: str
    #: "ICMP", "TCP", "UDP", "ARP" or "ethertype 0x...." for anything else.
    inner_kind: str
    inner_src: str = ""
    inner_dst: str = ""

    def line(self) -> str:
        """One human-readable line."""
        inner = f"{self.inner_src} > {self.inner_dst}" if self.inner_src else ""
        return (
            f"{self.outer_src} > {self.outer_dst}  VNI {self.vni}  "
            f"inner {self.inner_kind} {inner} ({self.inner_src_mac} > {self.inner_dst_mac})"
        ).replace("  (", " (")


@dataclass(frozen=True, slots=True, kw_only=True)
class EspPacket:
    """One captured ESP-in-UDP packet: the VTEPs and ESP's cleartext header."""

    outer_src: str
    outer_dst: str
    spi: int
    seq: int
    #: Bytes of ESP (header, IV, ciphertext, ICV): the UDP payload's length.
    length: int
    #: The underlay fragmented the datagram (a GSO super-frame); this is its first part.
    fragmented: bool = False

    def line(self) -> str:
        """One human-readable line."""
        frag = ", IP-fragmented" if self.fragmented else ""
        return (
            f"{self.outer_src} > {self.outer_dst}  ESP SPI {self.spi:#010x} seq {self.seq} "
            f"len {self.length}{frag}"
        )


def read_pcap(data: bytes) -> list[bytes]:
    """The frames of a classic pcap file (Ethernet link type); a truncated tail is ignored."""
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = _PCAP_MAGIC.get(magic) or _PCAP_MAGIC_NS.get(magic)
    if endian is None:
        raise ValueError(f"not a pcap stream (magic {magic.hex()})")
    linktype = struct.unpack(f"{endian}I", data[20:24])[0]
    if linktype != _LINKTYPE_ETHERNET:
        raise ValueError(f"pcap link type {linktype}: only Ethernet (1) is decoded")
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(f"{endian}I", data[off + 8 : off + 12])[0]
        frame = data[off + 16 : off + 16 + incl]
        if len(frame) < incl:
            break  # the capture stopped mid-packet
        frames.append(frame)
        off += 16 + incl
    return frames


def decode(frame: bytes, port: int = VXLAN_PORT) -> VxlanPacket | None:
    """The VXLAN packet in an outer Ethernet frame, or None if it is not one."""
    if len(frame) < 14 or struct.unpack("!H", frame[12:14])[0] != _ETH_IPV4:
        return None
    ip = frame[14:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        return None
    ihl = (ip[0] & 0x0F) * 4
    udp = ip[ihl:]
    if len(udp) < 16 or struct.unpack("!H", udp[2:4])[0] != port:
        return None
    vx = udp[8:16]
    if not vx[0] & 0x08:  # the I flag: a valid VNI is present
        return None
    vni = int.from_bytes(vx[4:7], "big")
    inner = udp[16:]
    if len(inner) < 14:
        return None
    kind, src, dst = _inner(inner)
    return VxlanPacket(
        outer_src=_ip(ip[12:16]),
        outer_dst=_ip(ip[16:20]),
        vni=vni,
        inner_src_mac=_mac(inner[6:12]),
        inner_dst_mac=_mac(inner[0:6]),
        inner_kind=kind,
        inner_src=src,
        inner_dst=dst,
    )


def decode_esp(frame: bytes, port: int = ESP_PORT) -> EspPacket | None:
    """The ESP-in-UDP packet (to UDP ``port``) in an outer Ethernet frame, or None.

    Only the first fragment of a fragmented datagram carries the UDP and ESP headers;
    the length is taken from the UDP header, so it is the whole datagram's.
    """
    if len(frame) < 14 or struct.unpack("!H", frame[12:14])[0] != _ETH_IPV4:
        return None
    ip = frame[14:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        return None
    flags_offset = struct.unpack("!H", ip[6:8])[0]
    if flags_offset & 0x1FFF:
        return None  # a later fragment: no UDP header
    ihl = (ip[0] & 0x0F) * 4
    udp = ip[ihl:]
    if len(udp) < 16 or struct.unpack("!H", udp[2:4])[0] != port:
        return None
    spi, seq = struct.unpack("!II", udp[8:16])
    if spi == 0:
        return None  # RFC 3948's non-ESP marker (IKE), not ESP
    return EspPacket(
        outer_src=_ip(ip[12:16]),
        outer_dst=_ip(ip[16:20]),
        spi=spi,
        seq=seq,
        length=struct.unpack("!H", udp[4:6])[0] - 8,
        fragmented=bool(flags_offset & 0x2000),
    )


def _inner(eth: bytes) -> tuple[str, str, str]:
    ethertype = struct.unpack("!H", eth[12:14])[0]
    body = eth[14:]
    if ethertype == _ETH_IPV4 and len(body) >= 20:
        return _PROTOS.get(body[9], f"IP proto {body[9]}"), _ip(body[12:16]), _ip(body[16:20])
    if ethertype == _ETH_ARP and len(body) >= 28:
        return "ARP", _ip(body[14:18]), _ip(body[24:28])
    return f"ethertype 0x{ethertype:04x}", "", ""


def _ip(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)
