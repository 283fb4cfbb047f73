"""Topology generators: names, counts, edges, link properties, connectivity, determinism."""

from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlaysim.scenario.generators import build_topology
from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.topologies import (
    LeafSpineTopology,
    Link,
    RandomTopology,
    StarTopology,
    TopologyDoc,
    TwoSiteTopology,
)
from overlaysim.scenario.topology import LinkSpec


def kinds(g: nx.Graph, kind: str) -> set[str]:
    return {n for n, k in g.nodes(data="kind") if k == kind}


def test_star() -> None:
    link = Link(latency_ms=2, bandwidth_mbps=50, loss_pct=1)
    topo = build_topology(StarTopology(generator="star", hosts=5, link=link))
    assert topo.hosts == ("h1", "h2", "h3", "h4", "h5") and topo.switches == ("s1",)
    assert [(lk.a, lk.b) for lk in topo.links] == [(f"h{i}", "s1") for i in range(1, 6)]
    assert {lk.spec for lk in topo.links} == {LinkSpec(latency_ms=2, bandwidth_mbps=50, loss_pct=1)}
    g = topo.graph()
    assert nx.is_connected(g) and g.degree("s1") == 5


def test_star_with_ten_thousand_hosts() -> None:
    topo = build_topology(StarTopology(generator="star", hosts=10_000))
    assert len(topo.hosts) == 10_000 and len(topo.links) == 10_000
    assert topo.hosts[-1] == "h10000" and len(set(topo.hosts)) == 10_000


def test_leaf_spine() -> None:
    spec = LeafSpineTopology(
        generator="leaf-spine",
        spines=2,
        leaves=3,
        hosts_per_leaf=4,
        uplink={"latency_ms": 0.1, "bandwidth_mbps": 40000},
    )
    topo = build_topology(spec)
    g = topo.graph()
    assert topo.switches == ("s1", "s2", "s3", "s4", "s5")
    assert len(topo.hosts) == 12 and len(topo.links) == 12 + 2 * 3
    spines, leaves = {"s1", "s2"}, {"s3", "s4", "s5"}
    for leaf in leaves:
        assert set(g.neighbors(leaf)) & spines == spines
        assert g.edges[leaf, "s1"]["bandwidth_mbps"] == 40000
    assert set(g.neighbors("h1")) == {"s3"} and set(g.neighbors("h12")) == {"s5"}
    assert g.edges["h1", "s3"]["bandwidth_mbps"] == 1000
    assert all(set(g.neighbors(s)) <= leaves for s in spines)
    assert nx.is_connected(g)


def test_leaf_spine_defaults_make_fabric_faster() -> None:
    topo = build_topology(LeafSpineTopology(generator="leaf-spine"))
    assert len(topo.hosts) == 16 and len(topo.switches) == 6
    g = topo.graph()
    assert g.edges["s3", "s1"]["bandwidth_mbps"] == 10000


def test_two_site() -> None:
    topo = build_topology(
        TwoSiteTopology(generator="two-site", hosts_per_site=3, wan_link={"latency_ms": 40})
    )
    g = topo.graph()
    assert topo.hosts == tuple(f"h{i}" for i in range(1, 7)) and topo.switches == ("s1", "s2")
    assert set(g.neighbors("s1")) == {"h1", "h2", "h3", "s2"}
    assert set(g.neighbors("s2")) == {"h4", "h5", "h6", "s1"}
    wan = g.edges["s1", "s2"]
    assert (wan["latency_ms"], wan["bandwidth_mbps"]) == (40, 100)  # unset fields: WAN defaults
    assert nx.shortest_path_length(g, "h1", "h6", weight="latency_ms") == pytest.approx(41)


@pytest.mark.parametrize(("hosts", "switches", "degree"), [(1, None, 3), (40, 7, 0), (200, 30, 4)])
def test_random_is_connected_and_sized(hosts: int, switches: int | None, degree: float) -> None:
    spec = RandomTopology(generator="random", hosts=hosts, switches=switches, degree=degree)
    topo = build_topology(spec, seed=3)
    g = topo.graph()
    n_sw = switches or 1
    assert len(topo.hosts) == hosts and len(topo.switches) == n_sw
    assert topo.switches == tuple(f"s{i}" for i in range(1, n_sw + 1))
    assert nx.is_connected(g)
    assert all(g.degree(h) == 1 for h in topo.hosts)
    switch_edges = g.subgraph(topo.switches).number_of_edges()
    assert switch_edges >= n_sw - 1
    if degree:
        assert switch_edges >= min(round(degree * n_sw / 2), n_sw * (n_sw - 1) // 2)


def test_random_default_switch_count() -> None:
    topo = build_topology(RandomTopology(generator="random", hosts=20))
    assert len(topo.switches) == 3  # ceil(20 / 8)


def test_random_is_deterministic_by_seed() -> None:
    spec = RandomTopology(generator="random", hosts=60, switches=12)
    a, b = build_topology(spec, seed=1), build_topology(spec, seed=1)
    c = build_topology(spec, seed=2)
    assert a == b
    assert {(lk.a, lk.b) for lk in a.links} != {(lk.a, lk.b) for lk in c.links}
    own = spec.model_copy(update={"seed": 1})
    assert build_topology(own, seed=99) == a  # the spec's own seed wins


def test_random_uses_the_scenario_seed() -> None:
    base = {
        "name": "r",
        "duration": 10,
        "topology": {"generator": "random", "hosts": 40, "switches": 10},
    }
    one = validate_scenario({**base, "seed": 4}).resolved_topology
    two = validate_scenario({**base, "seed": 4}).resolved_topology
    other = validate_scenario({**base, "seed": 5}).resolved_topology
    assert one == two and one.links != other.links


def test_topology_doc_with_defaults_and_per_link_values() -> None:
    doc = TopologyDoc.model_validate(
        {
            "name": "tiny",
            "hosts": ["a1", "a2"],
            "switches": ["sw"],
            "defaults": {"latency_ms": 2},
            "links": [{"a": "a1", "b": "sw"}, {"a": "a2", "b": "sw", "loss_pct": 3}],
        }
    )
    topo = build_topology(doc)
    assert topo.name == "tiny" and topo.hosts == ("a1", "a2")
    assert topo.links[0].spec == LinkSpec(latency_ms=2)
    assert topo.links[1].spec == LinkSpec(latency_ms=2, loss_pct=3)


def test_to_dict_round_trips_through_a_topology_doc() -> None:
    for spec in (
        LeafSpineTopology(generator="leaf-spine", spines=3, leaves=2, hosts_per_leaf=2),
        RandomTopology(generator="random", hosts=30, switches=6),
    ):
        topo = build_topology(spec, seed=8)
        again = build_topology(TopologyDoc.model_validate(topo.to_dict()))
        assert again == topo


@settings(max_examples=40, deadline=None)
@given(
    hosts=st.integers(1, 120),
    switches=st.integers(1, 40),
    degree=st.floats(0, 8),
    seed=st.integers(0, 2**32),
)
def test_random_topologies_are_always_connected(
    hosts: int, switches: int, degree: float, seed: int
) -> None:
    spec = RandomTopology(generator="random", hosts=hosts, switches=switches, degree=degree)
    topo = build_topology(spec, seed=seed)
    g = topo.graph()
    assert nx.is_connected(g)
    assert g.number_of_nodes() == hosts + switches
    assert len({(lk.a, lk.b) for lk in topo.links}) == len(topo.links)
