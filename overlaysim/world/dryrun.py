"""A run without a substrate: the world over the manager's IPAM alone.

``overlaysim validate`` plays the planned timeline here: every network is created,
every container (listed, generated, a service's replica, attached by a step or by
churn) gets its address and gives it back, in the order a run would, through the same
:class:`~overlaysim.world.world.World` and the core's :class:`~overlaysim.core.cluster.Cluster`.
What a run would refuse (overlapping subnets, an exhausted pool, a duplicate network)
becomes one :class:`~overlaysim.scenario.problems.Problem` line each, naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

from overlaysim.core.cluster import Cluster
from overlaysim.core.cluster_errors import ClusterError
from overlaysim.core.network import Allocation, NetworkSpec
from overlaysim.core.services import vip_endpoint
from overlaysim.scenario.problems import Problem, ScenarioError
from overlaysim.scenario.schema import Network, Scenario
from overlaysim.scenario.steps import ImpairKind, Link, Step
from overlaysim.scenario.timeline import plan
from overlaysim.world.container import Container
from overlaysim.world.world import World

T = TypeVar("T")


def network_spec(net: Network) -> NetworkSpec:
    """The manager's spec for a scenario network."""
    return NetworkSpec(
        name=net.name,
        subnet=net.subnet,
        gateway=net.gateway,
        ip_range=net.ip_range,
        aux_addresses=dict(net.aux_addresses or {}),
        attachable=net.attachable,
        encrypted=net.encrypted,
        mtu=net.mtu,
        attachment=net.attachment,
    )


class DryBackend:
    """Backend verbs that only allocate and release addresses, and note refusals."""

    records_commits = False
    runs_tasks = False
    steps_in_background = False  # every step is one instant of the timeline

    def __init__(self, scenario: Scenario) -> None:
        self.ipam = Cluster()
        self.problems: list[Problem] = []
        #: The field the world is playing now, named in problems.
        self.where = "containers"
        self.t = 0.0
        self._allocs: dict[tuple[str, str], Allocation] = {}
        for i, net in enumerate(scenario.networks):
            try:
                self.ipam.create_network(network_spec(net))
            except ClusterError as exc:
                self.problems.append(Problem(path=f"networks[{i}]", message=_message(exc)))

    def now(self) -> float:
        return self.t

    def refused(self, exc: BaseException) -> str | None:
        if not isinstance(exc, ClusterError):
            return None
        self.problems.append(Problem(path=self.where, message=_message(exc)))
        return _message(exc)

    def boot(
        self,
        order: Sequence[str],
        *,
        formed: bool,
        seeds: Callable[[str, Collection[str]], list[str]],
    ) -> dict[str, float]:
        return dict.fromkeys(order, 0.0)

    def prepare_start(self, host: str) -> None:
        return None  # nothing comes before the start itself

    def start(self, host: str, seeds: list[str]) -> float:
        return self.t

    def crash(self, host: str) -> None:
        return None

    def leave(self, host: str) -> None:
        return None

    def _alloc(self, c: Container, network: str) -> Allocation:
        alloc = self._allocs.get((c.name, network))
        if alloc is None:
            try:
                alloc = self.ipam.allocate(network, c.name, standalone=False)
            except ClusterError as exc:
                raise type(exc)(f"container {c.name} on {c.host}: {_message(exc)}") from exc
            self._allocs[(c.name, network)] = alloc
        return alloc

    def reserve(self, c: Container, network: str) -> str:
        return self._alloc(c, network).ip

    def attach(
        self, c: Container, networks: Sequence[str], first: Collection[str]
    ) -> dict[str, str]:
        return {net: self._alloc(c, net).ip for net in networks}

    def detach(
        self, c: Container, network: str, *, live: bool, last: bool, stay: bool = False
    ) -> None:
        if self._allocs.pop((c.name, network), None) is not None:
            self.ipam.release(network, c.name)

    def leave_network(self, host: str, network: str) -> None:
        return None

    def reserve_vip(self, service: str, network: str) -> str:
        try:
            return self.ipam.allocate(network, vip_endpoint(service), standalone=False).ip
        except ClusterError as exc:
            raise type(exc)(f"service {service} VIP: {_message(exc)}") from exc

    def release_vip(self, service: str, network: str) -> None:
        self.ipam.release(network, vip_endpoint(service))

    def publish(self, service: str, ports: Sequence[tuple[int, int]]) -> str | None:
        return None  # no routing mesh here: the World records the ports (runs_tasks)

    def unpublish(self, service: str) -> None:
        return None

    def each_host(
        self, fn: Callable[[T], None], items: Iterable[T], host: Callable[[T], str]
    ) -> None:
        for item in items:
            fn(item)

    def impair(self, kind: ImpairKind, value: float, link: Link | None, jitter_ms: float) -> None:
        return None

    def clear(self, kind: ImpairKind | None, link: Link | None) -> None:
        return None

    def partition(self, groups: list[list[str]]) -> None:
        return None

    def heal(self) -> None:
        return None

    def rotate_keys(self, hosts: list[str]) -> dict[str, Any] | None:
        return None


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def dry_run(scenario: Scenario, *, source: str = "<scenario>", seed: int | None = None) -> World:
    """Play ``scenario``'s timeline over IPAM only; raise :class:`ScenarioError` listing
    every refusal a run would hit. Returns the world (its ``skipped`` steps are what a
    run would skip, e.g. a crash of a host that is down)."""
    backend = DryBackend(scenario)
    world = World(scenario, backend)
    the_plan = plan(scenario, seed)
    world.boot(the_plan)

    def apply(step: Step) -> None:
        # a step's later pieces (a service's next task) are blamed on the last step
        backend.where = f"events[{step.origin}]" if step.origin >= 0 else "events"
        world.apply(step)

    for at, work in world.agenda.merge(the_plan.steps, apply):
        backend.t = at
        work()
    if backend.problems:
        raise ScenarioError(source, backend.problems)
    return world
