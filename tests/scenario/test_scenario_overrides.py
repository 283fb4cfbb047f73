"""--set overrides: dotted paths, list indexes, values parsed as YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlaysim.scenario.events import LossEvent
from overlaysim.scenario.loader import apply_overrides, load_scenario
from overlaysim.scenario.problems import ScenarioError
from overlaysim.scenario.topologies import StarTopology

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"


def test_values_are_parsed_as_yaml_types() -> None:
    data = {"a": {"b": 1}, "events": [{"percent": 5}], "flag": False}
    paths = apply_overrides(
        data,
        [
            "a.b=5000",
            "events.0.percent=10.5",
            "flag=true",
            "a.name=web",
            "a.list=[1, two]",
            "a.map={x: 1}",
            "a.none=null",
        ],
    )
    assert data == {
        "a": {"b": 5000, "name": "web", "list": [1, "two"], "map": {"x": 1}, "none": None},
        "events": [{"percent": 10.5}],
        "flag": True,
    }
    assert paths[0] == ("a", "b") and paths[1] == ("events", 0, "percent")


def test_missing_mappings_are_created_and_index_past_end_appends() -> None:
    data: dict = {"events": []}
    apply_overrides(data, ["measure.probes=false", "events.0={at: 1, action: heal}"])
    assert data == {"measure": {"probes": False}, "events": [{"at": 1, "action": "heal"}]}


def test_later_override_wins() -> None:
    data: dict = {}
    apply_overrides(data, ["seed=1", "seed=2"])
    assert data == {"seed": 2}


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("events.x=1", '"events.x" is not valid: expected an index from 0 to 1'),
        ("events.5.at=1", '"events.5" is not valid: expected an index from 0 to 0'),
        ("seed.x=1", '"seed.x" is not valid: expected a path into a mapping or list'),
        ("=3", "expected dotted.path=value"),
        ("a..b=3", "expected dotted.path=value"),
        ("seed=[1", "expected a YAML value"),
    ],
)
def test_bad_overrides(override: str, fragment: str) -> None:
    data = {"seed": 1, "events": [{"at": 1}]}
    with pytest.raises(ScenarioError) as info:
        apply_overrides(data, [override])
    assert str(info.value).startswith(f"--set: --set {override}: ")
    assert fragment in str(info.value)


def test_overrides_on_a_shipped_scenario() -> None:
    sc = load_scenario(
        QUICKSTART,
        [
            "topology.hosts=5000",
            "events.0.percent=10",
            "networks.0.encrypted=true",
            "seed=9",
            "events.4.rest=true",  # the partition's groups name only h1..h5
        ],
    )
    assert isinstance(sc.topology, StarTopology) and sc.topology.hosts == 5000
    assert len(sc.resolved_topology.hosts) == 5000
    assert isinstance(sc.events[0], LossEvent) and sc.events[0].percent == 10
    assert sc.networks[0].encrypted is True and sc.seed == 9


def test_clearing_the_events() -> None:
    assert load_scenario(QUICKSTART, ["events=[]"]).events == ()


def test_file_is_not_changed_by_overrides() -> None:
    before = QUICKSTART.read_text()
    load_scenario(QUICKSTART, ["seed=99"])
    assert QUICKSTART.read_text() == before
    assert load_scenario(QUICKSTART).seed == 7


def test_override_that_breaks_a_cross_check_is_reported() -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(QUICKSTART, ["topology.hosts=3"])
    text = str(info.value)
    assert 'events[2].host: "h4" is not valid: expected a host of the topology (h1..h3)' in text
