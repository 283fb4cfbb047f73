"""Container ports: a namespace per container, a veth pair per network it joins.

A container is the named namespace ``<prefix>-<host>-<container>``; each network it
is on adds a veth pair, ``ethN`` inside the container (address, MAC, the sandbox's
MTU) and ``veth<hash>`` on the sandbox's bridge. Deleting the sandbox end takes the
container end along.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from overlaysim.agent import names
from overlaysim.agent import netns as kns
from overlaysim.agent.created import Created
from overlaysim.agent.dataplane.handles import DataPlaneError, Handles, index
from overlaysim.agent.dataplane.sandbox import BRIDGE, Sandbox
from overlaysim.agent.nlbatch import LOOPBACK_INDEX, NeighSocket, encode_addr_add, encode_link_up

#: GSO size limit on the container side of an encrypted network: a super-frame plus
#: the ESP, UDP and IPv4 headers must fit one 64 KB datagram.
ENCRYPTED_GSO_MAX = 65000

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(slots=True)
class Container:
    """A container namespace and its interfaces: network -> (ifname, ip, mac)."""

    name: str
    ns: str
    record: Created
    ifaces: dict[str, tuple[str, str, str]] = field(default_factory=dict)


def docker_mac(ip: str) -> str:
    """Docker's MAC for an IPv4 address: ``02:42`` then the four address bytes."""
    raw = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in raw)


def norm_mac(mac: str) -> str:
    """``mac`` in lowercase; ValueError unless it is six hex pairs."""
    mac = mac.lower()
    if not _MAC.match(mac):
        raise ValueError(f"bad MAC address {mac!r}")
    return mac


def plug(handles: Handles, c: Container, sb: Sandbox, ip: str, prefixlen: int, mac: str) -> str:
    """Connect ``c`` to the sandbox's bridge; returns the interface name inside ``c``.

    On failure nothing of the new port is left behind (the caller owns the namespaces).
    """
    used = {ifname for ifname, _, _ in c.ifaces.values()}
    ifname = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
    veth = _port_name(c.name, sb)
    inner = handles.ipr(sb.ns)
    peer = {"ifname": ifname, "net_ns_fd": c.ns, "address": mac, "mtu": sb.mtu}
    # one request: the pair, its sandbox end on the bridge and up
    inner.link(
        "add", ifname=veth, kind="veth", mtu=sb.mtu, peer=peer,
        master=index(inner, BRIDGE), state="up",
    )  # fmt: skip
    sb.ports[c.name] = veth
    try:
        if sb.net.encrypted:  # sealed super-frames must fit one datagram
            cipr = handles.ipr(c.ns)
            cipr.link("set", index=index(cipr, ifname), gso_max_size=ENCRYPTED_GSO_MAX)
        _address_and_up(c.ns, ifname, ip, prefixlen)
    except Exception:
        del sb.ports[c.name]
        kns.delete_link(inner, veth)
        raise
    return ifname


def _address_and_up(ns: str, ifname: str, ip: str, prefixlen: int) -> None:
    """Inside the container: the address on ``ifname``, it and loopback up, in one write
    on a raw netlink socket (a pyroute2 handle per container namespace costs a helper
    process; this costs a thread's ``setns``)."""
    sock = NeighSocket(kns.ns_path(ns))
    try:
        dev = sock.link_index(ifname)
        if dev is None:
            raise DataPlaneError(f"interface {ifname!r} not found in {ns}")
        codes = sock.acked(
            [
                lambda seq: encode_addr_add(dev, ip, prefixlen, seq),
                lambda seq: encode_link_up(dev, seq),
                lambda seq: encode_link_up(LOOPBACK_INDEX, seq),
            ]
        )
        for what, code in zip(("address", ifname, "lo"), codes, strict=True):
            if code:
                raise kns.KernelError(f"{what} in {ns}: {os.strerror(code)}")
    finally:
        sock.close()


def unplug(handles: Handles, c: Container, sb: Sandbox) -> None:
    """Remove ``c``'s port on the sandbox (its peer in the container goes too)."""
    veth = sb.ports.pop(c.name)
    kns.delete_link(handles.ipr(sb.ns), veth)
    del c.ifaces[sb.net.name]


def _port_name(container: str, sb: Sandbox) -> str:
    taken = set(sb.ports.values())
    for salt in range(100):
        name = names.port_name(container, salt)
        if name not in taken:
            return name
    raise DataPlaneError(f"no free port name in {sb.ns}")
