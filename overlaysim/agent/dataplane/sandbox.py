"""Network sandboxes: one namespace per overlay network and host.

A sandbox ``<prefix>-<host>-<vni>`` holds a bridge ``br0`` (the gateway address, the
overlay MTU) and the network's uplink: a VXLAN device (VNI, UDP port,
``nolearning``, ``proxy``, no l2/l3 miss notifications) or, on an encrypted network,
a TAP served by the user-space ESP path (:mod:`.encrypted`). With the ``macvlan``
attachment there is no bridge: containers and the gateway device ``gw0`` are macvlans
(bridge mode) of the VXLAN device, one hop fewer per frame (docs/dataplane.md). The
VXLAN device is created in the host's namespace and then moved into the sandbox, so its
UDP socket stays on the underlay. Sandboxes are separate namespaces with no route
between them, so containers on different networks cannot reach each other.

The MTU comes from the core's rule (:func:`overlaysim.core.mtu.derive_mtu`),
encryption overhead included, unless the network fixes one.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from overlaysim.agent import names
from overlaysim.agent import netns as kns
from overlaysim.agent.created import LINK, Created, CreatedLog
from overlaysim.agent.dataplane.handles import DataPlaneError, Handles, index
from overlaysim.core.cluster_errors import InvalidSpec
from overlaysim.core.mtu import derive_mtu
from overlaysim.core.network import DEFAULT_ATTACHMENT, check_attachment

log = logging.getLogger(__name__)

DEFAULT_VXLAN_PORT = 4789
#: Neighbour-table GC thresholds Docker sets so hundreds of endpoints fit.
GC_THRESH = {1: 8192, 2: 49152, 3: 65536}
BRIDGE = names.SANDBOX_BRIDGE
#: The gateway's device in a sandbox without a bridge (``macvlan`` attachment).
GATEWAY_MACVLAN = "gw0"


@dataclass(frozen=True, slots=True, kw_only=True)
class NetInfo:
    """What the data plane needs to know about one overlay network.

    ``mtu`` 0 means "derive from the underlay" with the core's rule
    (:func:`sandbox_mtu`). ``encrypted`` networks use the user-space ESP path
    instead of a VXLAN device. ``attachment`` is one of
    :data:`overlaysim.core.network.ATTACHMENTS`; ``macvlan`` is for plain networks only.
    """

    name: str
    vni: int
    subnet: str
    gateway: str
    mtu: int = 0
    encrypted: bool = False
    attachment: str = DEFAULT_ATTACHMENT

    def __post_init__(self) -> None:
        try:  # the manager's rule, so that both refuse the same networks
            check_attachment(self.attachment, self.encrypted)
        except InvalidSpec as err:
            raise ValueError(f"network {self.name!r}: {err}") from None
        if not 1 <= self.vni <= 0xFFFFFF:
            raise ValueError(f"network {self.name!r}: vni {self.vni} not in 1..16777215")
        net = ipaddress.IPv4Network(self.subnet)
        if ipaddress.IPv4Address(self.gateway) not in net:
            raise ValueError(f"network {self.name!r}: gateway {self.gateway} not in {net}")
        if self.mtu and not 68 <= self.mtu <= 65535:
            raise ValueError(f"network {self.name!r}: mtu {self.mtu} not in 68..65535")

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen


def sandbox_mtu(net: NetInfo, underlay_mtu: int) -> int:
    """The MTU of ``net``'s bridge, uplink and ports on an underlay of ``underlay_mtu``.

    The network's own ``mtu`` when set, else the core's derivation (VXLAN overhead,
    plus the ESP overhead when encrypted), so agents and the manager agree.
    """
    return net.mtu or derive_mtu(underlay_mtu, net.encrypted)


@dataclass(slots=True)
class Sandbox:
    """One built sandbox: its namespace, uplink device and container ports."""

    net: NetInfo
    ns: str
    uplink: str  # VXLAN device, or TAP when encrypted
    mtu: int
    record: Created
    uplink_index: int = 0  # inside the sandbox, once built
    bridge_index: int = 0  # inside the sandbox, once built
    # container -> its port: the veth in the sandbox, or (macvlan) its name in the container
    ports: dict[str, str] = field(default_factory=dict)

    @property
    def macvlan(self) -> bool:
        return self.net.attachment == "macvlan"

    @property
    def gateway_device(self) -> str:
        """The device holding the gateway address: the bridge, or ``gw0``."""
        return GATEWAY_MACVLAN if self.macvlan else BRIDGE


def build_vxlan(
    handles: Handles,
    journal: CreatedLog,
    sb: Sandbox,
    *,
    host_netns: str | None,
    underlay_ip: str,
    vxlan_port: int,
) -> None:
    """Create the VXLAN uplink in the host namespace, move it in, bring the sandbox up."""
    host = handles.ipr(host_netns)
    if kns.link_index(host, sb.uplink) is not None:  # never adopt (nor journal) it
        raise DataPlaneError(f"interface {sb.uplink!r} already exists in the host namespace")
    # journalled before it is created and while it sits in the host namespace:
    # a crash between here and the move must not leak it
    in_host = Created(
        kind=LINK,
        name=sb.uplink,
        netns=kns.ns_path(host_netns),
        ns_ino=kns.ns_inode(host_netns),
        owner=f"network:{sb.net.name}",
    )
    journal.add(in_host)
    try:
        host.link(
            "add",
            ifname=sb.uplink,
            kind="vxlan",
            vxlan_id=sb.net.vni,
            vxlan_port=vxlan_port,
            vxlan_local=underlay_ip,
            vxlan_learning=0,
            vxlan_proxy=1,
            vxlan_l2miss=0,
            vxlan_l3miss=0,
            mtu=sb.mtu,
        )
        host.link("set", index=index(host, sb.uplink), net_ns_fd=sb.ns)
    except Exception:
        kns.delete_link(host, sb.uplink)
        raise
    finally:
        journal.drop(in_host)  # moved (now inside the sandbox) or deleted
    inner = handles.ipr(sb.ns)
    sb.uplink_index = index(inner, sb.uplink)
    if sb.macvlan:
        # a device has one receive handler: the uplink is the macvlans' lower device
        # and cannot also be a bridge port
        inner.link("set", index=sb.uplink_index, state="up")
        inner.link(
            "add", ifname=GATEWAY_MACVLAN, kind="macvlan", link=sb.uplink_index,
            macvlan_mode="bridge", mtu=sb.mtu,
        )  # fmt: skip
        gw = index(inner, GATEWAY_MACVLAN)
        inner.addr("add", index=gw, address=sb.net.gateway, prefixlen=sb.net.prefixlen)
    else:
        inner.link("set", index=sb.uplink_index, master=index(inner, BRIDGE), state="up")
    bring_up(inner, sb)


def build_bridge(inner: IPRoute, sb: Sandbox) -> None:
    """The sandbox's bridge with the gateway address (not yet up); none for a
    ``macvlan`` sandbox, whose gateway device comes with its uplink."""
    if sb.macvlan:
        return
    inner.link("add", ifname=BRIDGE, kind="bridge", mtu=sb.mtu)
    sb.bridge_index = index(inner, BRIDGE)
    inner.addr("add", index=sb.bridge_index, address=sb.net.gateway, prefixlen=sb.net.prefixlen)


def bring_up(inner: IPRoute, sb: Sandbox) -> None:
    """Gateway device and loopback up, once the uplink hangs off the bridge."""
    inner.link("set", index=index(inner, sb.gateway_device), state="up")
    inner.link("set", index=index(inner, "lo"), state="up")


def raise_gc_thresholds(ns: str) -> dict[str, Any]:
    """Raise neighbour GC thresholds (kernel-wide); what was done, for the record."""
    done = kns.raise_neigh_gc(ns, GC_THRESH)
    if done["where"] == "none":
        log.warning("could not raise neighbour GC thresholds: %s", done)
    return done


def underlay_mtu(ipr: IPRoute, underlay_ip: str) -> int:
    """MTU of the interface carrying ``underlay_ip`` in the handle's namespace."""
    for msg in ipr.addr("dump", family=kns.AF_INET):
        if msg.get("address") == underlay_ip:
            return int(ipr.link("get", index=msg["index"])[0].get("mtu"))
    raise DataPlaneError(f"underlay IP {underlay_ip} is on no interface of the host")
