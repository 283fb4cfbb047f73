"""Kernel VXLAN data plane of the live agent, programmed through pyroute2.

Per overlay network on a host, a *network sandbox*: a named namespace
``<prefix>-<host>-<vni>`` holding a bridge ``br0`` (gateway address, overlay MTU)
and a VXLAN device (VNI, UDP port, ``nolearning``, ``proxy``, no l2/l3 miss
notifications). The VXLAN device is created in the host's namespace and then moved
into the sandbox, so its UDP socket stays on the underlay. Containers are named
namespaces ``<prefix>-<host>-<container>`` joined to each sandbox by a veth pair
(``ethN`` inside the container). Sandboxes are separate namespaces with no route
between them, so containers on different networks cannot reach each other.

Remote endpoints become a static FDB entry ``mac -> vtep`` and a permanent
neighbour ``ip -> mac`` on the VXLAN device (proxy ARP answers from it). The data
plane remembers the remote endpoints it was given per network; the kernel is made
to match that memory, with the most recently added endpoint winning an IP or MAC
claimed twice (IP reuse). Endpoints given before a network's sandbox exists are
programmed when it is created. :meth:`DataPlane.reconcile` compares the kernel with
a desired set and repairs drift both ways.

An *encrypted* network (``NetInfo.encrypted``) has no VXLAN device: its bridge gets
a TAP port served by the user-space ESP data path
(:class:`~overlaysim.agent.esp_tunnel.EspTunnel`), and its remote endpoints become
that path's forwarding table instead of kernel FDB and neighbour entries. Reconcile
and :meth:`DataPlane.kernel_state` work the same on both.

Every namespace (and the VXLAN device while it sits in the host namespace) is
recorded in a :class:`~overlaysim.agent.created.CreatedLog`; :meth:`DataPlane.close`
removes exactly that.

Threading: calls are synchronous and quick, but pyroute2's synchronous API cannot
run inside a running asyncio loop, so an asyncio agent calls through
``loop.run_in_executor``. Calls are serialised by a lock; netlink handles are kept
per thread and namespace.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from pyroute2 import IPRoute

from overlaysim.agent import names
from overlaysim.agent import netns as kns
from overlaysim.agent.created import LINK, NETNS, Created, CreatedLog, remove_all
from overlaysim.agent.esp_tunnel import ESP_PORT, EspTunnel, TunnelError
from overlaysim.core import esp

log = logging.getLogger(__name__)

#: Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 bytes.
VXLAN_OVERHEAD = 50
DEFAULT_VXLAN_PORT = 4789
#: GSO size limit on the container side of an encrypted network: a super-frame plus
#: the ESP, UDP and IPv4 headers must fit one 64 KB datagram.
ENCRYPTED_GSO_MAX = 65000
#: Neighbour-table GC thresholds Docker sets so hundreds of endpoints fit.
GC_THRESH = {1: 8192, 2: 49152, 3: 65536}
BRIDGE = "br0"


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

#: A remote endpoint: (ip, mac, vtep).
Remote = tuple[str, str, str]

P = ParamSpec("P")
R = TypeVar("R")


class DataPlaneError(RuntimeError):
    """Misuse of the data plane or a kernel failure it cannot repair."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NetInfo:
    """What the data plane needs to know about one overlay network.

    ``mtu`` 0 means "derive from the underlay" (underlay MTU - 50). ``encrypted``
    networks use the user-space ESP path instead of a VXLAN device.
    """

    name: str
    vni: int
    subnet: str
    gateway: str
    mtu: int = 0
    encrypted: bool = False

    def __post_init__(self) -> None:
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


def overlay_mtu(underlay_mtu: int, overhead: int = VXLAN_OVERHEAD) -> int:
    """Largest overlay MTU whose VXLAN packets fit the underlay without fragmenting."""
    if underlay_mtu - overhead < 68:
        raise ValueError(f"underlay MTU {underlay_mtu} leaves no room for VXLAN")
    return underlay_mtu - overhead


def docker_mac(ip: str) -> str:
    """Docker's MAC for an IPv4 address: ``02:42`` then the four address bytes."""
    raw = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in raw)


def _norm_mac(mac: str) -> str:
    mac = mac.lower()
    if not _MAC.match(mac):
        raise ValueError(f"bad MAC address {mac!r}")
    return mac


def _norm_remote(ip: str, mac: str, vtep: str) -> Remote:
    return str(ipaddress.IPv4Address(ip)), _norm_mac(mac), str(ipaddress.IPv4Address(vtep))


@dataclass(slots=True)
class _Sandbox:
    net: NetInfo
    ns: str
    vxlan: str
    mtu: int
    record: Created
    vx_index: int = 0  # of the VXLAN device inside the sandbox, once built
    ports: dict[str, str] = field(default_factory=dict)  # container -> veth in sandbox


@dataclass(slots=True)
class _Container:
    name: str
    ns: str
    record: Created
    ifaces: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # net -> (if, ip, mac)


def _refuse_in_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise DataPlaneError("DataPlane called inside a running asyncio loop; use run_in_executor")


def _kernel_call(
    method: Callable[Concatenate[DataPlane, P], R],
) -> Callable[Concatenate[DataPlane, P], R]:
    """Serialise a public method and refuse calls pyroute2 cannot serve."""

    @functools.wraps(method)
    def wrapper(self: DataPlane, *args: P.args, **kwargs: P.kwargs) -> R:
        _refuse_in_event_loop()
        with self._lock:
            if self._closed:
                raise DataPlaneError("DataPlane is closed")
            return method(self, *args, **kwargs)

    return wrapper


class DataPlane:
    """Per-host kernel data plane: network sandboxes, containers, remote endpoints.

    ``host_netns=None`` treats the calling process's namespace as the host's (the
    agent runs inside its Mininet host); a namespace name or ``/proc/PID/ns/net``
    operates on that namespace instead. ``record_path`` is the JSON-lines record of
    created objects (e.g. ``/run/overlaysim/<run_id>/created.jsonl``). Nothing
    touches the kernel until the first method call.
    """

    def __init__(
        self,
        *,
        host: str,
        underlay_ip: str,
        vxlan_port: int = DEFAULT_VXLAN_PORT,
        host_netns: str | None = None,
        record_path: Path | None = None,
        prefix: str = names.PREFIX,
        esp_port: int = ESP_PORT,
    ) -> None:
        self.host = host
        self.underlay_ip = str(ipaddress.IPv4Address(underlay_ip))
        if not 1 <= vxlan_port <= 65535:
            raise ValueError(f"vxlan_port {vxlan_port} not in 1..65535")
        self.vxlan_port = vxlan_port
        self.host_netns = host_netns
        self.prefix = names.check_prefix(prefix)
        self.record = CreatedLog(record_path)
        #: Where the neighbour GC thresholds were raised and the values before/after.
        self.gc_thresholds: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._handles: dict[tuple[int, str | None], IPRoute] = {}
        self._sandboxes: dict[str, _Sandbox] = {}
        self._containers: dict[str, _Container] = {}
        self._remotes: dict[str, dict[Remote, None]] = {}  # insertion order: later wins
        self._closed = False
        #: The encrypted data path, built with the first key ring.
        self.tunnel: EspTunnel | None = None
        self.esp_port = esp_port

    # --- names ------------------------------------------------------------------

    def sandbox_netns(self, net: NetInfo) -> str:
        """Name of the network sandbox namespace for ``net`` on this host."""
        return names.sandbox_netns(self.prefix, self.host, net.vni)

    def _container_ns_name(self, container: str) -> str:
        return names.container_netns(self.prefix, self.host, container)

    def _vxlan_name(self, vni: int, encrypted: bool = False) -> str:
        return names.network_device(self.prefix, vni, encrypted)

    # --- keys of encrypted networks --------------------------------------------------

    @_kernel_call
    def install_keys(self, keys: list[esp.Key], primary: int) -> None:
        """Install the cluster's network key ring (oldest first; ``primary`` sends)."""
        if self.tunnel is None:
            self.tunnel = EspTunnel(
                local=self.underlay_ip,
                port=self.esp_port,
                vxlan_port=self.vxlan_port,
                netns=kns.ns_path(self.host_netns) if self.host_netns else None,
            )
        self.tunnel.install_keys(keys, primary)

    @_kernel_call
    def reset_peer(self, vtep: str) -> None:
        """The agent at ``vtep`` restarted: let the encrypted path accept its new SAs."""
        if self.tunnel is not None:
            self.tunnel.reset_peer(str(ipaddress.IPv4Address(vtep)))

    @_kernel_call
    def crypto_state(self) -> dict[str, Any]:
        """Counters, key tags and SAs of the encrypted data path (empty when unused)."""
        tun = self.tunnel
        if tun is None:
            return {}
        nets = {}
        for name, sb in self._sandboxes.items():
            if sb.net.encrypted:
                nets[name] = {
                    "vni": sb.net.vni,
                    "tap": sb.vxlan,
                    "counters": tun.counters(sb.net.vni),
                    "sas": tun.spis(sb.net.vni),
                }
        tags, primary = tun.ring
        return {
            "port": tun.port,
            "keys": tags,
            "primary": primary,
            "counters": tun.counters(),
            "clear_vxlan_dropped": {str(k): v for k, v in tun.guard.dropped().items()},
            "networks": nets,
        }

    # --- networks ---------------------------------------------------------------

    @_kernel_call
    def ensure_network(self, net: NetInfo) -> None:
        """Create the sandbox for ``net`` unless it exists; replay remembered remotes."""
        current = self._sandboxes.get(net.name)
        if current is not None:
            if current.net != net:
                raise DataPlaneError(f"network {net.name!r} exists with {current.net}")
            return
        for other in self._sandboxes.values():
            if other.net.vni == net.vni:
                raise DataPlaneError(f"VNI {net.vni} already used by {other.net.name!r}")
        if net.encrypted and (self.tunnel is None or not self.tunnel.has_keys):
            raise DataPlaneError(
                f"network {net.name!r} is encrypted and this host has no network keys; "
                "refusing rather than running it in clear"
            )
        mtu = net.mtu or overlay_mtu(self._underlay_mtu())
        ns = self.sandbox_netns(net)
        record = Created(kind=NETNS, name=ns, owner=f"network:{net.name}")
        self._create_namespace(record)
        sandbox = _Sandbox(
            net=net, ns=ns, vxlan=self._vxlan_name(net.vni, net.encrypted), mtu=mtu, record=record
        )
        try:
            self._build_sandbox(sandbox)
        except Exception:
            self._drop_namespace(record)
            raise
        self._sandboxes[net.name] = sandbox
        self._raise_gc_thresholds(ns)
        fdb, neigh = self._desired(net.name)
        self._program(sandbox, fdb.items(), neigh.items())

    def _build_sandbox(self, sb: _Sandbox) -> None:
        inner = self._ipr(sb.ns)
        inner.link("add", ifname=BRIDGE, kind="bridge", mtu=sb.mtu)
        bridge = self._index(inner, BRIDGE)
        inner.addr("add", index=bridge, address=sb.net.gateway, prefixlen=sb.net.prefixlen)
        if sb.net.encrypted:
            self._build_tap(sb, inner, bridge)
            return
        host = self._ipr(self.host_netns)
        if kns.link_index(host, sb.vxlan) is not None:  # never adopt (nor journal) it
            raise DataPlaneError(f"interface {sb.vxlan!r} already exists in the host namespace")
        # journalled before it is created and while it sits in the host namespace:
        # a crash between here and the move must not leak it
        in_host = Created(
            kind=LINK,
            name=sb.vxlan,
            netns=kns.ns_path(self.host_netns),
            ns_ino=kns.ns_inode(self.host_netns),
            owner=f"network:{sb.net.name}",
        )
        self.record.add(in_host)
        try:
            host.link(
                "add",
                ifname=sb.vxlan,
                kind="vxlan",
                vxlan_id=sb.net.vni,
                vxlan_port=self.vxlan_port,
                vxlan_local=self.underlay_ip,
                vxlan_learning=0,
                vxlan_proxy=1,
                vxlan_l2miss=0,
                vxlan_l3miss=0,
                mtu=sb.mtu,
            )
            host.link("set", index=self._index(host, sb.vxlan), net_ns_fd=sb.ns)
        except Exception:
            kns.delete_link(host, sb.vxlan)
            raise
        finally:
            self.record.drop(in_host)  # moved (now inside the sandbox) or deleted
        sb.vx_index = self._index(inner, sb.vxlan)
        inner.link("set", index=sb.vx_index, master=bridge, state="up")
        inner.link("set", index=bridge, state="up")
        inner.link("set", index=self._index(inner, "lo"), state="up")

    def _build_tap(self, sb: _Sandbox, inner: IPRoute, bridge: int) -> None:
        assert self.tunnel is not None
        try:
            self.tunnel.add_network(sb.net.vni, sb.vxlan, sb.mtu, kns.ns_path(sb.ns))
        except TunnelError as exc:
            raise DataPlaneError(
                f"network {sb.net.name!r}: encryption cannot be set up: {exc}"
            ) from exc
        try:
            sb.vx_index = self._index(inner, sb.vxlan)
            inner.link("set", index=sb.vx_index, mtu=sb.mtu)
            inner.link("set", index=sb.vx_index, master=bridge, state="up")
            inner.link("set", index=bridge, state="up")
            inner.link("set", index=self._index(inner, "lo"), state="up")
        except Exception:
            self.tunnel.remove_network(sb.net.vni)
            raise

    def _raise_gc_thresholds(self, ns: str) -> None:
        """Raise neighbour GC thresholds (kernel-wide), once per data plane."""
        if not self.gc_thresholds:
            self.gc_thresholds = kns.raise_neigh_gc(ns, GC_THRESH)
            if self.gc_thresholds["where"] == "none":
                log.warning("could not raise neighbour GC thresholds: %s", self.gc_thresholds)

    @_kernel_call
    def remove_network(self, name: str) -> None:
        """Remove the sandbox of network ``name`` (detaching its containers first).

        Remembered remote endpoints stay, to be replayed if the network returns.
        """
        sandbox = self._sandboxes.pop(name, None)
        if sandbox is None:
            return
        for container in list(sandbox.ports):
            self._detach_port(self._containers[container], sandbox)
        if sandbox.net.encrypted and self.tunnel is not None:
            self.tunnel.remove_network(sandbox.net.vni)
        self._drop_namespace(sandbox.record)

    def _create_namespace(self, record: Created) -> None:
        if kns.netns_exists(record.name):  # never adopt (nor journal) what is not ours
            raise kns.KernelError(
                f"network namespace {record.name!r} already exists (leftover? run clean)"
            )
        self.record.add(record)  # journalled first: a crash mid-create still gets cleaned
        try:
            kns.create_netns(record.name)
        except BaseException:
            self._drop_namespace(record)
            raise

    def _drop_namespace(self, record: Created) -> None:
        self._close_handles(record.name)
        kns.remove_netns(record.name)
        self.record.drop(record)

    # --- containers -------------------------------------------------------------

    @_kernel_call
    def attach(self, container: str, net: NetInfo, ip: str, prefixlen: int, mac: str) -> str:
        """Connect ``container`` to ``net`` with ``ip/prefixlen`` and ``mac``.

        Creates the container namespace and the network sandbox when needed.
        Returns the interface name inside the container (``eth0``, ``eth1``, ...).
        """
        ip = str(ipaddress.IPv4Address(ip))
        mac = _norm_mac(mac)
        if ipaddress.IPv4Address(ip) not in ipaddress.IPv4Network(net.subnet):
            raise ValueError(f"{ip} is not in {net.name!r} ({net.subnet})")
        new_network = net.name not in self._sandboxes
        self.ensure_network(net)
        sandbox = self._sandboxes[net.name]
        found = self._containers.get(container)
        if found is not None and net.name in found.ifaces:
            ifname, old_ip, old_mac = found.ifaces[net.name]
            if (old_ip, old_mac) != (ip, mac):
                raise DataPlaneError(f"{container!r} is on {net.name!r} as {old_ip} {old_mac}")
            return ifname
        entry = found or self._new_container(container)
        try:
            ifname = self._plug(entry, sandbox, ip, prefixlen, mac)
        except Exception:
            if not entry.ifaces:
                self._forget_container(entry)
            if new_network and not sandbox.ports:
                self.remove_network(net.name)
            raise
        entry.ifaces[net.name] = (ifname, ip, mac)
        return ifname

    def _new_container(self, container: str) -> _Container:
        ns = self._container_ns_name(container)
        record = Created(kind=NETNS, name=ns, owner=f"container:{container}")
        self._create_namespace(record)
        entry = _Container(name=container, ns=ns, record=record)
        self._containers[container] = entry
        return entry

    def _forget_container(self, entry: _Container) -> None:
        del self._containers[entry.name]
        self._drop_namespace(entry.record)

    def _plug(self, c: _Container, sb: _Sandbox, ip: str, prefixlen: int, mac: str) -> str:
        used = {ifname for ifname, _, _ in c.ifaces.values()}
        ifname = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
        veth = self._port_name(c.name, sb)
        inner = self._ipr(sb.ns)
        peer = {"ifname": ifname, "net_ns_fd": c.ns, "address": mac, "mtu": sb.mtu}
        inner.link("add", ifname=veth, kind="veth", mtu=sb.mtu, peer=peer)
        sb.ports[c.name] = veth
        try:
            bridge = self._index(inner, BRIDGE)
            inner.link("set", index=self._index(inner, veth), master=bridge, state="up")
            cipr = self._ipr(c.ns)
            index = self._index(cipr, ifname)
            if sb.net.encrypted:  # sealed super-frames must fit one datagram
                cipr.link("set", index=index, gso_max_size=ENCRYPTED_GSO_MAX)
            cipr.addr("add", index=index, address=ip, prefixlen=prefixlen)
            cipr.link("set", index=index, state="up")
            cipr.link("set", index=self._index(cipr, "lo"), state="up")
        except Exception:
            del sb.ports[c.name]
            kns.delete_link(inner, veth)
            raise
        return ifname

    def _port_name(self, container: str, sb: _Sandbox) -> str:
        taken = set(sb.ports.values())
        for salt in range(100):
            name = names.port_name(container, salt)
            if name not in taken:
                return name
        raise DataPlaneError(f"no free port name in {sb.ns}")

    @_kernel_call
    def detach(self, container: str, network: str) -> None:
        """Disconnect ``container`` from ``network``.

        The container namespace goes with its last interface, the sandbox with its
        last container. Detaching something not attached does nothing.
        """
        entry = self._containers.get(container)
        sandbox = self._sandboxes.get(network)
        if entry is None or sandbox is None or network not in entry.ifaces:
            return
        self._detach_port(entry, sandbox)
        if not sandbox.ports:
            self.remove_network(network)

    def _detach_port(self, entry: _Container, sb: _Sandbox) -> None:
        veth = sb.ports.pop(entry.name)
        kns.delete_link(self._ipr(sb.ns), veth)  # its peer in the container goes too
        del entry.ifaces[sb.net.name]
        if not entry.ifaces:
            self._forget_container(entry)

    @_kernel_call
    def container_netns(self, container: str) -> str:
        """Namespace name of an attached container (for running tools inside it)."""
        entry = self._containers.get(container)
        if entry is None:
            raise DataPlaneError(f"container {container!r} is not attached here")
        return entry.ns

    # --- remote endpoints ---------------------------------------------------------

    @_kernel_call
    def add_remote(self, network: str, ip: str, mac: str, vtep: str) -> None:
        """Program remote endpoint ``ip``/``mac`` behind VTEP ``vtep`` on ``network``.

        Endpoints on this host (``vtep`` is our underlay IP) are ignored: the bridge
        reaches them directly. If the sandbox does not exist yet, the endpoint is
        remembered and programmed when it is created.
        """
        remote = _norm_remote(ip, mac, vtep)
        if remote[2] == self.underlay_ip:
            return
        remotes = self._remotes.setdefault(network, {})
        remotes.pop(remote, None)
        remotes[remote] = None  # re-adding makes it the newest claim on its IP and MAC
        self._sync_keys(network, remote)

    @_kernel_call
    def remove_remote(self, network: str, ip: str, mac: str, vtep: str) -> None:
        """Forget a remote endpoint and unprogram it.

        An IP or MAC still claimed by another remembered endpoint is re-pointed to
        that endpoint instead of deleted (an IP reused on another host).
        """
        remote = _norm_remote(ip, mac, vtep)
        self._remotes.get(network, {}).pop(remote, None)
        self._sync_keys(network, remote)

    def _sync_keys(self, network: str, remote: Remote) -> None:
        sandbox = self._sandboxes.get(network)
        if sandbox is None:
            return
        if sandbox.net.encrypted:
            self._push_tunnel(sandbox)
            return
        ip, mac, _ = remote
        fdb, neigh = self._desired(network)
        inner, vx = self._vxlan(sandbox)
        if mac in fdb:
            kns.fdb_set(inner, vx, mac, fdb[mac])
        else:
            kns.fdb_del(inner, vx, mac)  # no dst: the whole entry
        if ip in neigh:
            kns.neigh_set(inner, vx, ip, neigh[ip])
        else:
            kns.neigh_del(inner, vx, ip)

    def _desired(self, network: str) -> tuple[dict[str, str], dict[str, str]]:
        """Kernel state wanted for ``network``: ``{mac: vtep}``, ``{ip: mac}``."""
        fdb: dict[str, str] = {}
        neigh: dict[str, str] = {}
        for ip, mac, vtep in self._remotes.get(network, {}):  # later entries win
            fdb[mac] = vtep
            neigh[ip] = mac
        return fdb, neigh

    def _push_tunnel(self, sb: _Sandbox) -> None:
        assert self.tunnel is not None
        fdb, neigh = self._desired(sb.net.name)
        self.tunnel.set_remote(sb.net.vni, fdb, neigh)

    def _program(self, sb: _Sandbox, fdb: Any, neigh: Any) -> None:
        if sb.net.encrypted:
            self._push_tunnel(sb)
            return
        inner, vx = self._vxlan(sb)
        for mac, vtep in fdb:
            kns.fdb_set(inner, vx, mac, vtep)
        for ip, mac in neigh:
            kns.neigh_set(inner, vx, ip, mac)

    # --- reconcile ------------------------------------------------------------------

    @_kernel_call
    def reconcile(self, network: str, desired: set[tuple[str, str, str]]) -> dict[str, list]:
        """Make the kernel match ``desired`` remote endpoints ``(ip, mac, vtep)``.

        ``desired`` also replaces the remembered endpoints of ``network``. Local
        endpoints in it are ignored. If one IP or MAC appears twice, the entry that
        sorts last wins. Returns ``{"added": [...], "removed": [...]}`` with items
        ``("fdb", mac, vtep)`` and ``("neigh", ip, mac)``; both empty when the
        sandbox does not exist (nothing to repair yet).
        """
        wanted = sorted(_norm_remote(*r) for r in desired)
        self._remotes[network] = {r: None for r in wanted if r[2] != self.underlay_ip}
        result: dict[str, list] = {"added": [], "removed": []}
        sandbox = self._sandboxes.get(network)
        if sandbox is None:
            return result
        fdb_map, neigh_map = self._desired(network)
        fdb_want, neigh_want = set(fdb_map.items()), set(neigh_map.items())
        fdb_have, neigh_have = self._read_kernel(sandbox)
        result["removed"] = [("fdb", *e) for e in sorted(fdb_have - fdb_want)]
        result["removed"] += [("neigh", *e) for e in sorted(neigh_have - neigh_want)]
        result["added"] = [("fdb", *e) for e in sorted(fdb_want - fdb_have)]
        result["added"] += [("neigh", *e) for e in sorted(neigh_want - neigh_have)]
        if sandbox.net.encrypted:
            self._push_tunnel(sandbox)  # the user-space table is replaced whole
        else:
            inner, vx = self._vxlan(sandbox)
            for kind, key, value in result["removed"]:
                if kind == "fdb":
                    kns.fdb_del(inner, vx, key, value)
                else:
                    kns.neigh_del(inner, vx, key)
            for kind, key, value in result["added"]:
                if kind == "fdb":
                    kns.fdb_set(inner, vx, key, value)
                else:
                    kns.neigh_set(inner, vx, key, value)
        if result["added"] or result["removed"]:
            log.info("reconciled %s on %s: %s", network, self.host, result)
        return result

    @_kernel_call
    def kernel_state(self, network: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """What the kernel holds for ``network``: FDB ``{(mac, vtep)}``, neighbours
        ``{(ip, mac)}`` on the VXLAN device (both empty without a sandbox)."""
        sandbox = self._sandboxes.get(network)
        if sandbox is None:
            return set(), set()
        return self._read_kernel(sandbox)

    def _read_kernel(self, sb: _Sandbox) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        if sb.net.encrypted:
            assert self.tunnel is not None
            return self.tunnel.entries(sb.net.vni)
        inner, vx = self._vxlan(sb)
        return kns.vxlan_entries(inner, vx)

    # --- underlay -------------------------------------------------------------------

    @_kernel_call
    def underlay_mtu(self) -> int:
        """MTU of the host interface carrying ``underlay_ip``."""
        return self._underlay_mtu()

    def _underlay_mtu(self) -> int:
        host = self._ipr(self.host_netns)
        for msg in host.addr("dump", family=kns.AF_INET):
            if msg.get("address") == self.underlay_ip:
                return int(host.link("get", index=msg["index"])[0].get("mtu"))
        raise DataPlaneError(f"underlay IP {self.underlay_ip} is on no interface of the host")

    @_kernel_call
    def offloads(self, network: str) -> dict[str, dict[str, bool]]:
        """Key offload features of the sandbox's VXLAN device, bridge and veth ports.

        GSO/TSO on the VXLAN device and UDP-tunnel GSO on the underlay are what keep
        overlay throughput near the underlay's (docs/dataplane.md).
        """
        sandbox = self._sandboxes.get(network)
        if sandbox is None:
            raise DataPlaneError(f"network {network!r} has no sandbox here")
        ifnames = [sandbox.vxlan, BRIDGE, *sandbox.ports.values()]
        return kns.run_in_netns(sandbox.ns, kns.read_features, ifnames)

    # --- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything this data plane created, newest first; idempotent.

        Objects already gone are fine; other failures are collected and raised
        together after everything else was attempted.
        """
        _refuse_in_event_loop()
        with self._lock:
            if not self._closed:
                self._close()

    def _close(self) -> None:
        errors: list[Exception] = []
        for name in reversed(list(self._sandboxes)):
            try:
                self.remove_network(name)
            except Exception as exc:  # keep tearing down the rest
                errors.append(exc)
        if self.tunnel is not None:
            try:
                self.tunnel.close()
            except Exception as exc:
                errors.append(exc)
        self._close_handles(None, everything=True)
        _removed, failed = remove_all(self.record)
        errors += failed
        self._containers.clear()
        self._sandboxes.clear()
        self._closed = True
        if errors:
            raise DataPlaneError(f"teardown of {self.host} left errors: {errors}")

    def __enter__(self) -> DataPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- handles ----------------------------------------------------------------------

    def _ipr(self, ns: str | None) -> IPRoute:
        key = (threading.get_ident(), ns)
        handle = self._handles.get(key)
        if handle is None:
            handle = self._handles[key] = kns.open_ipr(ns)
        return handle

    def _close_handles(self, ns: str | None, *, everything: bool = False) -> None:
        for key in [k for k in self._handles if everything or k[1] == ns]:
            kns.close_ipr(self._handles.pop(key))

    def _vxlan(self, sb: _Sandbox) -> tuple[IPRoute, int]:
        return self._ipr(sb.ns), sb.vx_index

    @staticmethod
    def _index(ipr: IPRoute, ifname: str) -> int:
        index = kns.link_index(ipr, ifname)
        if index is None:
            raise DataPlaneError(f"interface {ifname!r} not found")
        return index

    def __repr__(self) -> str:
        return f"DataPlane(host={self.host!r}, underlay_ip={self.underlay_ip!r}, pid={os.getpid()})"
