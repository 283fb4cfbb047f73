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
then the first in topology order; a step places all its new tasks at once (counting
the ones still to start). A task name placed before (a service removed and created
again, or scaled down and up) goes back to the host it was last placed on while that
host runs (:mod:`overlaysim.core.placement`; the emulator's agents boot at distinct
times, the simulator's first boots all at epoch 0, so only the emulator would refuse
it elsewhere). Scaling down removes the highest slots first. A crashed host's
tasks are not moved elsewhere: they stop being live with their host (their entries go
when the cluster declares it dead) and come back when it restarts.

A service step takes time, the same in every backend (the scenario's
``service_timing``): its task changes come one after another, ``task_interval`` apart,
the first at the step's time (as Docker's orchestrator updates tasks one by one), and
a host whose last task on a network is removed leaves that network ``detach_delay``
later (``World.detach`` keeps that leave and plays it for every backend). The later
changes go on the world's timeline (:mod:`overlaysim.world.agenda`); a new step on a
service first plays what is still pending of its earlier ones.

Changing the endpoint mode is a rolling replacement: each task in turn is removed and,
``detach_delay`` later, created again in the same slot on the same host with
generation + 1 (a new address, as a replaced task gets); the VIP is taken (to ``vip``)
at the step and the old one given back (to ``dnsrr``) after the last replacement. After
each task change the live task set of its service is reported to the world's DNS sink
(:class:`~overlaysim.metrics.dns.DnsTracker`), whose change rows are what
``dns_convergence_s`` and ``stale_dns_window_s`` are measured against.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from overlaysim.core.placement import LastHosts
from overlaysim.core.services import EndpointMode, TaskSpec, parse_port_pair, task_name
from overlaysim.metrics.truth import Truth
from overlaysim.scenario.schema import ServiceTiming
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
    timing: ServiceTiming

    @property
    def up(self) -> set[str]: ...

    def record(self, t: float, kind: str, **fields: Any) -> None: ...

    def add(self, c: Container, network: str) -> None: ...

    def detach(self, name: str, network: str | None, leave_after: float = 0.0) -> None: ...

    def later(self, at: float, work: Callable[[], None]) -> None: ...

    def play_piece(
        self, action: str, at: float, work: Callable[[], None], **subject: Any
    ) -> None: ...


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
    #: slot -> host of tasks placed by a step whose creation is still pending.
    planned: dict[int, str] = field(default_factory=dict)

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


@dataclass(slots=True, eq=False)
class _Piece:
    """One task change of a service step, due at ``at`` (see the module docstring)."""

    service: str
    action: str
    at: float
    work: Callable[[], None]
    done: bool = False


class Services:
    """The world's services and the verbs that change them (see the module docstring)."""

    def __init__(self, world: ServiceWorld) -> None:
        self.world = world
        self.by_name: dict[str, ServiceState] = {}
        #: (network, service) -> the live task IPs last reported to the sink.
        self._reported: dict[tuple[str, str], dict[str, str]] = {}
        #: service -> its steps' task changes not played yet, in order.
        self._pending: dict[str, list[_Piece]] = {}
        #: host -> tasks placed there whose creation is still pending (any service).
        self._planned: dict[str, int] = {}
        self._last_hosts = LastHosts()  # see :meth:`_place`

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
        self.flush(name)
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
        if ports:
            svc.ingress_vip = w.backend.publish(name, ports)
        placed, short = self._place(svc, replicas)
        self._pace(svc, "service_create", t, [self._starter(svc, s, h) for s, h in placed])
        if not placed:
            self._report([svc], t)
        if short:
            raise ServiceError(f"no running host for a task of {svc.name}")

    def scale(self, name: str, replicas: int) -> None:
        self.flush(name)
        svc = self._get(name)
        t = self.world.backend.now()
        have = len(svc.slots)
        if replicas > have:
            placed, short = self._place(svc, replicas - have)
            self._pace(svc, "service_scale", t, [self._starter(svc, s, h) for s, h in placed])
            if short:
                raise ServiceError(f"no running host for a task of {svc.name}")
            return
        gone = sorted(svc.slots, reverse=True)[: have - replicas]
        self._pace(svc, "service_scale", t, [self._stopper(svc, slot) for slot in gone])

    def update(self, name: str, mode: EndpointMode) -> None:
        """Switch the endpoint mode: each task in turn is removed and, ``detach_delay``
        later, created again in its slot on its host (generation + 1, a new address)."""
        self.flush(name)
        svc = self._get(name)
        if mode is svc.mode:
            raise ServiceError(f"service {name} is already in {mode.value} mode")
        w = self.world
        t = w.backend.now()
        old_vip = svc.vip
        svc.vip = w.backend.reserve_vip(name, svc.network) if mode is EndpointMode.VIP else None
        svc.mode, svc.gen = mode, svc.gen + 1

        def release() -> None:
            if old_vip is not None:
                w.backend.release_vip(name, svc.network)

        slots = [k for k in sorted(svc.slots) if svc.slots[k] in w.containers]
        if not slots:
            release()
            return
        works = []
        for i, slot in enumerate(slots):
            last = i == len(slots) - 1
            works.append(self._replacer(svc, slot, release if last else None))
        self._pace(svc, "service_update", t, works)

    def rm(self, name: str) -> None:
        self.flush(name)
        svc = self._get(name)
        t = self.world.backend.now()
        works = [self._stopper(svc, slot) for slot in sorted(svc.slots)]

        def finish() -> None:
            try:
                if svc.vip is not None:
                    self.world.backend.release_vip(name, svc.network)
                if svc.publish:
                    self.world.backend.unpublish(name)
            finally:
                del self.by_name[name]
                self._report([svc], self.world.backend.now())

        if not works:
            finish()
            return
        last = works[-1]

        def last_then_finish() -> None:
            try:
                last()
            finally:
                finish()

        works[-1] = last_then_finish
        self._pace(svc, "service_rm", t, works)

    # -- pacing: one task change at a time ----------------------------------------------------

    def _pace(
        self, svc: ServiceState, action: str, start: float, works: list[Callable[[], None]]
    ) -> None:
        """Task change ``i`` of a step begun at ``start`` is due at
        ``start + i * task_interval``: the first plays now, inside the step, the others
        later on the world's timeline."""
        interval = self.world.timing.task_interval
        for i, work in enumerate(works):
            piece = self._piece(svc, action, round(start + i * interval, 9), work)
            if i == 0:
                self._run(piece, inside_step=True)
            else:
                self.world.later(piece.at, lambda p=piece: self._run(p))

    def _piece(self, svc: ServiceState, action: str, at: float, work: Callable[[], None]) -> _Piece:
        piece = _Piece(svc.name, action, at, work)
        self._pending.setdefault(svc.name, []).append(piece)
        return piece

    def _run(self, piece: _Piece, *, inside_step: bool = False) -> None:
        if piece.done:
            return
        piece.done = True
        pending = self._pending.get(piece.service, [])
        if piece in pending:
            pending.remove(piece)
        if inside_step:  # its refusal is the step's
            piece.work()
            return
        self.world.play_piece(piece.action, piece.at, piece.work, service=piece.service)

    def flush(self, name: str) -> None:
        """Play now what is still pending of ``name``'s earlier steps (a new step on a
        service comes after all of its earlier ones; late, never early)."""
        while self._pending.get(name):
            self._run(self._pending[name][0])
        self._pending.pop(name, None)

    def _starter(self, svc: ServiceState, slot: int, host: str) -> Callable[[], None]:
        def start() -> None:
            t = self.world.backend.now()
            self._unplan(svc, slot)
            try:
                self._new_task(svc, slot, host)
            finally:
                self._report([svc], t)

        return start

    def _stopper(self, svc: ServiceState, slot: int) -> Callable[[], None]:
        def stop() -> None:
            t = self.world.backend.now()
            name = svc.slots.pop(slot, None)
            try:
                if name is not None:
                    self.world.detach(name, None, leave_after=self.world.timing.detach_delay)
            finally:
                self._report([svc], t)

        return stop

    def _replacer(
        self, svc: ServiceState, slot: int, then: Callable[[], None] | None
    ) -> Callable[[], None]:
        """Remove the task in ``slot`` now, and create its successor there on the same
        host ``detach_delay`` later (then run ``then``)."""

        def replace() -> None:
            w = self.world
            t = w.backend.now()
            c = w.containers.get(svc.slots.get(slot, ""))
            if c is None:
                if then is not None:
                    then()
                return
            host = c.host
            delay = w.timing.detach_delay
            try:
                w.detach(c.name, None, leave_after=delay)
            finally:
                self._report([svc], t)

            def successor() -> None:
                t2 = w.backend.now()
                try:
                    self._new_task(svc, slot, host)
                finally:
                    self._report([svc], t2)
                    if then is not None:
                        then()

            piece = self._piece(svc, "service_update", round(t + delay, 9), successor)
            if delay <= 0:
                self._run(piece, inside_step=True)
            else:
                w.later(piece.at, lambda: self._run(piece))

        return replace

    # -- tasks -----------------------------------------------------------------------------

    def _get(self, name: str) -> ServiceState:
        svc = self.by_name.get(name)
        if svc is None:
            raise ServiceError(f"no service {name}")
        return svc

    def _place(self, svc: ServiceState, n: int) -> tuple[list[tuple[int, str]], bool]:
        """Slots and hosts for ``n`` new tasks of ``svc``, decided now for all of them (as
        a scheduler assigns a step's tasks at once; they start one by one later); and
        whether some found no running host."""
        w = self.world
        tasks: dict[str, int] = {}
        for cname in svc.slots.values():
            c = w.containers.get(cname)
            if c is not None:
                tasks[c.host] = tasks.get(c.host, 0) + 1
        for host in svc.planned.values():
            tasks[host] = tasks.get(host, 0) + 1
        containers: dict[str, int] = dict(self._planned)
        for c in w.containers.values():
            containers[c.host] = containers.get(c.host, 0) + 1
        out: list[tuple[int, str]] = []
        for _ in range(n):
            taken = set(svc.slots) | set(svc.planned)
            slot = next(k for k in range(1, len(taken) + 2) if k not in taken)
            name = task_name(svc.name, slot)
            host = self._last_hosts.sticky(name, w.up)
            if host is None:
                host = place(w.topology.hosts, w.up, tasks, containers)
            if host is None:
                return out, True
            self._last_hosts.placed(name, host)
            svc.planned[slot] = host
            self._planned[host] = self._planned.get(host, 0) + 1
            tasks[host] = tasks.get(host, 0) + 1
            containers[host] = containers.get(host, 0) + 1
            out.append((slot, host))
        return out, False

    def _unplan(self, svc: ServiceState, slot: int) -> None:
        host = svc.planned.pop(slot, None)
        if host is not None:
            left = self._planned.get(host, 0) - 1
            if left > 0:
                self._planned[host] = left
            else:
                self._planned.pop(host, None)

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

        ``t`` is when the change began (a task change of a step, a crash, a restart); the
        emulator's collector retimes it to the owner's commit, which comes later.
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
