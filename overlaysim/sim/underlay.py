"""The simulated underlay: latency, bandwidth, loss and partitions between hosts.

Delay and loss belong to the links, not to the endpoints. A message travels the
shortest (lowest latency) path; it is delayed by each link's latency plus its
serialisation time (size / bandwidth; no queueing is modelled) and lost with each
link's loss probability, drawn as one Bernoulli trial with the path's combined
survival probability (the same distribution as one trial per link, one random draw).

Scenario impairments add to the links: ``loss`` on one link, or "everywhere", which
means end to end: every host-to-host datagram is dropped with that probability once,
as the emulator does with one random-drop rule on each host's ingress.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import networkx as nx

from overlaysim.scenario.topology import Topology

LinkId = frozenset[str]


@dataclass(slots=True)
class _LinkState:
    latency_s: float
    bytes_per_s: float
    loss: float  # configured loss, fraction
    extra_loss: float = 0.0  # scenario impairment, fraction
    extra_delay_s: float = 0.0
    rate_bytes_per_s: float | None = None  # scenario rate limit


@dataclass(slots=True)
class Path:
    links: tuple[LinkId, ...]


class Underlay:
    """Routing and impairment state over a topology graph."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        g = topology.graph()
        self.graph = g
        self._links: dict[LinkId, _LinkState] = {}
        for a, b, d in g.edges(data=True):
            self._links[frozenset((a, b))] = _LinkState(
                latency_s=d["latency_ms"] / 1000.0,
                bytes_per_s=d["bandwidth_mbps"] * 1e6 / 8.0,
                loss=d["loss_pct"] / 100.0,
            )
        self.hosts = list(topology.hosts)
        self._host_set = set(self.hosts)
        self._access: dict[str, tuple[str, LinkId]] = {}
        self._switch_paths: dict[str, dict[str, list[str]]] = {}
        self._paths: dict[tuple[str, str], tuple[LinkId, ...]] = {}
        self._fast = self._index_access_links()
        if not nx.is_connected(g) and len(g) > 0:
            # Still usable (partitioned underlay), but say so loudly in the manifest.
            self.connected = False
        else:
            self.connected = True
        self.global_loss = 0.0
        self.global_delay_s = 0.0
        self._group: dict[str, int] | None = None
        self._down: set[str] = set()
        self._version = 0
        self._cost: dict[tuple[str, str], tuple[float, float, float, int]] = {}
        # Fast path, per host: (switch, latency, s/byte, survival) of its access link
        # as _path_cost adds them up; emptied whenever an impairment changes.
        self._parts: dict[str, tuple[str, float, float, float]] = {}

    # -- routing ---------------------------------------------------------------------

    def _index_access_links(self) -> bool:
        """Hosts with a single link to a switch route through switch-to-switch paths.

        That avoids per-host shortest-path searches on 10,000-host stars.
        """
        g = self.graph
        for h in self.hosts:
            nbrs = list(g.neighbors(h))
            if len(nbrs) != 1 or g.nodes[nbrs[0]].get("kind") != "switch":
                return False
            self._access[h] = (nbrs[0], frozenset((h, nbrs[0])))
        switches = [n for n, d in g.nodes(data=True) if d.get("kind") == "switch"]
        sg = g.subgraph(switches)
        self._switch_paths = dict(nx.all_pairs_dijkstra_path(sg, weight="latency_ms"))
        return True

    def path(self, src: str, dst: str) -> tuple[LinkId, ...] | None:
        """Links crossed from host ``src`` to host ``dst`` (None if unreachable)."""
        key = (src, dst)
        p = self._paths.get(key)
        if p is not None:
            return p
        if self._fast:
            sa, la = self._access[src]
            sb, lb = self._access[dst]
            sp = self._switch_paths.get(sa, {}).get(sb)
            if sp is None:
                return None
            mids = tuple(frozenset((sp[i], sp[i + 1])) for i in range(len(sp) - 1))
            p = (la, *mids, lb)
            if not mids:
                return p  # one switch: not worth a cached tuple per host pair (N^2)
        else:
            try:
                nodes = nx.dijkstra_path(self.graph, src, dst, weight="latency_ms")
            except nx.NetworkXNoPath:
                return None
            p = tuple(frozenset((nodes[i], nodes[i + 1])) for i in range(len(nodes) - 1))
        if len(self._paths) < 2_000_000:
            self._paths[key] = p
        return p

    def path_latency(self, src: str, dst: str) -> float | None:
        """One-way latency in seconds from ``src`` to ``dst`` now (impairments included;
        no serialisation), or None when no path exists."""
        c = self._path_cost(src, dst)
        return None if c is None else c[0]

    def _path_cost(self, src: str, dst: str) -> tuple[float, float, float, int] | None:
        """(latency s, seconds per byte, survival probability, version) for src->dst."""
        key = (src, dst)
        c = self._cost.get(key)
        if c is not None and c[3] == self._version:
            return c
        p = self.path(src, dst)
        if p is None:
            return None
        lat = 0.0
        spb = 0.0
        survive = 1.0
        for lid in p:
            st = self._links[lid]
            lat += st.latency_s + st.extra_delay_s
            bw = (
                st.bytes_per_s
                if st.rate_bytes_per_s is None
                else min(st.bytes_per_s, st.rate_bytes_per_s)
            )
            spb += 1.0 / bw
            survive *= (1.0 - st.loss) * (1.0 - st.extra_loss)
        lat += self.global_delay_s
        survive *= 1.0 - self.global_loss
        c = (lat, spb, survive, self._version)
        if self._fast and len(p) <= 2:
            # Two links (hosts on one switch): cheaper to add up again than to keep a
            # cached tuple per host pair, N^2 of them on a large star.
            return c
        if len(self._cost) < 2_000_000:
            self._cost[key] = c
        return c

    # -- delivery decision -----------------------------------------------------------

    def transit(
        self, src: str, dst: str, size: int, rng: random.Random, reliable: bool
    ) -> float | None:
        """Delay in seconds for a message, or None if it is lost.

        Streams (``reliable``) are not lost to random drops (TCP retransmits) but pay
        a connection set-up round trip plus one round trip per expected loss; they
        fail only when no path exists (partition, crashed host).
        """
        if src == dst:
            return 0.0
        if self._down and (src in self._down or dst in self._down):
            return None
        grp = self._group
        if grp is not None and grp.get(src, -1) != grp.get(dst, -2):
            return None
        if self._fast:
            parts = self._parts
            a = parts.get(src) or self._part(src)
            b = parts.get(dst) or self._part(dst)
            if a[0] == b[0]:
                # Two hosts on one switch: the two access links' shares, combined with
                # the same float operations in the same order as _path_cost (which
                # starts from 0.0 and 1.0, neutral elements here), so the same result.
                lat = a[1] + b[1] + self.global_delay_s
                spb = a[2] + b[2]
                survive = a[3] * b[3] * (1.0 - self.global_loss)
            else:
                c = self._path_cost(src, dst)
                if c is None:
                    return None
                lat, spb, survive, _ = c
        else:
            c = self._path_cost(src, dst)
            if c is None:
                return None
            lat, spb, survive, _ = c
        if reliable:
            if survive <= 0.0:
                return None
            # Handshake (1 RTT) + data; each loss costs about one more RTT on average.
            rtts = 1.0 + (1.0 - survive) / survive
            return lat + 2.0 * lat * rtts + size * spb
        if survive < 1.0 and rng.random() >= survive:
            return None
        return lat + size * spb

    # -- impairments -----------------------------------------------------------------

    def _link(self, a: str, b: str) -> _LinkState:
        lid = frozenset((a, b))
        st = self._links.get(lid)
        if st is None:
            raise KeyError(f"no link between {a} and {b} in topology {self.topology.name!r}")
        return st

    def _changed(self) -> None:
        self._version += 1
        self._parts.clear()

    def _part(self, host: str) -> tuple[str, float, float, float]:
        """``host``'s access link's share of a path cost, computed as in _path_cost."""
        sw, lid = self._access[host]
        st = self._links[lid]
        bw = (
            st.bytes_per_s
            if st.rate_bytes_per_s is None
            else min(st.bytes_per_s, st.rate_bytes_per_s)
        )
        part = (
            sw,
            st.latency_s + st.extra_delay_s,
            1.0 / bw,
            (1.0 - st.loss) * (1.0 - st.extra_loss),
        )
        self._parts[host] = part
        return part

    # The same verbs as the emulator's ``Impairments`` (``overlaysim.emu.impair``).

    def loss(self, percent: float, link: tuple[str, str] | None = None) -> None:
        """Drop ``percent`` % on ``link``, or end to end everywhere (None)."""
        if link is None:
            self.global_loss = percent / 100.0
        else:
            self._link(*link).extra_loss = percent / 100.0
        self._changed()

    def delay(self, ms: float, jitter_ms: float = 0.0, link: tuple[str, str] | None = None) -> None:
        """Add ``ms`` one-way delay on ``link``, or end to end everywhere (None).

        Jitter is not modelled: every message on the path gets the same extra delay.
        """
        if link is None:
            self.global_delay_s = ms / 1000.0
        else:
            self._link(*link).extra_delay_s = ms / 1000.0
        self._changed()

    def rate(self, mbps: float, link: tuple[str, str] | None = None) -> None:
        """Limit ``link`` (None: every link) to ``mbps``."""
        targets = [self._link(*link)] if link is not None else list(self._links.values())
        for st in targets:
            st.rate_bytes_per_s = mbps * 1e6 / 8.0
        self._changed()

    def clear(self, link: tuple[str, str] | None = None, kind: str | None = None) -> None:
        """Remove impairment ``kind`` (None: loss, delay and rate) from ``link``.

        Without a link: ``kind`` None clears everything everywhere; loss or delay clears
        the end-to-end setting only (per-link ones stay); rate clears every link's.
        Other kinds are left as they are.
        """
        if kind == "loss":
            return self.loss(0.0, link)
        if kind == "delay":
            return self.delay(0.0, 0.0, link)
        targets = [self._link(*link)] if link is not None else list(self._links.values())
        for st in targets:
            st.rate_bytes_per_s = None
            if kind is None:
                st.extra_loss = 0.0
                st.extra_delay_s = 0.0
        if link is None and kind is None:
            self.global_loss = 0.0
            self.global_delay_s = 0.0
        self._changed()
        return None

    def partition(self, groups: list[list[str]]) -> None:
        """Hosts in different groups cannot exchange anything; unlisted hosts are isolated."""
        grp: dict[str, int] = {}
        for i, g in enumerate(groups):
            for h in g:
                grp[h] = i
        self._group = grp

    def heal(self) -> None:
        self._group = None

    def host_down(self, host: str) -> None:
        """A crashed host's links go silent."""
        self._down.add(host)

    def host_up(self, host: str) -> None:
        self._down.discard(host)

    crash_links = host_down  # the emulator's name for the same verb
    restore_links = host_up

    def reachable(self, src: str, dst: str) -> bool:
        """Whether ``src`` can currently reach ``dst`` at all (ignoring random loss)."""
        if src == dst:
            return True
        if src in self._down or dst in self._down:
            return False
        grp = self._group
        if grp is not None and grp.get(src, -1) != grp.get(dst, -2):
            return False
        c = self._path_cost(src, dst)
        return c is not None and c[2] > 0.0
