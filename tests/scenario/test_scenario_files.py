"""The shipped scenarios and topology files: they validate, and they say what they claim."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from overlaysim.scenario import events, fields, schema, topologies
from overlaysim.scenario.expand import expand_containers
from overlaysim.scenario.generators import build_topology
from overlaysim.scenario.loader import load_scenario, load_topology, validate_scenario

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((REPO / "scenarios").glob("*.yaml"))

QUICKSTART = """\
name: quickstart
seed: 7
duration: 60
profile: lan
topology: {generator: star, hosts: 5, link: {latency_ms: 0.5, bandwidth_mbps: 1000, loss_pct: 0}}
managers: [h1]
networks:
  - {name: web, subnet: 10.10.0.0/24, attachable: true}
  - {name: db, subnet: 10.20.0.0/24, attachable: true}
containers:
  - {name: c1, host: h1, networks: [web]}
  - {name: c2, host: h2, networks: [web, db]}
  - {name: c3, host: h3, networks: [db]}
events:
  - {at: 10, action: loss, percent: 5}
  - {at: 15, action: churn, network: web, rate_per_s: 2, duration: 10}
  - {at: 20, action: crash, host: h4}
  - {at: 30, action: restart, host: h4}
  - {at: 35, action: partition, groups: [[h1, h2], [h3, h4, h5]]}
  - {at: 45, action: heal}
  - {at: 50, action: attach, container: c9, host: h5, network: web}
measure: {throughput: [[c1, c2]], probes: true}
"""


def test_the_expected_scenarios_are_shipped() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {"quickstart", "loss-sweep", "churn", "partition-heal", "scale-1000"} <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_shipped_scenario_validates_and_serialises(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem
    assert sc.managers and set(sc.managers) <= set(sc.resolved_topology.hosts)
    json.dumps(sc.resolved())  # plain data, ready for manifest.json


def test_quickstart_is_exactly_the_documented_example() -> None:
    assert (REPO / "scenarios" / "quickstart.yaml").read_text() == QUICKSTART


def test_quickstart_parses_to_what_the_file_says() -> None:
    sc = load_scenario(REPO / "scenarios" / "quickstart.yaml")
    assert (sc.seed, sc.duration, sc.profile, sc.managers) == (7, 60, "lan", ("h1",))
    assert sc.resolved_topology.hosts == ("h1", "h2", "h3", "h4", "h5")
    assert [n.name for n in sc.networks] == ["web", "db"]
    assert all(n.attachable and not n.encrypted for n in sc.networks)
    assert [(c.name, c.host, c.networks) for c in expand_containers(sc)] == [
        ("c1", "h1", ("web",)),
        ("c2", "h2", ("web", "db")),
        ("c3", "h3", ("db",)),
    ]
    actions = [e.action for e in sc.events]
    assert actions == ["loss", "churn", "crash", "restart", "partition", "heal", "attach"]
    assert isinstance(sc.events[4], events.PartitionEvent)
    assert sc.events[4].groups == (("h1", "h2"), ("h3", "h4", "h5"))
    assert sc.measure.throughput == (("c1", "c2"),) and sc.measure.probe_interval == 1.0


def test_quickstart_round_trips_through_resolved_data() -> None:
    sc = load_scenario(REPO / "scenarios" / "quickstart.yaml")
    data = sc.resolved()
    again = validate_scenario(json.loads(json.dumps(data)))
    assert again.resolved() == data
    assert again.resolved_topology == sc.resolved_topology
    assert again.events == sc.events and again.networks == sc.networks
    # The YAML as written and the parsed model agree field by field (defaults aside).
    raw = yaml.safe_load(QUICKSTART)
    dumped = sc.model_dump(mode="json")
    for key in ("name", "seed", "profile", "managers"):
        assert dumped[key] == raw[key]
    assert dumped["events"][1] == {**raw["events"][1], "hosts": None}


@pytest.mark.parametrize(
    ("file", "spec"),
    [
        ("star.yaml", topologies.StarTopology(generator="star", hosts=8)),
        (
            "leaf-spine.yaml",
            topologies.LeafSpineTopology(
                generator="leaf-spine", spines=2, leaves=4, hosts_per_leaf=4
            ),
        ),
        ("two-site-wan.yaml", topologies.TwoSiteTopology(generator="two-site", hosts_per_site=4)),
    ],
)
def test_shipped_topology_files_match_their_generators(file: str, spec: object) -> None:
    topo = load_topology(REPO / "topologies" / file)
    built = build_topology(spec)
    assert topo.name == Path(file).stem
    assert (topo.hosts, topo.switches, topo.links) == (built.hosts, built.switches, built.links)


def test_two_site_file_has_the_slow_wan_link() -> None:
    topo = load_topology(REPO / "topologies" / "two-site-wan.yaml")
    wan = [link for link in topo.links if {link.a, link.b} == {"s1", "s2"}]
    assert len(wan) == 1
    assert (wan[0].spec.latency_ms, wan[0].spec.bandwidth_mbps) == (30.0, 100.0)


def _models() -> list[type]:
    found = {
        getattr(mod, n)
        for mod in (topologies, events, schema)
        for n in dir(mod)
        if isinstance(getattr(mod, n), type)
    }
    base = fields.StrictModel
    return sorted(
        (m for m in found if issubclass(m, base) and m is not base), key=lambda m: m.__name__
    )


def test_reference_documents_every_field_of_every_model() -> None:
    doc = (REPO / "docs" / "scenarios.md").read_text()
    documented = set(re.findall(r"`([a-z_]+)`", doc))
    missing = {
        f"{m.__name__}.{f}" for m in _models() for f in m.model_fields if f not in documented
    }
    assert not missing
    for action in ("loss", "delay", "rate", "clear", "partition", "heal", "crash", "restart"):
        assert f"### `{action}`" in doc
    for action in ("leave", "join", "attach", "detach", "churn", "rotate_keys"):
        assert f"### `{action}`" in doc


def test_topology_file_lookup_order(tmp_path: Path) -> None:
    data = {"name": "f", "duration": 10, "topology": {"file": "topologies/two-site-wan.yaml"}}
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(data))
    # Not beside the scenario: found in the repository.
    assert load_scenario(scenario).resolved_topology.name == "two-site-wan"
    # A bare name is looked up in the repository's topologies/.
    bare = load_scenario(scenario, ["topology.file=leaf-spine.yaml"])
    assert len(bare.resolved_topology.hosts) == 16
    # A file beside the scenario wins.
    (tmp_path / "topologies").mkdir()
    (tmp_path / "topologies" / "two-site-wan.yaml").write_text(
        "name: mine\nhosts: [x1, x2]\nswitches: [sw]\nlinks: [{a: x1, b: sw}, {a: x2, b: sw}]\n"
    )
    mine = load_scenario(scenario)
    assert mine.resolved_topology.name == "mine" and mine.managers == ("x1",)


def test_scale_scenario_takes_ten_thousand_hosts() -> None:
    sc = load_scenario(REPO / "scenarios" / "scale-1000.yaml", ["topology.hosts=10000"])
    assert len(sc.resolved_topology.hosts) == 10_000
    containers = expand_containers(sc)
    assert len(containers) == 10_000 and containers[-1].name == "c-h10000-1"
    assert validate_scenario(sc.resolved()).resolved() == sc.resolved()
