"""Checks across fields of a parsed scenario, given its built topology.

The schema checks each field alone; these check what needs several: named hosts, networks
and containers exist, names are unique, and the timeline makes sense when played in order
(time order, file order at equal times):

* a host's lifecycle alternates: ``crash``/``leave`` need a running host, ``restart``/``join``
  a stopped one. A host whose first lifecycle event is ``join`` starts outside the cluster
  and joins then; any other host starts running.
* ``attach`` may name a new container (created on that host) or an existing one on the same
  host, not already on that network; its host must be running.
* ``detach`` needs a container that exists then (and is on ``network``, when given); without
  ``network`` it removes the container.
* ``partition`` puts every host in at most one group; unlisted hosts are an error unless
  ``rest: true`` groups them; there must be at least two groups.
* impairments with ``link`` name both ends of one topology link.
* ``service_create`` names a service not in use then (neither under ``services`` nor
  created and not yet removed) whose tasks ``<name>.<slot>`` clash with no container;
  ``service_scale``, ``service_update`` and ``service_rm`` need a service that exists then;
  ``attach`` and ``detach`` may not name a service's task (the service steps own them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from overlaysim.core.services import PUBLISH_EXPECTED, RESERVED_PORTS, parse_port_pair
from overlaysim.scenario.events import (
    AttachEvent,
    ChurnEvent,
    CrashEvent,
    DetachEvent,
    JoinEvent,
    LeaveEvent,
    PartitionEvent,
    RestartEvent,
    ServiceCreateEvent,
    ServiceRmEvent,
    ServiceScaleEvent,
    ServiceUpdateEvent,
)
from overlaysim.scenario.expand import expand_items
from overlaysim.scenario.problems import Problem
from overlaysim.scenario.schema import Container, Scenario
from overlaysim.scenario.topology import Topology

_STOPS = (CrashEvent, LeaveEvent)
#: A service name is one DNS label: its tasks are ``<name>.<slot>``.
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_STARTS = (RestartEvent, JoinEvent)


def check_scenario(scenario: Scenario, topology: Topology) -> list[Problem]:
    """Every cross-field problem of ``scenario``, in file order."""
    return _Checker(scenario, topology).run()


class _Checker:
    def __init__(self, scenario: Scenario, topology: Topology) -> None:
        self.sc = scenario
        self.topo = topology
        self.hosts = frozenset(topology.hosts)
        self.networks = {n.name for n in scenario.networks}
        self.out: list[tuple[tuple[int, int], Problem]] = []
        self.where = (0, 0)  # (section, index) for sorting problems into file order
        #: container -> (host, networks it is on), as the timeline is played
        self.containers: dict[str, tuple[str, set[str]]] = {}
        self.down: set[str] = set()
        #: service -> its number of tasks, for services made by ``service_create``
        self.services: dict[str, int] = {}
        #: published port -> the service holding it, as the timeline is played
        self.published: dict[int, str] = {}

    # -- helpers

    def bad(self, path: str, value: object, expected: str) -> None:
        self.out.append((self.where, Problem.invalid(path, value, expected)))

    def host(self, path: str, name: str) -> bool:
        if name in self.hosts:
            return True
        self.bad(path, name, f"a host of the topology ({names_list(self.topo.hosts)})")
        return False

    def net(self, path: str, name: str) -> bool:
        if name in self.networks:
            return True
        known = names_list(sorted(self.networks)) or "none are defined"
        self.bad(path, name, f"a network listed under networks ({known})")
        return False

    def once(self, path: str, names: Iterable[str], what: str) -> None:
        seen: set[str] = set()
        for j, n in enumerate(names):
            if n in seen:
                self.bad(f"{path}[{j}]", n, f"each {what} once")
            seen.add(n)

    # -- sections

    def run(self) -> list[Problem]:
        self.check_networks()
        self.where = (1, 0)
        for i, name in enumerate(self.sc.managers or ()):
            self.host(f"managers[{i}]", name)
        self.once("managers", self.sc.managers or (), "host")
        if self.check_placement():
            self.check_unique_containers()
            self.check_events()
            self.check_measure()
        self.out.sort(key=lambda wp: wp[0])
        return [p for _, p in self.out]

    def check_networks(self) -> None:
        seen: set[str] = set()
        for i, net in enumerate(self.sc.networks):
            self.where = (0, i)
            if net.name in seen:
                self.bad(f"networks[{i}].name", net.name, "a network name not used before")
            seen.add(net.name)

    def check_placement(self) -> bool:
        """Containers and services name known hosts and networks; False if any do not."""
        before = len(self.out)
        for i, item in enumerate(self.sc.containers):
            self.where = (2, i)
            base = f"containers[{i}]"
            if isinstance(item, Container):
                self.host(f"{base}.host", item.host)
            for j, h in enumerate(getattr(item, "hosts", None) or ()):
                self.host(f"{base}.hosts[{j}]", h)
            for j, n in enumerate(item.networks):
                self.net(f"{base}.networks[{j}]", n)
            self.once(f"{base}.networks", item.networks, "network")
        for i, svc in enumerate(self.sc.services):
            self.where = (3, i)
            self.net(f"services[{i}].network", svc.network)
            for j, h in enumerate(svc.hosts or ()):
                self.host(f"services[{i}].hosts[{j}]", h)
        # Expanding generators onto unknown hosts would only repeat these problems.
        return len(self.out) == before

    def check_unique_containers(self) -> None:
        items = expand_items(self.sc.containers, self.sc.services, self.topo.hosts)
        for path, spec in items:
            section = 2 if path.startswith("containers") else 3
            self.where = (section, int(path[path.index("[") + 1 : path.index("]")]))
            if spec.name in self.containers:
                self.bad(path, spec.name, "a container name not used before")
            else:
                self.containers[spec.name] = (spec.host, set(spec.networks))

    def check_events(self) -> None:
        events = self.sc.events
        first: dict[str, type] = {}
        for ev in sorted(events, key=lambda e: e.at):  # stable: file order at equal times
            if isinstance(ev, _STOPS + _STARTS):
                first.setdefault(ev.host, type(ev))
        self.down = {h for h, kind in first.items() if kind is JoinEvent}
        edges = {frozenset((link.a, link.b)) for link in self.topo.links}
        example = f"[{self.topo.links[0].a}, {self.topo.links[0].b}]" if self.topo.links else ""
        for i in sorted(range(len(events)), key=lambda i: (events[i].at, i)):
            ev, p = events[i], f"events[{i}]"
            self.where = (4, i)
            if ev.at >= self.sc.duration:
                self.bad(f"{p}.at", ev.at, f"a time below duration ({self.sc.duration:g})")
            link = getattr(ev, "link", None)
            if link is not None and frozenset(link) not in edges:
                self.bad(
                    f"{p}.link", list(link), f"the two ends of a topology link, like {example}"
                )
            if isinstance(ev, _STOPS + _STARTS):
                self.lifecycle(p, ev)
            elif isinstance(ev, PartitionEvent):
                self.partition(p, ev)
            elif isinstance(ev, ChurnEvent):
                self.net(f"{p}.network", ev.network)
                for j, h in enumerate(ev.hosts or ()):
                    self.host(f"{p}.hosts[{j}]", h)
            elif isinstance(ev, AttachEvent):
                self.attach(p, ev)
            elif isinstance(ev, DetachEvent):
                self.detach(p, ev)
            elif isinstance(ev, ServiceCreateEvent):
                self.service_create(p, ev)
            elif isinstance(ev, ServiceScaleEvent | ServiceUpdateEvent | ServiceRmEvent):
                self.service_change(p, ev)

    def check_measure(self) -> None:
        self.where = (5, 0)
        ever = set(self.containers)
        ever |= {e.container for e in self.sc.events if isinstance(e, AttachEvent)}
        for i, (src, dst) in enumerate(self.sc.measure.throughput):
            for j, name in enumerate((src, dst)):
                if name not in ever:
                    self.bad(f"measure.throughput[{i}][{j}]", name, "the name of a container")
            if src == dst:
                self.bad(f"measure.throughput[{i}]", [src, dst], "two different containers")
        probe = self.sc.measure.lb_probe
        if probe is not None:
            if probe.service not in self.services:  # after the timeline: those still there
                made = ", ".join(sorted(self.services)) or "none"
                self.bad(
                    "measure.lb_probe.service",
                    probe.service,
                    f"a service made by service_create that exists at the end (existing: {made})",
                )
            if probe.client not in ever or self.is_task(probe.client):
                self.bad("measure.lb_probe.client", probe.client, "the name of a container")

    # -- events

    def lifecycle(self, p: str, ev: CrashEvent | LeaveEvent | RestartEvent | JoinEvent) -> None:
        if not self.host(f"{p}.host", ev.host):
            return
        stopping = isinstance(ev, _STOPS)
        if stopping and ev.host in self.down:
            self.bad(f"{p}.host", ev.host, f"a host that is running at t={ev.at:g}")
        elif not stopping and ev.host not in self.down:
            self.bad(
                f"{p}.host",
                ev.host,
                f"a host that crashed or left before t={ev.at:g} ({ev.host} "
                "is running; a first 'join' makes a host start outside the cluster)",
            )
        (self.down.add if stopping else self.down.discard)(ev.host)

    def partition(self, p: str, ev: PartitionEvent) -> None:
        group_of: dict[str, int] = {}
        for g, group in enumerate(ev.groups):
            if not group:
                self.bad(f"{p}.groups[{g}]", [], "a non-empty list of hosts")
            for j, h in enumerate(group):
                path = f"{p}.groups[{g}][{j}]"
                if not self.host(path, h):
                    continue
                if h in group_of:
                    self.bad(path, h, f"a host in one group only (also in group {group_of[h]})")
                group_of.setdefault(h, g)
        unlisted = [h for h in self.topo.hosts if h not in group_of]
        if unlisted and not ev.rest:
            msg = (
                f"hosts {names_list(unlisted)} are in no group: expected every host in a group, "
                "or rest: true to put the others in one more group"
            )
            self.out.append((self.where, Problem(path=f"{p}.groups", message=msg)))
        elif sum(1 for g in ev.groups if g) + bool(unlisted) < 2:
            self.bad(f"{p}.groups", [list(g) for g in ev.groups], "at least two groups of hosts")

    def service_create(self, p: str, ev: ServiceCreateEvent) -> None:
        self.net(f"{p}.network", ev.network)
        if not _DNS_LABEL.match(ev.name):  # containers resolve it: web, tasks.web
            self.bad(
                f"{p}.name",
                ev.name,
                "a service name of lowercase letters, digits and '-' (one DNS label)",
            )
            return
        if ev.name in self.services or ev.name in {s.name for s in self.sc.services}:
            self.bad(f"{p}.name", ev.name, f"a service name not in use at t={ev.at:g}")
            return
        self.services[ev.name] = 0
        self.service_tasks(p, ev.name, ev.replicas, ev.at)
        self.publish(p, ev)

    def publish(self, p: str, ev: ServiceCreateEvent) -> None:
        """Each published port: ``P:T``, not the agents' own, not held by a service then."""
        for j, item in enumerate(ev.publish or ()):
            try:
                port, _target = parse_port_pair(item)
            except ValueError:
                self.bad(f"{p}.publish[{j}]", item, PUBLISH_EXPECTED)
                continue
            if port in RESERVED_PORTS:
                self.bad(
                    f"{p}.publish[{j}]",
                    item,
                    f"a published port the agents do not use ({port} is {RESERVED_PORTS[port]})",
                )
            elif self.published.get(port) == ev.name:
                self.bad(f"{p}.publish[{j}]", item, f"a published port listed once ({port} twice)")
            elif port in self.published:
                self.bad(
                    f"{p}.publish[{j}]",
                    item,
                    f"a published port no service holds at t={ev.at:g} "
                    f"(service {self.published[port]} publishes {port})",
                )
            else:
                self.published[port] = ev.name

    def service_change(
        self, p: str, ev: ServiceScaleEvent | ServiceUpdateEvent | ServiceRmEvent
    ) -> None:
        if ev.service not in self.services:
            made = ", ".join(sorted(self.services)) or "none"
            self.bad(
                f"{p}.service",
                ev.service,
                f"a service made by service_create that exists at t={ev.at:g} (existing: {made})",
            )
        elif isinstance(ev, ServiceRmEvent):
            del self.services[ev.service]
            for port in [q for q, svc in self.published.items() if svc == ev.service]:
                del self.published[port]
        elif isinstance(ev, ServiceScaleEvent):
            self.service_tasks(p, ev.service, ev.replicas, ev.at)

    def service_tasks(self, p: str, service: str, replicas: int, at: float) -> None:
        """``service`` now has ``replicas`` tasks; new task names must be free."""
        for k in range(self.services[service] + 1, replicas + 1):
            name = f"{service}.{k}"
            if name in self.containers:
                self.bad(
                    f"{p}.replicas",
                    replicas,
                    f"a number of tasks whose names are free at t={at:g} "
                    f"(task {name} would clash with container {name})",
                )
                break
        self.services[service] = replicas

    def is_task(self, name: str) -> bool:
        service, _, slot = name.rpartition(".")
        return slot.isdigit() and 1 <= int(slot) <= self.services.get(service, 0)

    def refuse_task(self, p: str, container: str, at: float) -> bool:
        """Report ``container`` if it is a service task: attach and detach take plain
        containers only; whether it was refused."""
        if not self.is_task(container):
            return False
        self.bad(
            f"{p}.container",
            container,
            f"a container that is not a service task at t={at:g} "
            "(service_scale and service_rm change tasks)",
        )
        return True

    def attach(self, p: str, ev: AttachEvent) -> None:
        if self.refuse_task(p, ev.container, ev.at):
            return
        known = self.host(f"{p}.host", ev.host) & self.net(f"{p}.network", ev.network)
        if ev.host in self.down:
            self.bad(f"{p}.host", ev.host, f"a host that is running at t={ev.at:g}")
        current = self.containers.get(ev.container)
        if current is None:
            if known:
                self.containers[ev.container] = (ev.host, {ev.network})
        elif current[0] != ev.host:
            self.bad(f"{p}.host", ev.host, f"{current[0]}, where {ev.container} runs")
        elif ev.network in current[1]:
            self.bad(
                f"{p}.network", ev.network, f"a network {ev.container} is not on at t={ev.at:g}"
            )
        else:
            current[1].add(ev.network)

    def detach(self, p: str, ev: DetachEvent) -> None:
        if self.refuse_task(p, ev.container, ev.at):
            return
        current = self.containers.get(ev.container)
        if current is None:
            self.bad(f"{p}.container", ev.container, f"a container that exists at t={ev.at:g}")
        elif ev.network is None:
            del self.containers[ev.container]
        elif ev.network not in current[1]:
            on = ", ".join(sorted(current[1])) or "none"
            self.bad(
                f"{p}.network",
                ev.network,
                f"a network {ev.container} is on at t={ev.at:g} (it is on: {on})",
            )
        else:
            current[1].discard(ev.network)


def names_list(names: Sequence[str]) -> str:
    """``h1..h20`` for names numbered from 1, else the first few names."""
    names = list(names)
    prefix = names[0].rstrip("0123456789") if names else ""
    if len(names) > 2 and names == [f"{prefix}{i}" for i in range(1, len(names) + 1)]:
        return f"{names[0]}..{names[-1]}"
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
