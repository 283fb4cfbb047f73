"""Underlay topologies as plain data, shared by the simulator and the emulator.

A topology is hosts, switches and links; builders (`overlaysim.sim`, `overlaysim.emu`)
turn it into a NetworkX graph or a Mininet network. Nothing here does I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import networkx as nx


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSpec:
    """Properties of one underlay link (both directions)."""

    latency_ms: float = 0.5
    bandwidth_mbps: float = 1000.0
    loss_pct: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    a: str
    b: str
    spec: LinkSpec = field(default_factory=LinkSpec)


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """Hosts run agents; switches only forward. Names are unique across both."""

    name: str
    hosts: tuple[str, ...]
    switches: tuple[str, ...]
    links: tuple[Link, ...]

    def graph(self) -> nx.Graph:
        """The topology as an undirected NetworkX graph.

        Nodes carry ``kind`` ('host' or 'switch'); edges carry ``latency_ms``,
        ``bandwidth_mbps`` and ``loss_pct``.
        """
        g = nx.Graph()
        for h in self.hosts:
            g.add_node(h, kind="host")
        for s in self.switches:
            g.add_node(s, kind="switch")
        for link in self.links:
            g.add_edge(
                link.a,
                link.b,
                latency_ms=link.spec.latency_ms,
                bandwidth_mbps=link.spec.bandwidth_mbps,
                loss_pct=link.spec.loss_pct,
            )
        return g

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the topology-file format (see ``docs/scenarios.md``).

        Hosts named exactly ``h1..hN`` are written as the count ``N``. Link properties equal
        to the most common ones are left to ``defaults``, so large topologies stay small.
        """
        specs = Counter(link.spec for link in self.links)
        common = specs.most_common(1)[0][0] if specs else LinkSpec()
        links: list[dict[str, Any]] = []
        for link in self.links:
            item: dict[str, Any] = {"a": link.a, "b": link.b}
            for key in _LINK_FIELDS:
                value = getattr(link.spec, key)
                if value != getattr(common, key):
                    item[key] = value
            links.append(item)
        numbered = self.hosts == tuple(f"h{i}" for i in range(1, len(self.hosts) + 1))
        return {
            "name": self.name,
            "hosts": len(self.hosts) if numbered else list(self.hosts),
            "switches": list(self.switches),
            "defaults": {key: getattr(common, key) for key in _LINK_FIELDS},
            "links": links,
        }


_LINK_FIELDS = ("latency_ms", "bandwidth_mbps", "loss_pct")
