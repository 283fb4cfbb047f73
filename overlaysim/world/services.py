"""Services in the world: the one truth of which service has which tasks where.

A service is a name on one network with an endpoint mode (``vip`` or ``dnsrr``), a VIP
in ``vip`` mode (from the network's IPAM, through the backend), a spec generation and a
number of replicas. Each replica is a task: an ordinary
:class:`~overlaysim.world.container.Container` named ``<service>.<slot>``
(:func:`~overlaysim.core.services.task_name`) that carries its
:class:`~overlaysim.core.services.TaskSpec`, created and removed through the same
backend verbs as any container. Its endpoint entries then hold the name fields, which
is how every host's embedded DNS learns it.

Placement (:func:`place`) is decided here once, for every backend: a new task goes to
the running host holding the fewest tasks of that service, then the fewest containers,
then the first in topology order. Scaling down removes the highest slots first. A crashed host's tasks are not
moved elsewhere: they stop being live with their host (their entries go when the
cluster declares it dead) and come back when it restarts.

Changing the endpoint mode is a rolling replacement at one instant: every task is
removed and created again in the same slot with generation + 1 (new addresses, as a
replaced task gets), then the VIP is given back (to ``dnsrr``) or taken (to ``vip``)
first. After each step the live task set of every service it touched is reported to
the world's DNS sink (:class:`~overlaysim.metrics.dns.DnsTracker`), whose change rows
are what ``dns_convergence_s`` and ``stale_dns_window_s`` are measured against.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from overlaysim.core.services import EndpointMode, TaskSpec, parse_port_pair, task_name
from overlaysim.metrics.truth import Truth
from overlaysim.scenario.topology import Topology
from overlaysim.world.backend import Backend
from overlaysim.world.container import Container


class DnsSink(Protocol):
    """Who is told each change of a service's truth (the DNS metrics)."""

    def change(
        self, t: float, network: str, service: str, task_ips: Iterable[str], targets: Iterable[str]
    ) -> None: ...

    def host_gone(self, t: float, host: str) -> None: ...

    def host_back(self, host: str) -> None: ...


class ServiceWorld(Protocol):
    """What services use of the world (:class:`~overlaysim.world.world.World` is one):
    its truth, containers and backend, and its container verbs."""

    backend: Backend
    topology: Topology
    truth: Truth
    containers: dict[str, Container]
    dns: DnsSink | None

    @property
    def up(self) -> set[str]: ...

    def record(self, t: float, kind: str, **fields: Any) -> None: ...

    def add(self, c: Container, network: str) -> None: ...

    def detach(self, name: str, network: str | None) -> None: ...


@dataclass(slots=True)
class ServiceState:
    """One service as the world keeps it."""

    name: str
    network: str
    mode: EndpointMode
    vip: str | None
    gen: int = 1
    #: slot -> task container name.
    slots: dict[int, str] = field(default_factory=dict)
    #: Published ports (P, T): the routing mesh, run by a backend that ``runs_tasks``.
    publish: tuple[tuple[int, int], ...] = ()
    #: The command every task runs (a backend that ``runs_tasks`` runs it).
    command: tuple[str, ...] = ()
    #: The service's VIP on the ingress network, where the backend runs the mesh.
    ingress_vip: str | None = None

    def task(self, slot: int) -> TaskSpec:
        """The spec a task in ``slot`` carries now."""
        return TaskSpec(self.name, slot, self.mode, self.vip, self.gen)


def place(
    hosts: Sequence[str],
    up: Iterable[str],
    tasks: Mapping[str, int],
    containers: Mapping[str, int] | None = None,
) -> str | None:
    """Where a new task goes: among running ``hosts``, the fewest ``tasks`` of its service,
    then the fewest ``containers`` of any kind, then the first in ``hosts`` order.
    None when no host runs."""
    running = set(up)
    others = containers or {}
    ranked = [
        (tasks.get(h, 0), others.get(h, 0), i, h) for i, h in enumerate(hosts) if h in running
    ]
    return min(ranked)[3] if ranked else None


class ServiceError(Exception):
    """A service step the world cannot play (the world skips it with this reason)."""


class Services:
    """The world's services and the verbs that change them (see the module docstring)."""

    def __init__(self, world: ServiceWorld) -> None:
        self.world = world
        self.by_name: dict[str, ServiceState] = {}
        #: (network, service) -> the live task IPs last reported to the sink.
        self._reported: dict[tuple[str, str], dict[str, str]] = {}

    # -- verbs -----------------------------------------------------------------------------

    def create(
        self,
        name: str,
        network: str,
        replicas: int,
        mode: EndpointMode,
        publish: Sequence[str] = (),
        command: Sequence[str] = (),
    ) -> None:
        """Create a service. ``publish`` (``"P:T"``, checked by the scenario loader) and
        ``command`` are held here for every backend; only one that ``runs_tasks`` runs
        them, and the ``service_spec`` row says which."""
        w = self.world
        if name in self.by_name:
            raise ServiceError(f"service {name} exists")
        taken = [
            n for n in (task_name(name, k) for k in range(1, replicas + 1)) if n in w.containers
        ]
        if taken:
            raise ServiceError(f"container {taken[0]} exists")
        ports = tuple(parse_port_pair(p) for p in publish)
        t = w.backend.now()
        vip = w.backend.reserve_vip(name, network) if mode is EndpointMode.VIP else None
        svc = self.by_name[name] = ServiceState(
            name, network, mode, vip, publish=ports, command=tuple(command)
        )
        if ports or command:
            w.record(
                t,
                "service_spec",
                subject=name,
                network=network,
                detail={
                    "publish": [f"{p}:{q}" for p, q in ports],
                    "command": list(command),
                    "run": w.backend.runs_tasks,
                },
            )
        try:
            if ports:
                svc.ingress_vip = w.backend.publish(name, ports)
            self._add_tasks(svc, replicas)
        finally:
            self._report([svc], t)

    def scale(self, name: str, replicas: int) -> None:
        svc = self._get(name)
        t = self.world.backend.now()
        try:
            have = len(svc.slots)
            if replicas > have:
                self._add_tasks(svc, replicas - have)
            for slot in sorted(svc.slots, reverse=True)[: max(0, have - replicas)]:
                self.world.detach(svc.slots.pop(slot), None)
        finally:
            self._report([svc], t)

    def update(self, name: str, mode: EndpointMode) -> None:
        svc = self._get(name)
        if mode is svc.mode:
            raise ServiceError(f"service {name} is already in {mode.value} mode")
        w = self.world
        t = w.backend.now()
        old_vip = svc.vip
        svc.vip = w.backend.reserve_vip(name, svc.network) if mode is EndpointMode.VIP else None
        svc.mode, svc.gen = mode, svc.gen + 1
        try:
            for slot in sorted(svc.slots):
                c = w.containers.get(svc.slots[slot])
                if c is None:
                    continue
                w.detach(c.name, None)
                self._new_task(svc, slot, c.host)
            if old_vip is not None:
                w.backend.release_vip(name, svc.network)
        finally:
            self._report([svc], t)

    def rm(self, name: str) -> None:
        svc = self._get(name)
        t = self.world.backend.now()
        try:
            for slot in sorted(svc.slots):
                self.world.detach(svc.slots.pop(slot), None)
            if svc.vip is not None:
                self.world.backend.release_vip(name, svc.network)
            if svc.publish:
                self.world.backend.unpublish(name)
        finally:
            del self.by_name[name]
            self._report([svc], t)

    # -- tasks -----------------------------------------------------------------------------

    def _get(self, name: str) -> ServiceState:
        svc = self.by_name.get(name)
        if svc is None:
            raise ServiceError(f"no service {name}")
        return svc

    def _add_tasks(self, svc: ServiceState, n: int) -> None:
        w = self.world
        for _ in range(n):
            slot = next(k for k in range(1, len(svc.slots) + 2) if k not in svc.slots)
            tasks: dict[str, int] = {}
            for cname in svc.slots.values():
                c = w.containers.get(cname)
                if c is not None:
                    tasks[c.host] = tasks.get(c.host, 0) + 1
            containers: dict[str, int] = {}
            for c in w.containers.values():
                containers[c.host] = containers.get(c.host, 0) + 1
            host = place(w.topology.hosts, w.up, tasks, containers)
            if host is None:
                raise ServiceError(f"no running host for a task of {svc.name}")
            self._new_task(svc, slot, host)

    def _new_task(self, svc: ServiceState, slot: int, host: str) -> None:
        name = task_name(svc.name, slot)
        svc.slots[slot] = name
        self.world.add(Container(name, host, task=svc.task(slot), command=svc.command), svc.network)

    # -- the truth the DNS metrics compare against -------------------------------------------

    def live_tasks(self, svc: ServiceState) -> dict[str, str]:
        """Task name -> address of ``svc``'s tasks that are live on running hosts."""
        w = self.world
        out = {}
        for cname in svc.slots.values():
            c = w.containers.get(cname)
            if c is not None and c.live and c.host in w.up and c.networks.get(svc.network):
                out[cname] = c.networks[svc.network]
        return out

    def live_ips(self, svc: ServiceState) -> frozenset[str]:
        """The addresses of ``svc``'s tasks that are live on running hosts."""
        return frozenset(self.live_tasks(svc).values())

    def on_host(self, host: str) -> list[ServiceState]:
        """Services with a task on ``host``."""
        w = self.world
        out = []
        for svc in self.by_name.values():
            hosts = {w.containers[n].host for n in svc.slots.values() if n in w.containers}
            if host in hosts:
                out.append(svc)
        return out

    def _report(self, services: Iterable[ServiceState], t: float) -> None:
        """Tell the sink every service whose live task set changed, as of ``t``.

        ``t`` is when the change began (a step's start, a crash, a restart): a step that
        takes real time (the emulator adds tasks one by one) is measured from its start.
        The targets are the running hosts on the network once the step is done; the
        ``service_tasks`` row carries them so the emulation's replay uses the same ones.
        """
        w = self.world
        for svc in services:
            key = (svc.network, svc.name)
            tasks = self.live_tasks(svc) if svc.name in self.by_name else {}
            before = self._reported.get(key)
            if before == tasks:
                continue
            self._reported[key] = tasks
            ips = frozenset(tasks.values())
            old = before or {}
            # the tasks whose entries this change created (new, or replaced: same name,
            # new address), and the old addresses it deleted (removed or replaced tasks)
            added = sorted(n for n in tasks if old.get(n) != tasks[n])
            removed = {n: ip for n, ip in sorted(old.items()) if tasks.get(n) != ip}
            targets = w.truth.targets(svc.network)
            if w.dns is not None:
                w.dns.change(t, svc.network, svc.name, ips, targets)
            w.record(
                t,
                "service_tasks",
                subject=svc.name,
                network=svc.network,
                detail={
                    "ips": sorted(ips, key=ipaddress.IPv4Address),
                    "targets": targets,
                    "added": added,
                    "removed": removed,
                },
            )

    def host_changed(self, services: Iterable[ServiceState], t: float) -> None:
        """A host went down or came back at ``t``: report the services it runs tasks of."""
        self._report(list(services), t)
