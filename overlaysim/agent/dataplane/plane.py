"""The data plane of one host: sandboxes, container ports, forwarding, encryption.

:class:`DataPlane` is what the agent's programmer calls (see
:class:`overlaysim.agent.programmer.DataPlanePort`); it keeps which sandboxes and
containers exist and hands each concern to its module. Every namespace it creates
(and the VXLAN device while it sits in the host namespace) is journalled *before* it
is created in a :class:`~overlaysim.agent.created.CreatedLog`; :meth:`DataPlane.close`
removes exactly what the journal holds.

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
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from overlaysim.agent import names
from overlaysim.agent import netns as kns
from overlaysim.agent.created import NETNS, Created, CreatedLog, remove_all
from overlaysim.agent.dataplane import forwarding as fwd
from overlaysim.agent.dataplane.encrypted import Encryption
from overlaysim.agent.dataplane.handles import DataPlaneError, Handles
from overlaysim.agent.dataplane.ports import Container, norm_mac, plug, unplug
from overlaysim.agent.dataplane.sandbox import (
    DEFAULT_VXLAN_PORT,
    NetInfo,
    Sandbox,
    build_bridge,
    build_vxlan,
    raise_gc_thresholds,
    sandbox_mtu,
    underlay_mtu,
)
from overlaysim.agent.esp_tunnel import ESP_PORT, EspTunnel
from overlaysim.agent.nlbatch import NeighSocket
from overlaysim.core import esp

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


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
    operates on that namespace instead. ``record_path`` is the journal of created
    objects (e.g. ``/run/overlaysim/<run_id>/<host>-created.jsonl``). Nothing
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
        esp_max_seq: int = esp.MAX_SEQ,
        on_rekey: Callable[[], None] | None = None,
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
        self.esp_port = esp_port
        self.encryption = Encryption(
            underlay_ip=self.underlay_ip,
            port=esp_port,
            vxlan_port=vxlan_port,
            host_netns=host_netns,
            max_seq=esp_max_seq,
            on_rekey=on_rekey,
        )
        self._lock = threading.RLock()
        self._handles = Handles()
        #: One raw netlink socket per sandbox namespace for FDB/neighbour bursts.
        self._neigh: dict[str, NeighSocket] = {}
        self._sandboxes: dict[str, Sandbox] = {}
        self._containers: dict[str, Container] = {}
        self._remotes = fwd.Remotes(self.underlay_ip)
        self._closed = False

    @property
    def tunnel(self) -> EspTunnel | None:
        """The encrypted data path (None until the first key ring)."""
        return self.encryption.tunnel

    def sandbox_netns(self, net: NetInfo) -> str:
        """Name of the network sandbox namespace for ``net`` on this host."""
        return names.sandbox_netns(self.prefix, self.host, net.vni)

    # --- keys of encrypted networks --------------------------------------------------

    @_kernel_call
    def install_keys(self, keys: list[esp.Key], primary: int) -> None:
        """Install the cluster's network key ring (oldest first; ``primary`` sends)."""
        self.encryption.install_keys(keys, primary)

    @_kernel_call
    def reset_peer(self, vtep: str) -> None:
        """The agent at ``vtep`` restarted: let the encrypted path accept its new SAs."""
        self.encryption.reset_peer(vtep)

    @_kernel_call
    def crypto_state(self) -> dict[str, Any]:
        """Counters, key tags and SAs of the encrypted data path (empty when unused)."""
        return self.encryption.state(list(self._sandboxes.values()))

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
        if net.encrypted and not self.encryption.has_keys:
            raise DataPlaneError(
                f"network {net.name!r} is encrypted and this host has no network keys; "
                "refusing rather than running it in clear"
            )
        # the underlay is only read when the network does not fix its MTU
        mtu = net.mtu or sandbox_mtu(net, self._underlay_mtu())
        ns = self.sandbox_netns(net)
        record = Created(kind=NETNS, name=ns, owner=f"network:{net.name}")
        self._create_namespace(record)
        uplink = names.network_device(self.prefix, net.vni, net.encrypted)
        sandbox = Sandbox(net=net, ns=ns, uplink=uplink, mtu=mtu, record=record)
        try:
            inner = self._handles.ipr(ns)
            build_bridge(inner, sandbox)
            if net.encrypted:
                self.encryption.build_tap(inner, sandbox)
            else:
                build_vxlan(
                    self._handles,
                    self.record,
                    sandbox,
                    host_netns=self.host_netns,
                    underlay_ip=self.underlay_ip,
                    vxlan_port=self.vxlan_port,
                )
        except Exception:
            self._drop_namespace(record)
            raise
        self._sandboxes[net.name] = sandbox
        if not self.gc_thresholds:  # kernel-wide: once per data plane
            self.gc_thresholds = raise_gc_thresholds(ns)
        maps = self._remotes.maps(net.name)
        if net.encrypted:
            self.encryption.push(sandbox, maps)
        else:
            fwd.vxlan_program(self._neigh_socket(ns), sandbox.uplink_index, maps)

    @_kernel_call
    def remove_network(self, name: str) -> None:
        """Remove the sandbox of network ``name`` (detaching its containers first).

        Remembered remote endpoints stay, to be replayed if the network returns.
        """
        sandbox = self._sandboxes.pop(name, None)
        if sandbox is None:
            return
        for container in list(sandbox.ports):
            self._unplug(self._containers[container], sandbox)
        if sandbox.net.encrypted:
            self.encryption.remove(sandbox)
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

    def _neigh_socket(self, ns: str) -> NeighSocket:
        sock = self._neigh.get(ns)
        if sock is None:
            sock = self._neigh[ns] = NeighSocket(kns.ns_path(ns))
        return sock

    def _drop_namespace(self, record: Created) -> None:
        self._handles.close(record.name)
        sock = self._neigh.pop(record.name, None)
        if sock is not None:
            sock.close()
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
        mac = norm_mac(mac)
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
            ifname = plug(
                self._handles, self._neigh_socket(sandbox.ns), entry, sandbox, ip, prefixlen, mac
            )
        except Exception:
            if not entry.ifaces:
                self._forget_container(entry)
            if new_network and not sandbox.ports:
                self.remove_network(net.name)
            raise
        entry.ifaces[net.name] = (ifname, ip, mac)
        return ifname

    def _new_container(self, container: str) -> Container:
        ns = names.container_netns(self.prefix, self.host, container)
        record = Created(kind=NETNS, name=ns, owner=f"container:{container}")
        self._create_namespace(record)
        entry = Container(name=container, ns=ns, record=record)
        self._containers[container] = entry
        return entry

    def _forget_container(self, entry: Container) -> None:
        del self._containers[entry.name]
        self._drop_namespace(entry.record)

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
        self._unplug(entry, sandbox)
        if not sandbox.ports:
            self.remove_network(network)

    def _unplug(self, entry: Container, sb: Sandbox) -> None:
        unplug(self._neigh_socket(sb.ns), entry, sb)
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
        remote = fwd.norm_remote(ip, mac, vtep)
        if self._remotes.add(network, remote):
            self._sync(network, remote)

    @_kernel_call
    def remove_remote(self, network: str, ip: str, mac: str, vtep: str) -> None:
        """Forget a remote endpoint and unprogram it.

        An IP or MAC still claimed by another remembered endpoint is re-pointed to
        that endpoint instead of deleted (an IP reused on another host).
        """
        remote = fwd.norm_remote(ip, mac, vtep)
        self._remotes.remove(network, remote)
        self._sync(network, remote)

    def _sync(self, network: str, remote: fwd.Remote) -> None:
        sandbox = self._sandboxes.get(network)
        if sandbox is None:
            return
        if sandbox.net.encrypted:  # the user-space table is replaced whole
            self.encryption.push(sandbox, self._remotes.maps(network))
            return
        ip, mac, _ = remote
        fwd.vxlan_sync(
            self._neigh_socket(sandbox.ns), sandbox.uplink_index, self._remotes, network, ip, mac
        )

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
        self._remotes.replace(network, desired)
        sandbox = self._sandboxes.get(network)
        if sandbox is None:
            return {"added": [], "removed": []}
        maps = self._remotes.maps(network)
        result = fwd.diff(maps, self._held(sandbox))
        if sandbox.net.encrypted:
            self.encryption.push(sandbox, maps)  # the user-space table is replaced whole
        else:
            fwd.vxlan_apply(self._neigh_socket(sandbox.ns), sandbox.uplink_index, result)
        if result["added"] or result["removed"]:
            log.info("reconciled %s on %s: %s", network, self.host, result)
        return result

    @_kernel_call
    def kernel_state(self, network: str) -> fwd.Held:
        """What the kernel holds for ``network``: FDB ``{(mac, vtep)}``, neighbours
        ``{(ip, mac)}`` on the VXLAN device (both empty without a sandbox)."""
        sandbox = self._sandboxes.get(network)
        if sandbox is None:
            return set(), set()
        return self._held(sandbox)

    def _held(self, sb: Sandbox) -> fwd.Held:
        if sb.net.encrypted:
            return self.encryption.held(sb)
        return fwd.vxlan_held(self._neigh_socket(sb.ns), sb.uplink_index)

    # --- underlay -------------------------------------------------------------------

    @_kernel_call
    def underlay_mtu(self) -> int:
        """MTU of the host interface carrying ``underlay_ip``."""
        return self._underlay_mtu()

    def _underlay_mtu(self) -> int:
        return underlay_mtu(self._handles.ipr(self.host_netns), self.underlay_ip)

    @_kernel_call
    def offloads(self, network: str) -> dict[str, dict[str, bool]]:
        """Key offload features of the sandbox's uplink, gateway device and veth ports.

        GSO/TSO on the VXLAN device and UDP-tunnel GSO on the underlay are what keep
        overlay throughput near the underlay's (docs/dataplane.md).
        """
        sandbox = self._sandboxes.get(network)
        if sandbox is None:
            raise DataPlaneError(f"network {network!r} has no sandbox here")
        ports = [] if sandbox.macvlan else list(sandbox.ports.values())  # macvlans: in containers
        ifnames = [sandbox.uplink, sandbox.gateway_device, *ports]
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
        try:
            self.encryption.close()
        except Exception as exc:
            errors.append(exc)
        self._handles.close(None, everything=True)
        for sock in self._neigh.values():
            sock.close()
        self._neigh.clear()
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

    def __repr__(self) -> str:
        return f"DataPlane(host={self.host!r}, underlay_ip={self.underlay_ip!r}, pid={os.getpid()})"
