"""Container generators and services expanded into a concrete, deterministic container list.

Names and placement depend only on the scenario text and the topology's host order, never on
randomness, so every backend and every run sees the same containers:

* a concrete container is taken as written;
* a generator ``{per_host: K, prefix: p}`` gives ``p-<host>-1 .. p-<host>-K`` on each of its
  hosts (all topology hosts by default) in host order;
* a service ``{name: s, replicas: R}`` gives ``s.1 .. s.R``, replica i on the i-th host of its
  host list (all hosts by default), wrapping around.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: the schema models are what it expands
    from overlaysim.scenario.schema import Container, ContainerGenerator, Scenario, Service


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSpec:
    """A container as the runtimes see it: where it runs and the networks it starts on."""

    name: str
    host: str
    networks: tuple[str, ...]
    #: The service this container is a replica of, if any.
    service: str | None = None


def expand_containers(scenario: Scenario) -> list[ContainerSpec]:
    """Every container present at the start of ``scenario`` (file order, then services)."""
    items = expand_items(scenario.containers, scenario.services, scenario.resolved_topology.hosts)
    return [spec for _, spec in items]


def expand_items(
    containers: Iterable[Container | ContainerGenerator],
    services: Iterable[Service],
    hosts: Sequence[str],
) -> list[tuple[str, ContainerSpec]]:
    """Expanded containers, each with the field path it came from (for error messages)."""
    out: list[tuple[str, ContainerSpec]] = []
    for i, item in enumerate(containers):
        path = f"containers[{i}]"
        if hasattr(item, "per_host"):
            nets = tuple(item.networks)
            for host in item.hosts or hosts:
                for k in range(1, item.per_host + 1):
                    name = f"{item.prefix}-{host}-{k}"
                    out.append((path, ContainerSpec(name=name, host=host, networks=nets)))
        else:
            spec = ContainerSpec(name=item.name, host=item.host, networks=tuple(item.networks))
            out.append((f"{path}.name", spec))
    for i, svc in enumerate(services):
        placement = svc.hosts or hosts
        for k in range(1, svc.replicas + 1):
            host = placement[(k - 1) % len(placement)]
            spec = ContainerSpec(
                name=f"{svc.name}.{k}", host=host, networks=(svc.network,), service=svc.name
            )
            out.append((f"services[{i}]", spec))
    return out
