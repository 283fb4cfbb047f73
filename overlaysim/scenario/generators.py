"""Topology generators and topology-file building.

``build_topology`` turns a generator spec (star, leaf-spine, two-site, random) or a parsed
topology file into a ``Topology``. Names are predictable: hosts h1..hN, switches s1..sM, links
listed in a fixed order. The random generator is deterministic for a given seed.
``topology_problems`` checks a topology file for what its schema cannot: known link ends,
no duplicate names or links, every host connected.
"""

from __future__ import annotations

import math
import random

import networkx as nx

from overlaysim.scenario.problems import Problem
from overlaysim.scenario.topologies import (
    LeafSpineTopology,
    RandomTopology,
    StarTopology,
    TopologyDoc,
    TwoSiteTopology,
)
from overlaysim.scenario.topology import Link, LinkSpec, Topology

BuildableTopology = (
    StarTopology | LeafSpineTopology | TwoSiteTopology | RandomTopology | TopologyDoc
)


def build_topology(spec: BuildableTopology, *, seed: int = 0, name: str | None = None) -> Topology:
    """Build the topology ``spec`` describes.

    ``seed`` is used by the random generator when its spec sets no seed of its own. ``name``
    overrides the topology name (default: the generator name, or the file's ``name``).
    """
    if isinstance(spec, StarTopology):
        topo = star(spec.hosts, spec.link.to_spec())
    elif isinstance(spec, LeafSpineTopology):
        topo = leaf_spine(
            spec.spines,
            spec.leaves,
            spec.hosts_per_leaf,
            spec.link.to_spec(),
            spec.uplink.to_spec(),
        )
    elif isinstance(spec, TwoSiteTopology):
        topo = two_site(spec.hosts_per_site, spec.link.to_spec(), spec.wan_link.to_spec())
    elif isinstance(spec, RandomTopology):
        topo = random_graph(
            spec.hosts,
            spec.switches,
            spec.degree,
            seed if spec.seed is None else spec.seed,
            spec.link.to_spec(),
            spec.switch_link.to_spec(),
        )
    elif isinstance(spec, TopologyDoc):
        topo = from_doc(spec)
    else:
        raise TypeError(f"cannot build a topology from {type(spec).__name__}")
    if name is not None:
        topo = Topology(name=name, hosts=topo.hosts, switches=topo.switches, links=topo.links)
    return topo


def _hosts(n: int, first: int = 1) -> tuple[str, ...]:
    return tuple(f"h{i}" for i in range(first, first + n))


def star(hosts: int, link: LinkSpec) -> Topology:
    """Hosts h1..hN, each linked to the single switch s1."""
    names = _hosts(hosts)
    links = tuple(Link(a=h, b="s1", spec=link) for h in names)
    return Topology(name="star", hosts=names, switches=("s1",), links=links)


def leaf_spine(
    spines: int, leaves: int, hosts_per_leaf: int, link: LinkSpec, uplink: LinkSpec
) -> Topology:
    """Spines s1..sS, leaves s(S+1)..s(S+L); hosts fill leaf 1 first; every leaf on every spine."""
    spine_names = tuple(f"s{i}" for i in range(1, spines + 1))
    leaf_names = tuple(f"s{spines + i}" for i in range(1, leaves + 1))
    hosts = _hosts(leaves * hosts_per_leaf)
    links = [Link(a=h, b=leaf_names[i // hosts_per_leaf], spec=link) for i, h in enumerate(hosts)]
    links += [Link(a=leaf, b=spine, spec=uplink) for leaf in leaf_names for spine in spine_names]
    return Topology(
        name="leaf-spine", hosts=hosts, switches=spine_names + leaf_names, links=tuple(links)
    )


def two_site(hosts_per_site: int, link: LinkSpec, wan_link: LinkSpec) -> Topology:
    """Site 1 is s1 with h1..hN, site 2 is s2 with h(N+1)..h2N; s1-s2 is the WAN link."""
    hosts = _hosts(2 * hosts_per_site)
    links = [
        Link(a=h, b="s1" if i < hosts_per_site else "s2", spec=link) for i, h in enumerate(hosts)
    ]
    links.append(Link(a="s1", b="s2", spec=wan_link))
    return Topology(name="two-site", hosts=hosts, switches=("s1", "s2"), links=tuple(links))


def random_graph(
    hosts: int,
    switches: int | None,
    degree: float,
    seed: int,
    link: LinkSpec,
    switch_link: LinkSpec,
) -> Topology:
    """Hosts round-robin on a random connected switch graph.

    The switch graph is networkx's G(n, m) with m = max(n - 1, degree * n / 2) edges for the
    given seed; if that is not connected, its components are chained (by lowest switch
    number) so every host can reach every other.
    """
    n = switches if switches is not None else max(1, math.ceil(hosts / 8))
    m = min(n * (n - 1) // 2, max(n - 1, round(degree * n / 2)))
    g = nx.gnm_random_graph(n, m, seed=random.Random(seed))
    comps = sorted(min(c) for c in nx.connected_components(g))
    g.add_edges_from(zip(comps, comps[1:], strict=False))
    sw = tuple(f"s{i}" for i in range(1, n + 1))
    host_names = _hosts(hosts)
    links = [Link(a=h, b=sw[i % n], spec=link) for i, h in enumerate(host_names)]
    edges = sorted(tuple(sorted(e)) for e in g.edges())
    links += [Link(a=sw[u], b=sw[v], spec=switch_link) for u, v in edges]
    return Topology(name="random", hosts=host_names, switches=sw, links=tuple(links))


def from_doc(doc: TopologyDoc) -> Topology:
    """A topology file as a ``Topology``; call ``topology_problems`` first."""
    base = doc.defaults.to_spec()
    cache: dict[tuple[float, float, float], LinkSpec] = {}
    links = []
    for item in doc.links:
        key = (
            base.latency_ms if item.latency_ms is None else item.latency_ms,
            base.bandwidth_mbps if item.bandwidth_mbps is None else item.bandwidth_mbps,
            base.loss_pct if item.loss_pct is None else item.loss_pct,
        )
        spec = cache.get(key)
        if spec is None:  # share equal specs: large files repeat one or two of them
            spec = cache[key] = LinkSpec(latency_ms=key[0], bandwidth_mbps=key[1], loss_pct=key[2])
        links.append(Link(a=item.a, b=item.b, spec=spec))
    return Topology(
        name=doc.name or "topology", hosts=doc.hosts, switches=doc.switches, links=tuple(links)
    )


def topology_problems(doc: TopologyDoc, prefix: str = "") -> list[Problem]:
    """What is wrong with a topology file beyond its schema; paths start with ``prefix``."""
    out: list[Problem] = []
    kinds: dict[str, str] = {}
    for field, names in (("hosts", doc.hosts), ("switches", doc.switches)):
        for i, n in enumerate(names):
            if n in kinds:
                out.append(
                    Problem.invalid(f"{prefix}{field}[{i}]", n, "a name not used by another node")
                )
            kinds[n] = field
    g = nx.Graph()
    g.add_nodes_from(kinds)
    for i, link in enumerate(doc.links):
        path = f"{prefix}links[{i}]"
        for end in ("a", "b"):
            name = getattr(link, end)
            if name not in kinds:
                out.append(Problem.invalid(f"{path}.{end}", name, "a host or switch of this file"))
        if link.a == link.b:
            out.append(Problem.invalid(f"{path}.b", link.b, "a node other than a"))
        elif g.has_edge(link.a, link.b):
            out.append(Problem.invalid(path, [link.a, link.b], "each link listed once"))
        g.add_edge(link.a, link.b)
    if out:
        return out
    if len(doc.hosts) > 1:
        reach = nx.node_connected_component(g, doc.hosts[0])
        cut = [h for h in doc.hosts if h not in reach]
        if cut:
            shown = ", ".join(cut[:5]) + (", ..." if len(cut) > 5 else "")
            msg = f"hosts {shown} cannot reach {doc.hosts[0]}: expected links connecting every host"
            out.append(Problem(path=f"{prefix}links", message=msg))
    return out
