"""Neighbour and FDB changes as one netlink burst: many requests per write, acks read once.

A VXLAN sandbox holds one static FDB entry (MAC -> VTEP) and one permanent neighbour
(IP -> MAC) per remote endpoint; a 100-host run asks each agent for hundreds of them
within seconds. Through pyroute2 each request costs milliseconds of Python (its request
machinery runs an event loop per call) and one round trip; here the requests are
encoded with ``struct`` (microseconds), written to a raw rtnetlink socket opened in the
sandbox's namespace in as few ``send`` calls as fit the socket buffer, and their
acknowledgements read back, so a failure is still reported per request (a delete of
something already gone is not one). Only the two message types the data plane writes
are encoded: ``RTM_NEWNEIGH`` with create+replace, and ``RTM_DELNEIGH``; and the one
dump a reconcile reads (:meth:`NeighSocket.entries`), parsed for the three fields it needs.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from overlaysim.agent.tap import in_netns

AF_INET = 2
AF_BRIDGE = 7
NUD_PERMANENT = 0x80
NTF_SELF = 0x02

RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NDA_DST = 1
NDA_LLADDR = 2
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # errors echo only the request's header, not its body

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NDMSG = struct.Struct("=BBHiHBB")  # family, pad, pad, ifindex, state, flags, type
_ERR = struct.Struct("=i")
_IFINFO = struct.Struct("=BBHiII")  # family, pad, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
NLM_F_EXCL = 0x200
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_MACVLAN_MODE = 1
MACVLAN_MODE_BRIDGE = 4
VETH_INFO_PEER = 1
NLA_F_NESTED = 0x8000
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFF_UP = 0x1
#: The loopback device's index in every network namespace.
LOOPBACK_INDEX = 1
#: Requests written per ``send`` (about 52 bytes each; well inside the socket buffer).
CHUNK = 256
#: Errors of a delete that mean "already gone".
_GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL)


@dataclass(frozen=True, slots=True)
class NeighOp:
    """One change: ``fdb`` (MAC -> VTEP, ``ip`` is the VTEP) or ``neigh`` (IP -> MAC)."""

    op: Literal["set", "del"]
    kind: Literal["fdb", "neigh"]
    ifindex: int
    #: The MAC ("" for a neighbour delete, which names only the IP).
    mac: str
    #: The neighbour's IP, or the FDB entry's VTEP ("" for an FDB delete of every VTEP).
    ip: str = ""


class BatchError(OSError):
    """Some requests of a burst failed; :attr:`failed` pairs each with its errno."""

    def __init__(self, failed: list[tuple[NeighOp, int]]) -> None:
        self.failed = failed
        first, code = failed[0]
        super().__init__(
            code, f"{len(failed)} netlink request(s) failed, first {first}: {os.strerror(code)}"
        )


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _packed_ipv4(ip: str) -> bytes:
    """The four bytes of a dotted-quad address (``inet_pton``: as strict as ``ipaddress``,
    a fraction of its cost per request)."""
    try:
        return socket.inet_pton(socket.AF_INET, ip)
    except (OSError, TypeError):
        raise ValueError(f"bad IPv4 address {ip!r}") from None


def encode(op: NeighOp, seq: int) -> bytes:
    """The netlink request for ``op`` with sequence number ``seq``."""
    family, flags = (AF_BRIDGE, NTF_SELF) if op.kind == "fdb" else (AF_INET, 0)
    attrs = b""
    if op.mac:
        mac = bytes.fromhex(op.mac.replace(":", ""))
        if len(mac) != 6:
            raise ValueError(f"bad MAC address {op.mac!r}")
        attrs = _attr(NDA_LLADDR, mac)
    if op.ip:
        attrs = _attr(NDA_DST, _packed_ipv4(op.ip)) + attrs
    if op.op == "set":
        kind, nlflags, state = RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, NUD_PERMANENT
    else:
        kind, nlflags, state = RTM_DELNEIGH, 0, 0
    body = _NDMSG.pack(family, 0, 0, op.ifindex, state, flags, 0) + attrs
    nlflags |= NLM_F_REQUEST | NLM_F_ACK
    return _HDR.pack(_HDR.size + len(body), kind, nlflags, seq, 0) + body


def encode_link_up(ifindex: int, seq: int) -> bytes:
    """``ip link set dev <ifindex> up``."""
    body = _IFINFO.pack(0, 0, 0, ifindex, IFF_UP, IFF_UP)
    return _HDR.pack(_HDR.size + len(body), RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def encode_veth_add(
    name: str,
    *,
    mtu: int,
    master: int,
    peer: str,
    peer_mac: str,
    peer_ns_fd: int,
    seq: int,
) -> bytes:
    """``ip link add <name> mtu M master <master> up type veth peer name <peer> address
    <peer_mac> mtu M netns <fd>``: the pair, its near end on a bridge and up, its far end
    named, addressed and moved into another namespace, in one request."""
    mac = bytes.fromhex(peer_mac.replace(":", ""))
    if len(mac) != 6:
        raise ValueError(f"bad MAC address {peer_mac!r}")
    far = _IFINFO.pack(0, 0, 0, 0, 0, 0) + b"".join(
        (
            _attr(IFLA_IFNAME, peer.encode() + b"\0"),
            _attr(IFLA_ADDRESS, mac),
            _attr(IFLA_MTU, struct.pack("=I", mtu)),
            _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_ns_fd)),
        )
    )
    info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(
        IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER | NLA_F_NESTED, far)
    )
    body = _IFINFO.pack(0, 0, 0, 0, IFF_UP, IFF_UP) + b"".join(
        (
            _attr(IFLA_IFNAME, name.encode() + b"\0"),
            _attr(IFLA_MTU, struct.pack("=I", mtu)),
            _attr(IFLA_MASTER, struct.pack("=I", master)),
            _attr(IFLA_LINKINFO | NLA_F_NESTED, info),
        )
    )
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return _HDR.pack(_HDR.size + len(body), RTM_NEWLINK, flags, seq, 0) + body


def encode_macvlan_add(name: str, *, link: int, mtu: int, mac: str, ns_fd: int, seq: int) -> bytes:
    """``ip link add link <link> name <name> address <mac> mtu M netns <fd> type macvlan
    mode bridge``: a macvlan of device ``link`` (an index in the socket's namespace),
    created directly in another namespace under its final name, in one request."""
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    info = _attr(IFLA_INFO_KIND, b"macvlan\0") + _attr(
        IFLA_INFO_DATA | NLA_F_NESTED,
        _attr(IFLA_MACVLAN_MODE, struct.pack("=I", MACVLAN_MODE_BRIDGE)),
    )
    body = _IFINFO.pack(0, 0, 0, 0, 0, 0) + b"".join(
        (
            _attr(IFLA_IFNAME, name.encode() + b"\0"),
            _attr(IFLA_ADDRESS, raw),
            _attr(IFLA_MTU, struct.pack("=I", mtu)),
            _attr(IFLA_LINK, struct.pack("=I", link)),
            _attr(IFLA_NET_NS_FD, struct.pack("=I", ns_fd)),
            _attr(IFLA_LINKINFO | NLA_F_NESTED, info),
        )
    )
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return _HDR.pack(_HDR.size + len(body), RTM_NEWLINK, flags, seq, 0) + body


def encode_link_del_named(name: str, seq: int) -> bytes:
    """``ip link del <name>``."""
    body = _IFINFO.pack(0, 0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
    return _HDR.pack(_HDR.size + len(body), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def encode_addr_add(ifindex: int, ip: str, prefixlen: int, seq: int) -> bytes:
    """``ip addr add <ip>/<prefixlen> dev <ifindex>`` (IPv4)."""
    packed = ipaddress.IPv4Address(ip).packed
    body = _IFADDR.pack(AF_INET, prefixlen, 0, 0, ifindex)
    body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return _HDR.pack(_HDR.size + len(body), RTM_NEWADDR, flags, seq, 0) + body


class NeighSocket:
    """A raw rtnetlink socket in one namespace (``ns_path``; None: this one).

    Besides the neighbour bursts it serves a container port's set-up (:meth:`acked`,
    :meth:`link_index`): address and links up in one write.
    """

    def __init__(self, ns_path: str | None) -> None:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            s.bind((0, 0))
            return s

        self._sock = in_netns(ns_path, make)
        self._seq = 0

    def apply(self, ops: list[NeighOp]) -> None:
        """Send ``ops`` in order as bursts; raise :class:`BatchError` naming the requests
        the kernel refused (deletes of what is already gone excepted) after all were sent."""
        failed: list[tuple[NeighOp, int]] = []
        for start in range(0, len(ops), CHUNK):
            failed += self._burst(ops[start : start + CHUNK])
        if failed:
            raise BatchError(failed)

    def _burst(self, ops: list[NeighOp]) -> list[tuple[NeighOp, int]]:
        codes = self.acked([lambda seq, op=op: encode(op, seq) for op in ops])
        return [
            (op, code)
            for op, code in zip(ops, codes, strict=True)
            if code and not (op.op == "del" and code in _GONE)
        ]

    def acked(self, requests: list[Callable[[int], bytes]]) -> list[int]:
        """Send the requests (each built from its sequence number, asking for an ack)
        in one write; return each one's errno (0: done), in order."""
        first = self._seq + 1
        self._seq += len(requests)
        self._sock.sendall(b"".join(build(first + i) for i, build in enumerate(requests)))
        codes: dict[int, int] = {}
        while len(codes) < len(requests):
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    break
                if kind == NLMSG_ERROR and first <= seq < first + len(requests):
                    codes[seq] = -_ERR.unpack_from(data, offset + _HDR.size)[0]
                offset += (length + 3) & ~3
        return [codes[first + i] for i in range(len(requests))]

    def link_index(self, ifname: str) -> int | None:
        """Index of ``ifname`` in the socket's namespace (one RTM_GETLINK), or None."""
        self._seq += 1
        seq = self._seq
        body = _IFINFO.pack(0, 0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, ifname.encode() + b"\0")
        self._sock.sendall(
            _HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body
        )
        while True:
            data = self._sock.recv(1 << 16)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, got, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                if got == seq:
                    if kind == RTM_NEWLINK:
                        return int(_IFINFO.unpack_from(data, offset + _HDR.size)[3])
                    if kind == NLMSG_ERROR:
                        code = -_ERR.unpack_from(data, offset + _HDR.size)[0]
                        if code == errno.ENODEV:
                            return None
                        raise OSError(code, f"link {ifname}: {os.strerror(code)}")
                offset += (length + 3) & ~3

    def entries(self, ifindex: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """The FDB entries with a destination ``{(mac, vtep)}`` and IPv4 neighbours
        ``{(ip, mac)}`` of device ``ifindex`` (what a reconcile compares)."""
        fdb = {(mac, dst) for mac, dst in self._dump(AF_BRIDGE, ifindex) if dst}
        neigh = {(dst, mac) for mac, dst in self._dump(AF_INET, ifindex)}
        return fdb, neigh

    def _dump(self, family: int, ifindex: int) -> list[tuple[str, str]]:
        body = _NDMSG.pack(family, 0, 0, 0, 0, 0, 0)
        out: list[tuple[str, str]] = []
        for data, start, end in self._dump_replies(RTM_GETNEIGH, body, RTM_NEWNEIGH, "neighbour"):
            entry = _neigh_entry(data, start, end, ifindex)
            if entry is not None:
                out.append(entry)
        return out

    def links(self) -> list[tuple[int, str, str]]:
        """Every interface of the namespace: ``(index, name, kind)`` (kind "" if none)."""
        body = _IFINFO.pack(0, 0, 0, 0, 0, 0)
        return [
            _link(data, start, end)
            for data, start, end in self._dump_replies(RTM_GETLINK, body, RTM_NEWLINK, "link")
        ]

    def _dump_replies(
        self, request: int, body: bytes, answer: int, what: str
    ) -> Iterator[tuple[bytes, int, int]]:
        """Send one dump request; yield ``(buffer, payload start, end)`` per answer message."""
        self._seq += 1
        seq = self._seq
        self._sock.sendall(
            _HDR.pack(_HDR.size + len(body), request, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body
        )
        while True:
            data = self._sock.recv(1 << 20)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, kind, _flags, got, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    raise OSError(errno.EPROTO, "malformed netlink message in a dump")
                if got == seq:
                    if kind == NLMSG_DONE:
                        return
                    if kind == NLMSG_ERROR:
                        code = -_ERR.unpack_from(data, offset + _HDR.size)[0]
                        raise OSError(code, f"{what} dump: {os.strerror(code)}")
                    if kind == answer:
                        yield data, offset + _HDR.size, offset + length
                offset += (length + 3) & ~3

    def delete_links(self, indexes: list[int]) -> None:
        """Delete interfaces by index in one write (those already gone are fine)."""
        codes = self.acked([lambda seq, i=i: _encode_link_del(i, seq) for i in indexes])
        failed = [(i, c) for i, c in zip(indexes, codes, strict=True) if c and c not in _GONE]
        if failed:
            index, code = failed[0]
            raise OSError(code, f"deleting link {index}: {os.strerror(code)}")

    def close(self) -> None:
        self._sock.close()


def _encode_link_del(ifindex: int, seq: int) -> bytes:
    body = _IFINFO.pack(0, 0, 0, ifindex, 0, 0)
    return _HDR.pack(_HDR.size + len(body), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def _attrs(data: bytes, pos: int, end: int) -> dict[int, bytes]:
    out = {}
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[pos + 4 : pos + alen]  # without the nested flag
        pos += (alen + 3) & ~3
    return out


def _link(data: bytes, start: int, end: int) -> tuple[int, str, str]:
    index = int(_IFINFO.unpack_from(data, start)[3])
    attrs = _attrs(data, start + _IFINFO.size, end)
    name = attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace")
    info = attrs.get(IFLA_LINKINFO)
    kind = ""
    if info is not None:
        kind = _attrs(info, 0, len(info)).get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
    return index, name, kind


def _neigh_entry(data: bytes, start: int, end: int, ifindex: int) -> tuple[str, str] | None:
    """``(mac, dst)`` of one RTM_NEWNEIGH on ``ifindex`` ("" where absent), else None."""
    _fam, _p1, _p2, index, _state, _flags, _type = _NDMSG.unpack_from(data, start)
    if index != ifindex:
        return None
    mac = dst = ""
    pos = start + _NDMSG.size
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, pos)
        if alen < 4:
            break
        payload = data[pos + 4 : pos + alen]
        if atype == NDA_LLADDR and len(payload) == 6:
            mac = payload.hex(":")
        elif atype == NDA_DST and len(payload) == 4:
            dst = socket.inet_ntop(socket.AF_INET, payload)
        pos += (alen + 3) & ~3
    return mac, dst
