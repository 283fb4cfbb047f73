"""The world of one run: the ground truth, and the one place a planned step is applied.

:class:`World` keeps which hosts run, which containers exist and where, which networks
each host is attached to (through the shared fold, :class:`~overlaysim.metrics.truth.Truth`),
the active partition and impairments as wanted state, and the steps it had to skip.
:meth:`World.apply` turns each typed step into :class:`~overlaysim.world.backend.Backend`
verbs with one ``match`` (a container is a :class:`~overlaysim.world.container.Container`,
services are :class:`~overlaysim.world.services.Services`); every fact is recorded in an
:class:`~overlaysim.metrics.records.EventLog` as it becomes true.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from overlaysim.core.services import EndpointMode
from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.metrics.lag import StepLag
from overlaysim.metrics.records import EventLog
from overlaysim.metrics.truth import Truth
from overlaysim.scenario.expand import ContainerSpec
from overlaysim.scenario.schema import Scenario
from overlaysim.scenario.steps import (
    IMPAIR_KINDS,
    Attach,
    Clear,
    Crash,
    Delay,
    Detach,
    Heal,
    ImpairKind,
    Join,
    Leave,
    Link,
    Loss,
    Partition,
    Rate,
    Restart,
    RotateKeys,
    ServiceCreate,
    ServiceRm,
    ServiceScale,
    ServiceUpdate,
    Step,
)
from overlaysim.scenario.timeline import Plan
from overlaysim.world.agenda import Agenda, Work
from overlaysim.world.backend import Backend
from overlaysim.world.container import Container
from overlaysim.world.lanes import HostLanes
from overlaysim.world.services import DnsSink, ServiceError, Services


class StepSkipped(Exception):
    """A backend declines a step it cannot play; the world records it with the reason."""


@dataclass(frozen=True, slots=True)
class HostStart:
    """A (re)start the emulator finished in the background: when the step was applied,
    when the new agent started (its log's ``start`` line), and when its containers were
    back (scenario seconds)."""

    host: str
    kind: str  # node_restart or node_join
    applied: float
    started: float
    done: float


def seed_hosts(host: str, managers: Collection[str], up: Collection[str]) -> list[str]:
    """Whom ``host`` joins through: the running managers, else up to three running hosts."""
    seeds = [m for m in managers if m in up and m != host]
    return seeds or [h for h in sorted(up) if h != host][:3]


class World:
    """The truth of a run plus the backend that makes it so."""

    def __init__(
        self,
        scenario: Scenario,
        backend: Backend,
        *,
        tracker: ConvergenceTracker | None = None,
        events: EventLog | None = None,
        dns: DnsSink | None = None,
    ) -> None:
        self.scenario = scenario
        self.backend = backend
        self.topology = scenario.resolved_topology
        self.managers = list(scenario.managers or self.topology.hosts[:1])
        self.events = events if events is not None else EventLog()
        self.truth = Truth(tracker)
        self.containers: dict[str, Container] = {}
        #: host -> network -> live containers of that host on it.
        self.attached: dict[str, dict[str, int]] = {}
        #: Wanted impairments: (kind, link or None for everywhere) -> value.
        self.impairments: dict[tuple[ImpairKind, Link | None], float] = {}
        self.partition_groups: list[list[str]] | None = None
        self.skipped: list[dict[str, Any]] = []
        self.done = 0
        self.last = ""
        #: How late each step started: an earlier slow step delays the next ones.
        self.lags: list[StepLag] = []
        self._lock = threading.RLock()  # the emulator starts containers in parallel
        #: Told every change of a service's live tasks, and hosts going and coming back.
        self.dns = dns
        #: How service steps unfold in time (``service_timing``), for every backend.
        self.timing = scenario.timing
        #: The pieces of steps that come later than the step (see :meth:`timeline`).
        self.agenda = Agenda()
        #: (host, network) -> when the host leaves it (its last container went; see
        #: :meth:`detach`). The one record of a pending leave, for every backend.
        self._leaving: dict[tuple[str, str], float] = {}
        self.services = Services(self)
        #: Backends whose steps take real time (the emulator) play a host's container
        #: steps and the slow part of its (re)start on that host's lane.
        self.lanes = HostLanes()
        #: Hosts whose (re)start still runs on their lane.
        self._starting: set[str] = set()
        #: container -> host of its last attach handed to a lane (it may not be in
        #: :attr:`containers` yet when a detach of it comes due).
        self._placed: dict[str, str] = {}
        #: Finished background (re)starts, in the order they finished.
        self.starts: list[HostStart] = []

    @property
    def up(self) -> set[str]:
        """Hosts running now."""
        return self.truth.up

    def now(self) -> float:
        return self.backend.now()

    # -- recording -------------------------------------------------------------------------

    def record(self, t: float, kind: str, **fields: Any) -> None:
        """Log one fact and fold it into the truth."""
        with self._lock:
            self.events.add(t, kind, **fields)
            self.truth.fold(
                t,
                kind,
                node=fields.get("node", ""),
                subject=fields.get("subject", ""),
                network=fields.get("network", ""),
            )

    def skip(self, action: str, **info: Any) -> None:
        with self._lock:
            self.skipped.append({"t": self.backend.now(), "action": action, **info})

    def commit(self, t: float, host: str, network: str, key: str, op: str) -> None:
        with self._lock:
            self.events.add(t, "entry_commit", node=host, network=network, key=key, op=op)
            self.truth.commit(t, host, network, key, op)

    # -- the timeline ----------------------------------------------------------------------

    def boot(self, the_plan: Plan) -> None:
        """Start the initial hosts (managers first), then the initial containers."""
        order = [m for m in self.managers if m in the_plan.initial_hosts]
        order += [h for h in the_plan.initial_hosts if h not in order]
        times = self.backend.boot(
            order,
            formed=self.scenario.boot == "formed",
            seeds=lambda h, started: seed_hosts(h, self.managers, started),
        )
        for h in order:
            self.record(times[h], "node_start", subject=h)
        self.start_containers(the_plan.containers)

    def timeline(self, steps: list[Step]) -> Iterator[tuple[float, Work]]:
        """What a backend's driver plays, in time order: ``steps`` (each through
        :meth:`apply`) and the later pieces of steps already played (a service step's
        next task, a host's delayed network leave; :mod:`overlaysim.world.agenda`). The
        driver waits until each time, then calls the work."""
        return self.agenda.merge(steps, self.apply)

    def later(self, at: float, work: Work, *, last: bool = False) -> None:
        """Put ``work`` on the timeline at scenario time ``at`` (``last``: after every
        other piece and step due then; :meth:`Agenda.later`)."""
        self.agenda.later(at, work, last=last)

    def play_piece(self, action: str, at: float, work: Callable[[], None], **subject: Any) -> None:
        """Play one later piece of a step due at ``at`` like a step that touches every
        host: after the lanes settle, its lag kept (``action``), a refusal skipped with
        the reason."""
        if self.backend.steps_in_background:
            self.lanes.settle()
        now = self.backend.now()
        with self._lock:
            self.lags.append(StepLag(at, action, max(0.0, now - at)))
        try:
            work()
        except (StepSkipped, ServiceError) as exc:
            self.skip(action, **subject, reason=str(exc))
        except Exception as exc:
            why = self.backend.refused(exc)
            if why is None:
                raise
            self.skip(action, **subject, reason=why)

    def apply(self, step: Step) -> None:
        """Apply one step; refusals the backend names skip it, with the reason.

        With a backend whose ``steps_in_background`` is set (the emulator), a container
        step goes to its host's lane (:class:`~overlaysim.world.lanes.HostLanes`) and
        the timeline goes on; a restart or join gives the host its links back now and
        finishes on the lane. Every other step first waits for the lanes of the hosts
        it touches, so each host sees its steps in order. A step's lag is measured when
        its work begins, so a wait behind a host's earlier step counts.
        """
        if not self.backend.steps_in_background:
            self._play(step)
            return
        lane = self._lane(step)
        if lane is not None:
            # an attach asks the serving manager for an address: not while it restarts
            self.lanes.settle([m for m in self.managers if m in self._starting and m != lane])
            self.lanes.submit(lane, lambda: self._play(step))
            return
        hosts = self._touches(step)
        if isinstance(step, Restart | Join):  # a (re)starting host joins through the managers
            hosts = (hosts or set()) | set(self.managers)
        self.lanes.settle(hosts)
        self._play(step)

    def settle(self, hosts: Collection[str] | None = None) -> None:
        """Wait for the lanes of ``hosts`` (None: all); the first error met there is
        raised here. The lags are kept in the plan's order."""
        self.lanes.settle(hosts)
        with self._lock:
            self.lags.sort(key=lambda lag: lag.at)

    def close(self) -> list[str]:
        """Finish the lanes' running work, drop the rest, stop the workers (a run's end,
        also after a failure or Ctrl-C); returns their errors as lines, never raises."""
        errors = [f"{type(exc).__name__}: {exc}" for exc in self.lanes.close()]
        with self._lock:
            self.lags.sort(key=lambda lag: lag.at)
        return errors

    def _play(self, step: Step) -> None:
        now = self.backend.now()
        with self._lock:
            self.last = f"{step.at:.1f}s {step.action}"
            self.lags.append(StepLag(step.at, step.action, max(0.0, now - step.at)))
        self.record(now, "scenario", op=step.action, detail=step.describe())
        try:
            self._apply(step)
        except StepSkipped as exc:
            self.skip(step.action, **_subject(step), reason=str(exc))
        except Exception as exc:
            why = self.backend.refused(exc)
            if why is None:
                raise
            self.skip(step.action, **_subject(step), reason=why)
        with self._lock:
            self.done += 1

    def _lane(self, step: Step) -> str | None:
        """The host on whose lane ``step`` runs (None: it runs on the timeline)."""
        match step:
            case Attach(container=name, host=host):
                self._placed[name] = host
                return host
            case Detach(container=name):
                c = self.containers.get(name)
                return c.host if c is not None else self._placed.get(name)
            case _:
                return None

    def _apply(self, step: Step) -> None:
        match step:
            case Loss(percent=percent, link=link):
                self.impair("loss", percent, link)
            case Delay(ms=ms, jitter_ms=jitter, link=link):
                self.impair("delay", ms, link, jitter or 0.0)
            case Rate(mbps=mbps, link=link):
                self.impair("rate", mbps, link)
            case Clear(kind=kind, link=link):
                self.clear(kind, link)
            case Partition(groups=groups, rest=rest):
                self.partition(groups, rest=rest)
            case Heal():
                self.heal()
            case Crash(host=host):
                self.crash(host)
            case Restart(host=host) | Join(host=host):
                background = self.backend.steps_in_background
                self.start_host(host, f"node_{step.action}", background=background)
            case Leave(host=host):
                self.leave(host)
            case Attach(container=name, host=host, network=network):
                self.attach(name, host, network)
            case Detach(container=name, network=network):
                self.detach(name, network)
            case RotateKeys():
                self.rotate_keys()
            case ServiceCreate(name=name, network=network, replicas=n, endpoint_mode=mode):
                publish, command = step.publish or (), step.command or ()
                self._service(
                    self.services.create, name, network, n, EndpointMode(mode), publish, command
                )
            case ServiceScale(service=name, replicas=n):
                self._service(self.services.scale, name, n)
            case ServiceUpdate(service=name, endpoint_mode=mode):
                self._service(self.services.update, name, EndpointMode(mode))
            case ServiceRm(service=name):
                self._service(self.services.rm, name)
            case _:  # pragma: no cover - the planner makes no other step
                raise TypeError(f"unknown step {step!r}")

    def _touches(self, step: Step) -> set[str] | None:
        """The hosts whose agents ``step`` talks to (None: any or all of them)."""
        match step:
            case Crash(host=h) | Restart(host=h) | Join(host=h) | Leave(host=h):
                return {h}
            case Loss() | Delay() | Rate() | Clear() | Partition() | Heal():
                return set()  # the underlay only (a restart gave its links back at once)
            case _:
                return None  # keys and services: every running agent, placement on `up`

    @staticmethod
    def _service(verb: Any, *args: Any) -> None:
        try:
            verb(*args)
        except ServiceError as exc:
            raise StepSkipped(str(exc)) from None

    # -- the underlay ------------------------------------------------------------------------

    def impair(
        self, kind: ImpairKind, value: float, link: Link | None, jitter_ms: float = 0.0
    ) -> None:
        self.backend.impair(kind, value, link, jitter_ms)
        self.impairments[(kind, link)] = value

    def clear(self, kind: ImpairKind | None, link: Link | None) -> None:
        """Remove ``kind`` (None: every kind) from ``link`` (None: everywhere).

        With a kind and no link only the everywhere setting of that kind goes (for rate,
        which has no everywhere layer, every link's); per-link loss and delay stay.
        """
        self.backend.clear(kind, link)
        kinds = IMPAIR_KINDS if kind is None else (kind,)
        for k, where in list(self.impairments):
            if k not in kinds:
                continue
            if where == link or (link is None and (kind is None or k == "rate")):
                del self.impairments[(k, where)]

    def partition(self, groups: Collection[Collection[str]], *, rest: bool = False) -> None:
        parts = [list(g) for g in groups]
        if rest:
            listed = {h for g in parts for h in g}
            parts.append([h for h in self.topology.hosts if h not in listed])
        t = self.backend.now()
        self.backend.partition(parts)
        self.partition_groups = parts
        self.record(t, "partition", detail={"groups": parts})

    def heal(self) -> None:
        t = self.backend.now()
        self.backend.heal()
        self.partition_groups = None
        self.record(t, "heal")

    # -- hosts -------------------------------------------------------------------------------

    def seeds(self, host: str) -> list[str]:
        return seed_hosts(host, self.managers, self.up)

    def start_host(self, host: str, kind: str, *, background: bool = False) -> None:
        """Start (join) or restart ``host``, then bring its containers back.

        ``background`` (what :meth:`apply` asks of a backend with
        ``steps_in_background``, the emulator: a new agent takes about a second to
        answer): the host gets its links back now and the rest runs on the host's lane,
        so the timeline goes on; the host counts as up from its agent's start
        time, recorded with the time the step was applied (``detail.applied``).
        """
        if host in self.up:
            return self.skip(kind.removeprefix("node_"), host=host, reason="host is running")
        if self.dns is not None:
            self.dns.host_back(host)  # a new boot starts with empty tables
        seeds = self.seeds(host)
        if not background:
            self.backend.prepare_start(host)
            t = self.backend.start(host, seeds)
            self.record(t, kind, subject=host)
            self._host_back(host, kind, t)
            return None
        applied = self.backend.now()
        self.backend.prepare_start(host)
        self._starting.add(host)
        self.lanes.submit(host, lambda: self._start_in_background(host, kind, seeds, applied))
        return None

    def _start_in_background(self, host: str, kind: str, seeds: list[str], applied: float) -> None:
        try:
            self._start_on_lane(host, kind, seeds, applied)
        finally:
            self._starting.discard(host)

    def _start_on_lane(self, host: str, kind: str, seeds: list[str], applied: float) -> None:
        try:
            t = self.backend.start(host, seeds)
        except Exception as exc:
            why = self.backend.refused(exc)
            if why is None:
                raise
            return self.skip(kind.removeprefix("node_"), host=host, reason=why)
        self.record(t, kind, subject=host, detail={"applied": round(applied, 6)})
        self._host_back(host, kind, t)
        with self._lock:
            self.starts.append(HostStart(host, kind, applied, t, self.backend.now()))
        return None

    def _host_back(self, host: str, kind: str, t: float) -> None:
        """Re-create ``host``'s containers after its (re)start at ``t``."""
        for c in list(self.containers.values()):
            if c.host == host and c.networks:
                try:
                    self._bring_up(c, list(c.networks), self.backend.now(), announce=False)
                except Exception as exc:
                    why = self.backend.refused(exc)
                    if why is None:
                        raise
                    self.skip(kind, container=c.name, reason=why)
        with self._lock:
            self.services.host_changed(self.services.on_host(host), t)

    def crash(self, host: str) -> None:
        if host not in self.up:
            return self.skip("crash", host=host, reason="host is not running")
        t = self.backend.now()
        self.backend.crash(host)
        self._host_gone(host, "node_crash", t)
        return None

    def leave(self, host: str) -> None:
        if host not in self.up:
            return self.skip("leave", host=host, reason="host is not running")
        t = self.backend.now()
        self.backend.leave(host)
        self._host_gone(host, "node_leave", t)
        return None

    def _host_gone(self, host: str, kind: str, t: float) -> None:
        with self._lock:
            self.attached.pop(host, None)
            for key in [k for k in self._leaving if k[0] == host]:
                del self._leaving[key]  # its boot is gone, and its networks with it
            for c in list(self.containers.values()):
                if c.host == host:
                    c.live, c.sandbox = False, ""
            self.record(t, kind, subject=host)
            if self.dns is not None:
                self.dns.host_gone(t, host)
            self.services.host_changed(self.services.on_host(host), t)

    # -- containers --------------------------------------------------------------------------

    def start_containers(self, specs: list[ContainerSpec]) -> None:
        """The initial containers: each host's in order (hosts may start in parallel).

        They are one instant of the scenario, so all are recorded at the time the
        burst began. A backend that takes wall time over them (the emulator, host by
        host) must not stamp a host's later than another host's commits: a commit's
        targets are the hosts attached by its instant (docs/results.md), and every
        boot commit waits for every host, as in the simulator.
        """
        for spec in specs:
            self.containers.setdefault(spec.name, Container(spec.name, spec.host))
        t = self.backend.now()

        def start(spec: ContainerSpec) -> None:
            c = self.containers[spec.name]
            try:
                if spec.host in self.up:
                    self._bring_up(c, list(spec.networks), t, announce=True)
                    return
                for net in spec.networks:  # the host starts later and announces it then
                    c.networks[net] = self.backend.reserve(c, net)
                    self.record(
                        t,
                        "container_attach",
                        node=spec.host,
                        subject=spec.name,
                        network=net,
                    )
            except Exception as exc:
                why = self.backend.refused(exc)
                if why is None:
                    raise
                self.skip("start", container=spec.name, reason=why)

        self.backend.each_host(start, specs, lambda s: s.host)

    def attach(self, name: str, host: str, network: str) -> None:
        """Attach container ``name`` (new, or living on ``host``) to ``network``."""
        c = self.containers.get(name)
        if c is not None and c.host != host:
            return self.skip("attach", container=name, reason=f"container lives on {c.host}")
        if c is not None and network in c.networks:
            return self.skip("attach", container=name, reason=f"already on {network}")
        self.add(c or Container(name, host), network)
        return None

    def add(self, c: Container, network: str) -> None:
        """Put ``c`` (new, or living on its host) on ``network``: live if its host runs,
        else with an address reserved for when it starts."""
        t = self.backend.now()
        if c.host not in self.up:
            c.networks[network] = self.backend.reserve(c, network)
            self.containers[c.name] = c
            self.record(t, "container_attach", node=c.host, subject=c.name, network=network)
            return
        self._bring_up(c, [network], t, announce=True)
        self.containers[c.name] = c

    def _bring_up(self, c: Container, networks: list[str], t: float, *, announce: bool) -> None:
        """Make ``c`` live on ``networks`` and record what became true."""
        per_host = self.attached.get(c.host, {})
        # a host whose leave is still pending is on the network: it stays (no new join)
        first = [
            n for n in networks if per_host.get(n, 0) == 0 and (c.host, n) not in self._leaving
        ]
        addresses = self.backend.attach(c, networks, first)
        with self._lock:
            c.live = True
            c.networks.update(addresses)
            for net in networks:
                c.networks.setdefault(net, "")
                if announce:
                    self.record(t, "container_attach", node=c.host, subject=c.name, network=net)
                self._joined(c.host, net, t)
                if self.backend.records_commits:
                    self.commit(t, c.host, net, c.name, "add")

    def _joined(self, host: str, network: str, t: float) -> None:
        self._leaving.pop((host, network), None)
        if not self.truth.on_network(host, network):
            self.record(t, "net_attach", node=host, network=network)
        per_host = self.attached.setdefault(host, {})
        per_host[network] = per_host.get(network, 0) + 1

    def detach(self, name: str, network: str | None, leave_after: float = 0.0) -> None:
        """Detach ``name`` from ``network`` (None: from all, removing it).

        When it was its host's last container on a network, the host leaves that network
        ``leave_after`` seconds after the detach began (a service task's
        ``service_timing.detach_delay``; 0: at once, with the detach). A delayed leave is
        the world's to play, the same for every backend: the backend unplugs the
        container now and keeps the host on the network (``stay``); at the time the
        world records ``net_detach`` and calls :meth:`Backend.leave_network`, unless a
        container of the host attached there by then (at that same instant included)
        or the host went down (see :meth:`_left`)."""
        c = self.containers.get(name)
        if c is None:
            return self.skip("detach", container=name, reason="no such container")
        for net in [network] if network else list(c.networks):
            if net not in c.networks:
                self.skip("detach", container=name, reason=f"not on {net}")
                continue
            live = c.host in self.up and c.live
            last = live and self.attached[c.host][net] == 1
            began = self.backend.now()
            stay = last and leave_after > 0
            self.backend.detach(c, net, live=live, last=last, stay=stay)
            del c.networks[net]
            t = self.backend.now()
            self.record(t, "container_detach", node=c.host, subject=name, network=net)
            if not live:
                continue  # nothing to tell; the host's entries died with it
            if self.backend.records_commits:
                self.commit(t, c.host, net, name, "delete")
            per_host = self.attached[c.host]
            per_host[net] -= 1
            if per_host[net] == 0:
                if not stay:
                    self.record(t, "net_detach", node=c.host, network=net)
                else:
                    at = began + leave_after
                    self._leaving[(c.host, net)] = at
                    self.later(at, functools.partial(self._left, c.host, net, at), last=True)
        if not c.networks:
            del self.containers[name]
        return None

    def _left(self, host: str, network: str, at: float) -> None:
        """The delayed leave of ``host`` from ``network`` due at ``at``: the host leaves
        unless a container of it attached there or it went down in the meantime.

        The fact is recorded as the world decides it, then the backend acts (one instant
        in the simulator); a backend whose steps run in the background first finishes
        the host's earlier steps (an attach on its lane may keep it on the network)."""
        if self.backend.steps_in_background:
            self.lanes.settle([host])
        with self._lock:
            if self._leaving.get((host, network)) != at:
                return
            del self._leaving[(host, network)]
            self.record(self.backend.now(), "net_detach", node=host, network=network)
        try:
            self.backend.leave_network(host, network)
        except Exception as exc:
            why = self.backend.refused(exc)
            if why is None:
                raise
            self.skip("leave_network", host=host, network=network, reason=why)

    def rotate_keys(self) -> None:
        t = self.backend.now()
        detail = self.backend.rotate_keys(sorted(self.up))
        self.record(t, "rotate_keys", detail=detail)


def _subject(step: Step) -> dict[str, Any]:
    fields = ("host", "container", "service")
    out = {k: getattr(step, k) for k in fields if hasattr(step, k)}
    if isinstance(step, ServiceCreate):
        out["service"] = step.name
    return out
