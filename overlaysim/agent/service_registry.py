"""The manager's services: records, VIPs from the network's IPAM, placement. No I/O.

A service is what ``overlaysim service create`` asked for: a name, a network, a number
of replicas, an endpoint mode (``vip``: one virtual IP balanced over the tasks;
``dnsrr``: the name returns the task IPs), an optional command every task runs, and a
spec generation (``gen``) that every change of the spec increments. Its tasks are
``<service>.<slot>`` placed round robin over the live hosts (one cursor across services,
as before), except that a task name that ran before goes back to the host it last ran
on while that host is live (:mod:`overlaysim.core.placement`: elsewhere, ``service rm
web`` then ``service create web`` could fail until the tombstone is reaped, 30 minutes).
The registry only keeps the records; starting and stopping the task containers is the
caller's job (the CLI or the emulator asks each host's agent), with the task spec
:func:`task_spec` gives, which the agent writes into the task's endpoint entries (see
:mod:`overlaysim.core.services`).

Published ports (``--publish P:T``, the routing mesh): the service's tasks also join
the ``ingress`` network (created on first use), where the service has a second VIP;
every host DNATs its underlay address's port ``P`` to that VIP's port ``T`` and its
ingress sandbox balances it over the tasks (:mod:`overlaysim.agent.ingress`).
:meth:`ServiceRegistry.ingress_ports` is the set every host must hold. A port is
refused when another service publishes it or the agents use it themselves.

The VIP is an address of the network's IPAM held by the pseudo-endpoint
``vip:<service>`` (so no container gets it, ``network inspect`` shows it, and a network
with a service on it cannot be removed). ``vip_reserve``/``vip_release`` expose the same
to other callers (the emulator's World backend reserves VIPs through them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from overlaysim.core.cluster import Cluster
from overlaysim.core.cluster_errors import (
    AddressInUse,
    ClusterError,
    InvalidSpec,
    NetworkNotFound,
)
from overlaysim.core.network import NetworkSpec
from overlaysim.core.placement import LastHosts
from overlaysim.core.services import (
    PUBLISH_EXPECTED,
    RESERVED_PORTS,
    TASKS_PREFIX,
    EndpointMode,
    check_dns_name,
    parse_port_pair,
    vip_endpoint,
)

__all__ = [
    "SERVICE_OPS",
    "INGRESS",
    "NoLiveHosts",
    "PortInUse",
    "ServiceExists",
    "ServiceNotFound",
    "ServiceRecord",
    "ServiceRegistry",
    "parse_mode",
    "task_spec",
    "vip_endpoint",
]


class ServiceExists(ClusterError):
    """A service with that name already exists."""


class ServiceNotFound(ClusterError):
    """No service has that name."""


class NoLiveHosts(ClusterError):
    """Placement found no live host to run tasks on."""


class PortInUse(ClusterError):
    """A published port is already taken (another service, or the agents themselves)."""


#: The routing mesh's network, which every published service's tasks join.
INGRESS = "ingress"


def parse_publish(items: object) -> tuple[tuple[int, int], ...]:
    """``[[P, T], ...]`` or ``["P:T", ...]`` as port pairs (InvalidSpec with the value)."""
    if not isinstance(items, list | tuple):
        raise InvalidSpec(f"publish {items!r}: expected a list of PUBLISHED:TARGET")
    out = []
    for item in items:
        try:
            out.append(parse_port_pair(item))
        except ValueError:
            raise InvalidSpec(f"publish {item!r}: expected {PUBLISH_EXPECTED}") from None
    ports = [p for p, _ in out]
    if len(set(ports)) != len(ports):
        raise InvalidSpec(f"publish {items!r}: a published port is listed twice")
    return tuple(out)


def parse_mode(mode: object) -> EndpointMode:
    """``vip`` or ``dnsrr``; anything else is one line naming the value."""
    try:
        return EndpointMode(mode)
    except ValueError:
        raise InvalidSpec(
            f"endpoint mode {mode!r}: unknown; expected vip or dnsrr (as Docker has)"
        ) from None


def check_service_name(name: object) -> str:
    """A service name: a DNS name not starting ``tasks.`` (InvalidSpec otherwise)."""
    try:
        n = check_dns_name(name, "service name")  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidSpec(str(exc)) from None
    if n.startswith(TASKS_PREFIX) or n == TASKS_PREFIX.rstrip("."):
        raise InvalidSpec(f"service name {name!r}: 'tasks' is reserved for tasks.<service>")
    return n


def check_replicas(replicas: object) -> int:
    if type(replicas) is not int or replicas < 0:
        raise InvalidSpec(f"replicas {replicas!r}: expected an integer >= 0")
    return replicas


@dataclass(slots=True)
class ServiceRecord:
    """One service as the manager holds it (mutable: scale and update change it)."""

    name: str
    network: str
    mode: EndpointMode
    vip: str | None
    command: tuple[str, ...] = ()
    gen: int = 1
    #: Published ports (P, T), and the service's VIP on the ingress network.
    publish: tuple[tuple[int, int], ...] = ()
    ingress_vip: str | None = None
    #: slot -> host, in slot order.
    slots: dict[int, str] = field(default_factory=dict)

    @property
    def tasks(self) -> list[tuple[str, str]]:
        return [(f"{self.name}.{slot}", host) for slot, host in sorted(self.slots.items())]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "network": self.network,
            "replicas": len(self.slots),
            "mode": self.mode.value,
            "vip": self.vip,
            "gen": self.gen,
            "command": list(self.command),
            "tasks": [list(t) for t in self.tasks],
            "publish": [list(p) for p in self.publish],
            "ingress_vip": self.ingress_vip,
            "networks": [self.network, INGRESS] if self.publish else [self.network],
        }


def task_spec(service: dict[str, Any], task: str) -> dict[str, Any]:
    """The agent's ``task`` request field for ``task`` of the service dict ``service``."""
    slot = int(task.rpartition(".")[2])
    spec: dict[str, Any] = {
        "service": service["name"],
        "slot": slot,
        "mode": service["mode"],
        "gen": service["gen"],
    }
    if service.get("vip"):
        spec["vip"] = service["vip"]
    if service.get("ingress_vip"):
        # the VIP differs per network: the ingress one is the routing mesh's
        spec["vips"] = {INGRESS: service["ingress_vip"]}
    return spec


class ServiceRegistry:
    """Service records over ``cluster`` (for VIPs), placed over ``live_hosts()``."""

    def __init__(self, cluster: Cluster, live_hosts: Callable[[], list[str]]) -> None:
        self.cluster = cluster
        self.live_hosts = live_hosts
        self.services: dict[str, ServiceRecord] = {}
        #: Published ports of services placed by someone else (the emulator's World):
        #: service -> (ports, ingress VIP). In :meth:`ingress_ports` like the others.
        self.published: dict[str, tuple[tuple[tuple[int, int], ...], str]] = {}
        self._next_host = 0  # round-robin cursor, kept across services
        self._last_hosts = LastHosts()

    # --- VIPs -------------------------------------------------------------------------

    def vip_reserve(self, network: str, service: str, ip: str | None = None) -> str:
        """A VIP for ``service`` on ``network`` (the same one again if already held).

        With ``ip`` that exact address (as IPAM's requested address): a restarted manager
        is given back the VIPs its services held. An address another endpoint holds, or a
        service already holding another VIP, is :class:`AddressInUse` in one line.
        """
        net = self.cluster.network(network)
        ep = vip_endpoint(check_service_name(service))
        for a in self.cluster.allocations(net.name):
            if a.endpoint == ep:
                if ip is not None and ip != a.ip:
                    raise AddressInUse(
                        f"VIP {ip} of service {service} on network {net.name}: the service "
                        f"already holds VIP {a.ip}; expected that address or none"
                    )
                return a.ip
        try:
            return self.cluster.allocate(net.name, ep, ip=ip, standalone=False).ip
        except AddressInUse as exc:
            raise AddressInUse(
                f"VIP {ip} of service {service} on network {net.name}: {exc}"
            ) from None

    def vip_release(self, network: str, service: str) -> str:
        """Give ``service``'s VIP on ``network`` back to the pool; the address."""
        return self.cluster.release(network, vip_endpoint(check_service_name(service))).ip

    # --- services ---------------------------------------------------------------------

    def get(self, name: object) -> ServiceRecord:
        svc = self.services.get(name) if isinstance(name, str) else None
        if svc is None:
            raise ServiceNotFound(f"service {name!r} not found (see 'overlaysim service ls')")
        return svc

    def create(
        self,
        name: object,
        replicas: object,
        network: str,
        mode: object = "vip",
        command: Sequence[str] = (),
        publish: object = (),
    ) -> ServiceRecord:
        n = check_service_name(name)
        k = check_replicas(replicas)
        m = parse_mode(mode)
        ports = parse_publish(list(publish) if isinstance(publish, tuple) else publish)
        net = self.cluster.network(network)
        if n in self.services or n in self.published:
            raise ServiceExists(f"service {n} already exists")
        if ports and net.name == INGRESS:
            raise InvalidSpec(f"network {INGRESS!r}: the routing mesh's own; pick another")
        self._check_ports(ports)
        hosts = self._hosts(n, k)
        vip = self.vip_reserve(net.name, n) if m is EndpointMode.VIP else None
        ingress_vip = self.vip_reserve(self._ingress(), n) if ports else None
        svc = ServiceRecord(
            n, net.name, m, vip, tuple(command), publish=ports, ingress_vip=ingress_vip
        )
        for slot in range(1, k + 1):
            svc.slots[slot] = self._place(hosts, f"{n}.{slot}")
        self.services[n] = svc
        return svc

    def scale(self, name: object, replicas: object) -> tuple[ServiceRecord, list, list]:
        """Set the number of tasks: (record, added [task, host], removed [task, host])."""
        svc = self.get(name)
        k = check_replicas(replicas)
        added, removed = [], []
        while len(svc.slots) > k:  # the highest slots go first
            slot = max(svc.slots)
            removed.append([f"{svc.name}.{slot}", svc.slots.pop(slot)])
        if len(svc.slots) < k:
            hosts = self._hosts(svc.name, k - len(svc.slots))
            slot = 1
            while len(svc.slots) < k:
                if slot not in svc.slots:
                    svc.slots[slot] = self._place(hosts, f"{svc.name}.{slot}")
                    added.append([f"{svc.name}.{slot}", svc.slots[slot]])
                slot += 1
        return svc, added, removed

    def update(self, name: object, mode: object) -> ServiceRecord:
        """Change the endpoint mode (a new spec generation; VIP reserved or released)."""
        svc = self.get(name)
        m = parse_mode(mode)
        if m is svc.mode:
            return svc
        if m is EndpointMode.VIP:
            svc.vip = self.vip_reserve(svc.network, svc.name)
        else:
            self.vip_release(svc.network, svc.name)
            svc.vip = None
        svc.mode = m
        svc.gen += 1
        return svc

    def remove(self, name: object) -> ServiceRecord:
        svc = self.get(name)
        del self.services[svc.name]
        for network, vip in ((svc.network, svc.vip), (INGRESS, svc.ingress_vip)):
            if vip is not None:
                try:
                    self.vip_release(network, svc.name)
                except ClusterError:
                    pass  # the network or the address is already gone
        return svc

    def publish(self, service: object, publish: object, ip: str | None = None) -> str:
        """Hold ``publish`` for ``service``, whose tasks someone else places (the World in
        emulation): its ingress VIP (``ip``: that address, as a restarted manager is
        given back). The same ports again return the same VIP."""
        n = check_service_name(service)
        ports = parse_publish(list(publish) if isinstance(publish, tuple) else publish)
        if not ports:
            raise InvalidSpec(f"publish {publish!r}: expected at least one PUBLISHED:TARGET")
        if n in self.services:
            raise ServiceExists(f"service {n} already exists (made by service create)")
        held = self.published.get(n)
        if held is not None:
            if held[0] != ports:
                raise PortInUse(f"service {n} already publishes {list(held[0])}")
            return self.vip_reserve(INGRESS, n, ip)
        self._check_ports(ports)
        vip = self.vip_reserve(self._ingress(), n, ip)
        self.published[n] = (ports, vip)
        return vip

    def unpublish(self, service: object) -> str:
        """Forget ``service``'s published ports and give its ingress VIP back."""
        n = check_service_name(service)
        if self.published.pop(n, None) is None:
            raise ServiceNotFound(f"service {n!r} publishes no port")
        return self.vip_release(INGRESS, n)

    def ingress_ports(self) -> list[list[Any]]:
        """``[[P, ingress VIP, T, service], ...]``: what every host's mesh must forward."""
        return sorted(
            [
                *(
                    [p, s.ingress_vip, t, s.name]
                    for s in self.services.values()
                    for p, t in s.publish
                    if s.ingress_vip is not None
                ),
                *([p, vip, t, n] for n, (ports, vip) in self.published.items() for p, t in ports),
            ]
        )

    def _check_ports(self, ports: tuple[tuple[int, int], ...]) -> None:
        held = {p: s.name for s in self.services.values() for p, _ in s.publish}
        held.update({p: n for n, (pp, _) in self.published.items() for p, _ in pp})
        for p, _ in ports:
            if p in held:
                raise PortInUse(f"published port {p}: already used by service {held[p]}")
            if p in RESERVED_PORTS:
                raise PortInUse(f"published port {p}: used by the agents ({RESERVED_PORTS[p]})")

    def _ingress(self) -> str:
        """The ingress network's name, created on first use (not attachable)."""
        try:
            return self.cluster.network(INGRESS).name
        except NetworkNotFound:
            return self.cluster.create_network(NetworkSpec(name=INGRESS)).name

    def _hosts(self, name: str, k: int) -> list[str]:
        hosts = sorted(set(self.live_hosts()))
        if k and not hosts:
            raise NoLiveHosts(f"service {name}: no live host to place {k} tasks on")
        return hosts

    def _place(self, hosts: list[str], task: str) -> str:
        host = self._last_hosts.sticky(task, hosts)
        if host is None:  # new, or its last host is down: round robin
            host = hosts[self._next_host % len(hosts)]
            self._next_host += 1
        self._last_hosts.placed(task, host)
        return host


# --- the manager API's service operations (args map -> plain result) ------------------


def _arg(args: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = args.get(name)
    if value is None:
        if default is None:
            raise InvalidSpec(f"missing argument {name!r}")
        value = default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InvalidSpec(f"{name}={value!r}: expected {kind.__name__}")
    return value


def _create(reg: ServiceRegistry, args: dict[str, Any]) -> dict[str, Any]:
    command = _arg(args, "command", list, [])
    if not all(isinstance(c, str) for c in command):
        raise InvalidSpec(f"command={command!r}: expected a list of strings")
    name, replicas = _arg(args, "name", str), _arg(args, "replicas", int)
    mode = _arg(args, "mode", str, "vip")
    publish = _arg(args, "publish", list, [])
    network = _arg(args, "network", str)
    return reg.create(name, replicas, network, mode, command, publish).as_dict()


def _scale(reg: ServiceRegistry, args: dict[str, Any]) -> dict[str, Any]:
    svc, added, removed = reg.scale(_arg(args, "name", str), _arg(args, "replicas", int))
    return {**svc.as_dict(), "added": added, "removed": removed}


def _update(reg: ServiceRegistry, args: dict[str, Any]) -> dict[str, Any]:
    return reg.update(_arg(args, "name", str), _arg(args, "mode", str)).as_dict()


def _inspect(reg: ServiceRegistry, args: dict[str, Any]) -> dict[str, Any]:
    return reg.get(_arg(args, "name", str)).as_dict()


def _rm(reg: ServiceRegistry, args: dict[str, Any]) -> dict[str, Any]:
    return reg.remove(_arg(args, "name", str)).as_dict()


def _ls(reg: ServiceRegistry, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [s.as_dict() for s in reg.services.values()]


def _ingress_ports(reg: ServiceRegistry, args: dict[str, Any]) -> list[list[Any]]:
    return reg.ingress_ports()


def _requested_ip(args: dict[str, Any]) -> str | None:
    """The optional ``ip`` argument: an address asked for (a restore), or None."""
    ip = args.get("ip")
    if ip is not None and not isinstance(ip, str):
        raise InvalidSpec(f"ip={ip!r}: expected an IPv4 address as a string")
    return ip


def _vip_reserve(reg: ServiceRegistry, args: dict[str, Any]) -> dict[str, Any]:
    ip = _requested_ip(args)
    return {"ip": reg.vip_reserve(_arg(args, "network", str), _arg(args, "service", str), ip)}


def _vip_release(reg: ServiceRegistry, args: dict[str, Any]) -> dict[str, Any]:
    return {"ip": reg.vip_release(_arg(args, "network", str), _arg(args, "service", str))}


def _mesh_publish(reg: ServiceRegistry, args: dict[str, Any]) -> dict[str, Any]:
    ip = _requested_ip(args)
    return {"ip": reg.publish(_arg(args, "service", str), _arg(args, "publish", list), ip)}


def _mesh_unpublish(reg: ServiceRegistry, args: dict[str, Any]) -> dict[str, Any]:
    return {"ip": reg.unpublish(_arg(args, "service", str))}


#: Manager operations served by the registry (request ``{"op": name, "args": {...}}``).
SERVICE_OPS: dict[str, Callable[[ServiceRegistry, dict[str, Any]], Any]] = {
    "service_create": _create,
    "service_scale": _scale,
    "service_update": _update,
    "service_inspect": _inspect,
    "service_rm": _rm,
    "service_ls": _ls,
    "ingress_ports": _ingress_ports,
    "vip_reserve": _vip_reserve,
    "vip_release": _vip_release,
    "mesh_publish": _mesh_publish,
    "mesh_unpublish": _mesh_unpublish,
}
