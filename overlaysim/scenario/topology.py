"""Underlay topologies as plain data, shared by the simulator and the emulator.

A topology is hosts, switches and links; builders (`overlaysim.sim`, `overlaysim.emu`)
turn it into a NetworkX graph or a Mininet network. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
