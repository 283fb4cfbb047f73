"""The underlay plan: every name and address of one run, computed before anything exists.

``plan_underlay(topology, tag)`` is pure: it names each host's Mininet node, each bridge
and each root-namespace port (all through :mod:`overlaysim.agent.names`), gives every
host its underlay address and says whether the switches need STP. The underlay
(:mod:`overlaysim.emu.net`) records the plan, then creates it; the impairments
(:mod:`overlaysim.emu.impair`) find links and hosts in it.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

from overlaysim.agent import names
from overlaysim.errors import UserError
from overlaysim.scenario.topology import LinkSpec, Topology

DEFAULT_SUBNET = "172.30.0.0/16"
IFNAMSIZ = 15  # usable characters in a Linux interface name
_TAG = re.compile(r"^[a-z][a-z0-9]$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class UnderlayError(UserError):
    """The topology cannot be emulated as given, or the underlay is misused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Port:
    """One end of a link: the interface, and the host whose namespace holds it.

    ``host`` is None for switch ports, which live in the root namespace.
    """

    node: str
    ifname: str
    host: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedLink:
    """A topology link with the interfaces that carry it."""

    index: int
    a: Port
    b: Port
    spec: LinkSpec

    @property
    def ends(self) -> tuple[Port, Port]:
        return (self.a, self.b)

    def peer(self, port: Port) -> Port:
        """The other end of the veth pair from ``port``."""
        return self.b if port == self.a else self.a


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedHost:
    name: str
    node: str  # Mininet node name
    ip: str
    ports: tuple[str, ...]  # interface names in the host's namespace, in link order


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Names and addresses for one run of one topology (pure data)."""

    topology: str  # the topology's name, for messages
    tag: str
    prefix: str
    subnet: ipaddress.IPv4Network
    hosts: tuple[PlannedHost, ...]
    bridges: tuple[tuple[str, str], ...]  # (switch, bridge name)
    links: tuple[PlannedLink, ...]
    stp: bool

    def root_ports(self) -> list[str]:
        """Interfaces this plan puts in the root namespace (switch ports)."""
        return [p.ifname for link in self.links for p in link.ends if p.host is None]

    def ports_to_hosts(self) -> set[str]:
        """Root-namespace ports whose veth peer sits in a host namespace."""
        return {
            port.ifname
            for link in self.links
            for port in link.ends
            if port.host is None and link.peer(port).host is not None
        }

    def host(self, name: str) -> PlannedHost:
        """The planned host ``name`` (its address, node and interfaces)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise UnderlayError(f"no host {name!r} in this underlay")

    def links_between(self, a: str, b: str) -> list[PlannedLink]:
        """Links joining nodes ``a`` and ``b`` (either order); error if there are none."""
        found = [link for link in self.links if {link.a.node, link.b.node} == {a, b}]
        if not found:
            raise UnderlayError(f"no link between {a!r} and {b!r} in {self.topology!r}")
        return found


def plan_underlay(topology: Topology, tag: str, subnet: str = DEFAULT_SUBNET) -> Plan:
    """Name every host, bridge and interface and give every host an address.

    Raises :class:`UnderlayError` for topologies that cannot be emulated: duplicate or
    odd names, links to unknown nodes, more hosts than the subnet holds.
    """
    if not _TAG.match(tag):
        raise UnderlayError(f"run tag {tag!r} must be a lowercase letter and a letter or digit")
    prefix = names.underlay_prefix(tag)
    net = ipaddress.ip_network(subnet, strict=True)
    if not isinstance(net, ipaddress.IPv4Network):
        raise UnderlayError(f"underlay subnet {subnet!r} must be IPv4")
    nodes = list(topology.hosts) + list(topology.switches)
    dup = sorted(n for n, k in Counter(nodes).items() if k > 1)
    if dup:
        raise UnderlayError(f"topology {topology.name!r}: duplicate node names {dup}")
    for n in nodes:
        if not _NODE_NAME.match(n):
            raise UnderlayError(
                f"topology {topology.name!r}: node name {n!r} must match {_NODE_NAME.pattern}"
            )
    if len(topology.hosts) > net.num_addresses - 2:
        raise UnderlayError(
            f"{len(topology.hosts)} hosts do not fit in {net} ({net.num_addresses - 2} addresses)"
        )
    hosts = set(topology.hosts)
    bridge = {s: names.switch_bridge(prefix, j) for j, s in enumerate(topology.switches, 1)}
    if any(len(b) > IFNAMSIZ for b in bridge.values()):
        raise UnderlayError(f"{len(bridge)} switches: bridge names would exceed {IFNAMSIZ} chars")
    next_port: dict[str, int] = {n: 0 for n in nodes}
    host_ports: dict[str, list[str]] = {h: [] for h in topology.hosts}

    def port(node: str, index: int, side: str) -> Port:
        if node not in next_port:
            raise UnderlayError(f"topology {topology.name!r}: link to unknown node {node!r}")
        if node in hosts:
            name = f"eth{next_port[node]}"
            next_port[node] += 1
            host_ports[node].append(name)
            return Port(node=node, ifname=name, host=node)
        next_port[node] += 1
        name = names.switch_port(bridge[node], next_port[node])
        if len(name) > IFNAMSIZ:  # huge switches: fall back to a per-link name
            name = names.link_port(prefix, index, side)
        return Port(node=node, ifname=name, host=None)

    links = []
    for i, link in enumerate(topology.links):
        if link.a == link.b:
            raise UnderlayError(f"topology {topology.name!r}: link from {link.a!r} to itself")
        links.append(
            PlannedLink(index=i, a=port(link.a, i, "a"), b=port(link.b, i, "b"), spec=link.spec)
        )
    first = int(net.network_address) + 1
    planned_hosts = tuple(
        PlannedHost(
            name=h,
            node=names.host_node(prefix, h),
            ip=str(ipaddress.IPv4Address(first + k)),
            ports=tuple(host_ports[h]),
        )
        for k, h in enumerate(topology.hosts)
    )
    return Plan(
        topology=topology.name,
        tag=tag,
        prefix=prefix,
        subnet=net,
        hosts=planned_hosts,
        bridges=tuple(bridge.items()),
        links=tuple(links),
        stp=_switch_loop(topology),
    )


def _switch_loop(topology: Topology) -> bool:
    """Whether switch-to-switch links form a cycle (an L2 loop needs STP)."""
    parent = {s: s for s in topology.switches}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for link in topology.links:
        if link.a in parent and link.b in parent:
            ra, rb = find(link.a), find(link.b)
            if ra == rb:
                return True
            parent[ra] = rb
    return False
