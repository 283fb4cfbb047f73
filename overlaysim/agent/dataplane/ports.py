"""Container ports: a namespace per container, a port per network it joins.

A container is the named namespace ``<prefix>-<host>-<container>``; each network it
is on adds a veth pair, ``ethN`` inside the container (address, MAC, the sandbox's
MTU) and ``veth<hash>`` on the sandbox's bridge. Deleting the sandbox end takes the
container end along. On a network with the ``macvlan`` attachment the port is one
device instead, ``ethN``: a macvlan of the sandbox's VXLAN device, created directly in
the container and deleted from there.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from overlaysim.agent import names
from overlaysim.agent import netns as kns
from overlaysim.agent.created import Created
from overlaysim.agent.dataplane.handles import DataPlaneError, Handles, index
from overlaysim.agent.dataplane.sandbox import Sandbox
from overlaysim.agent.nlbatch import (
    LOOPBACK_INDEX,
    NeighSocket,
    encode_addr_add,
    encode_link_del_named,
    encode_link_up,
    encode_macvlan_add,
    encode_veth_add,
)

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


def plug(
    handles: Handles,
    sock: NeighSocket,
    c: Container,
    sb: Sandbox,
    ip: str,
    prefixlen: int,
    mac: str,
) -> str:
    """Connect ``c`` to the sandbox's network (a veth pair into its bridge, or a macvlan
    of its uplink); returns the interface name inside ``c``.

    ``sock`` is the sandbox's raw netlink socket. On failure nothing of the new port is
    left behind (the caller owns the namespaces).
    """
    used = {ifname for ifname, _, _ in c.ifaces.values()}
    ifname = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
    # one raw request (through pyroute2 a veth cost a busy agent several milliseconds of
    # Python per container): a macvlan of the uplink made in the container as ifname,
    # or the veth pair, its sandbox end on the bridge and up, its container end named,
    # addressed and moved
    if sb.macvlan:
        port, what = ifname, f"macvlan {ifname} of {sb.uplink}"
        code = _request_into(
            sock, c, lambda fd, seq: encode_macvlan_add(
                ifname, link=sb.uplink_index, mtu=sb.mtu, mac=mac, ns_fd=fd, seq=seq
            ),
        )  # fmt: skip
    else:
        port = _port_name(c.name, sb)
        what = f"veth {port} in {sb.ns}"
        code = _request_into(
            sock, c, lambda fd, seq: encode_veth_add(
                port, mtu=sb.mtu, master=sb.bridge_index, peer=ifname, peer_mac=mac,
                peer_ns_fd=fd, seq=seq,
            ),
        )  # fmt: skip
    if code:
        raise kns.KernelError(f"{what} for {c.name}: {os.strerror(code)}")
    sb.ports[c.name] = port
    try:
        if sb.net.encrypted:  # sealed super-frames must fit one datagram
            cipr = handles.ipr(c.ns)
            cipr.link("set", index=index(cipr, ifname), gso_max_size=ENCRYPTED_GSO_MAX)
        _address_and_up(c.ns, ifname, ip, prefixlen)
    except Exception:
        del sb.ports[c.name]
        _remove_port(sock, c, sb, port)
        raise
    return ifname


def _request_into(sock: NeighSocket, c: Container, encode: Callable[[int, int], bytes]) -> int:
    """Send ``encode(fd, seq)`` on ``sock`` with ``fd`` open on ``c``'s namespace (where
    the request puts a device); the kernel's error code, 0 when done."""
    fd = os.open(kns.ns_path(c.ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        (code,) = sock.acked([lambda seq: encode(fd, seq)])
    finally:
        os.close(fd)
    return code


def _remove_port(sock: NeighSocket, c: Container, sb: Sandbox, port: str) -> None:
    """Delete ``port``: a veth by its sandbox end, a macvlan inside ``c``."""
    if not sb.macvlan:
        _delete_port(sock, port)
        return
    inside = NeighSocket(kns.ns_path(c.ns))
    try:
        _delete_port(inside, port)
    finally:
        inside.close()


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


def unplug(sock: NeighSocket, c: Container, sb: Sandbox) -> None:
    """Remove ``c``'s port on the sandbox (its peer in the container goes too; a
    macvlan port is deleted inside ``c``); ``sock`` is the sandbox's raw netlink socket."""
    _remove_port(sock, c, sb, sb.ports.pop(c.name))
    del c.ifaces[sb.net.name]


def _delete_port(sock: NeighSocket, veth: str) -> None:
    """Delete a port by name in ``sock``'s namespace (gone already is fine)."""
    (code,) = sock.acked([lambda seq: encode_link_del_named(veth, seq)])
    if code and code not in (errno.ENODEV, errno.ENOENT):
        raise kns.KernelError(f"deleting {veth}: {os.strerror(code)}")


def _port_name(container: str, sb: Sandbox) -> str:
    taken = set(sb.ports.values())
    for salt in range(100):
        name = names.port_name(container, salt)
        if name not in taken:
            return name
    raise DataPlaneError(f"no free port name in {sb.ns}")
