"""Every kind of mistake gives one ScenarioError naming file, field, value and expectation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from overlaysim.errors import UserError
from overlaysim.scenario.loader import load_scenario
from overlaysim.scenario.problems import ScenarioError


def base() -> dict[str, Any]:
    return {
        "name": "t",
        "duration": 60,
        "topology": {"generator": "star", "hosts": 5},
        "networks": [{"name": "web", "subnet": "10.10.0.0/24"}],
        "containers": [{"name": "c1", "host": "h1", "networks": ["web"]}],
        "events": [],
    }


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    return path


def error_of(
    tmp_path: Path, data: dict[str, Any] | str, overrides: list[str] = ()
) -> ScenarioError:
    path = write(tmp_path, data)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides)
    return info.value


def only_line(err: ScenarioError) -> str:
    lines = str(err).splitlines()
    assert len(lines) == 1, str(err)
    return lines[0]


def test_error_is_a_value_error_and_a_user_error(tmp_path: Path) -> None:
    err = error_of(tmp_path, {**base(), "duration": 0})
    assert isinstance(err, ValueError) and isinstance(err, UserError)
    assert err.source == str(tmp_path / "x.yaml")


def test_percent_out_of_range_names_file_path_value_and_range(tmp_path: Path) -> None:
    data = base()
    data["events"] = [{"at": 1, "action": "heal"}] * 3 + [
        {"at": 5, "action": "loss", "percent": 150}
    ]
    line = only_line(error_of(tmp_path, data))
    assert line.startswith(
        f"{tmp_path / 'x.yaml'}: events[3].percent: 150 is not valid: "
        "expected a number between 0 and 100"
    )


def test_unknown_action_lists_the_known_ones(tmp_path: Path) -> None:
    data = base()
    data["events"] = [{"at": 5, "action": "explode"}]
    line = only_line(error_of(tmp_path, data))
    assert 'events[0].action: "explode" is not valid: expected one of loss, delay' in line
    assert "rotate_keys" in line


def test_unknown_host_in_crash(tmp_path: Path) -> None:
    data = base()
    data["events"] = [{"at": 5, "action": "crash", "host": "h9"}]
    line = only_line(error_of(tmp_path, data))
    assert 'events[0].host: "h9" is not valid: expected a host of the topology (h1..h5)' in line


def test_duplicate_container_name(tmp_path: Path) -> None:
    data = base()
    data["containers"].append({"name": "c1", "host": "h2", "networks": ["web"]})
    line = only_line(error_of(tmp_path, data))
    assert 'containers[1].name: "c1" is not valid: expected a container name not used' in line


def test_generated_name_clashing_with_a_concrete_one(tmp_path: Path) -> None:
    data = base()
    data["containers"] = [
        {"name": "c-h2-1", "host": "h1", "networks": ["web"]},
        {"per_host": 1, "networks": ["web"]},
    ]
    line = only_line(error_of(tmp_path, data))
    assert 'containers[1]: "c-h2-1" is not valid' in line


def test_missing_field(tmp_path: Path) -> None:
    data = base()
    data["events"] = [{"at": 5, "action": "crash"}]
    line = only_line(error_of(tmp_path, data))
    assert "events[0].host: missing: expected the name of a topology host" in line


def test_missing_top_level_field(tmp_path: Path) -> None:
    data = base()
    del data["duration"]
    assert "duration: missing: expected the run length in seconds" in only_line(
        error_of(tmp_path, data)
    )


def test_extra_field_suggests_the_near_one(tmp_path: Path) -> None:
    data = base()
    data["measure"] = {"probez": False}
    line = only_line(error_of(tmp_path, data))
    assert "measure.probez: unknown field (value false): expected one of throughput" in line
    assert "did you mean probes?" in line


def test_extra_field_inside_an_event(tmp_path: Path) -> None:
    data = base()
    data["events"] = [{"at": 5, "action": "crash", "host": "h2", "colour": "red"}]
    line = only_line(error_of(tmp_path, data))
    assert 'events[0].colour: unknown field (value "red"): expected one of at, action, host' in line


def test_yaml_syntax_error_gives_file_line_and_column(tmp_path: Path) -> None:
    text = "name: t\nduration: 60\ntopology: {generator: star, hosts: 5\nevents: []\n"
    err = error_of(tmp_path, text)
    assert only_line(err).startswith(f"{tmp_path / 'x.yaml'}:4:7: invalid YAML: expected ")
    assert (err.problems[0].line, err.problems[0].column) == (4, 7)


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    text = "name: t\nduration: 60\ntopology: {generator: star, hosts: 5}\nduration: 30\n"
    line = only_line(error_of(tmp_path, text))
    assert "duration: written twice (lines 2 and 4)" in line


def test_bad_override_path_names_the_override(tmp_path: Path) -> None:
    line = only_line(error_of(tmp_path, base(), ["events.3.percent=10"]))
    assert "--set events.3.percent=10" in line
    assert '"events.3" is not valid: expected index 0 (events has 0 items)' in line
    line = only_line(error_of(tmp_path, base(), ["name.first=1"]))
    assert "--set name.first=1" in line and "name is " in line
    line = only_line(error_of(tmp_path, base(), ["duration"]))
    assert "expected dotted.path=value" in line


def test_invalid_value_set_by_override_says_so(tmp_path: Path) -> None:
    line = only_line(error_of(tmp_path, base(), ["duration=-5"]))
    assert "duration: -5 is not valid: expected a number greater than 0" in line
    assert line.endswith("(set by --set duration=-5)")


def test_problem_lines_point_into_the_file(tmp_path: Path) -> None:
    text = (
        "name: t\nduration: 60\ntopology: {generator: star, hosts: 5}\n"
        "events:\n  - {at: 1, action: heal}\n  - {at: 2, action: loss, percent: 101}\n"
    )
    err = error_of(tmp_path, text)
    assert err.problems[0].line == 6 and only_line(err).endswith("(line 6)")


def test_all_problems_are_listed_together(tmp_path: Path) -> None:
    data = base()
    data["seed"] = "abc"
    data["profile"] = "fast"
    data["networks"][0]["subnet"] = "10.10.0.1/24"
    data["events"] = [{"at": 5, "action": "loss", "percent": -1}]
    err = error_of(tmp_path, data)
    paths = [p.path for p in err.problems]
    assert set(paths) == {"seed", "profile", "networks[0].subnet", "events[0].percent"}
    text = str(err)
    assert '"fast" is not valid: expected one of lan, wan, local' in text
    assert "expected a network address in CIDR form" in text
    assert all(line.startswith(str(tmp_path / "x.yaml")) for line in text.splitlines())


def test_messages_carry_no_library_text(tmp_path: Path) -> None:
    data = base()
    data["topology"] = {"generator": "ring", "hosts": "many"}
    data["containers"] = [5, {"per_host": 0, "networks": []}]
    text = str(error_of(tmp_path, data)).replace(str(tmp_path), "<tmp>")
    assert len(text.splitlines()) == 4
    assert "containers[1].networks: [] is not valid: expected a non-empty list" in text
    for raw in ("pydantic", "validation error", "Input should", "For further information"):
        assert raw not in text
    assert 'topology.generator: "ring" is not valid: expected one of star, leaf-spine' in text


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"topology": {"hosts": 5}}, "topology.generator: missing: expected one of star"),
        ({"topology": "star"}, 'topology: "star" is not valid: expected a mapping'),
        ({"topology": {"file": "absent.yaml"}}, "expected an existing topology file"),
        ({"managers": ["h7"]}, 'managers[0]: "h7" is not valid'),
        ({"name": "a b"}, 'name: "a b" is not valid: expected a name of letters'),
        ({"networks": [{"name": "web"}, {"name": "web"}]}, 'networks[1].name: "web"'),
        ({"networks": [{"name": "web", "gateway": "1.2.3"}]}, "expected an IP address"),
        ({"networks": [{"name": "web", "mtu": 100}]}, "expected an integer between 576 and 9000"),
        (
            {"containers": [{"name": "c", "host": "h1", "networks": ["db"]}]},
            'containers[0].networks[0]: "db" is not valid: expected a network listed',
        ),
        (
            {"measure": {"throughput": [["c1", "zz"]]}},
            'measure.throughput[0][1]: "zz" is not valid',
        ),
        ({"events": [{"at": 60, "action": "heal"}]}, "events[0].at: 60 is not valid: expected a"),
        (
            {"protocol": {"esp_seq_limit": 0}},
            "protocol.esp_seq_limit: 0 is not valid: expected an integer",
        ),
        (
            {"protocol": {"tables": {"gossip_nodes": -1}}},
            "expected gossip_nodes: an integer of 0 or more, not -1",
        ),
        (
            {"protocol": {"tables": {"bulk_sync_interval": 0}}},
            "expected bulk_sync_interval: a number above 0, not 0",
        ),
        (
            {"protocol": {"membership": {"suspicion_mult": 2.5}}},
            "expected suspicion_mult: an integer",
        ),
        (
            {"events": [{"at": 1, "action": "delay", "ms": 5, "link": ["h1", "h2"]}]},
            "expected the two ends of a topology link, like [h1, s1]",
        ),
    ],
)
def test_more_error_kinds(tmp_path: Path, change: dict[str, Any], fragment: str) -> None:
    text = str(error_of(tmp_path, {**base(), **change}))
    assert fragment in text


def test_errors_inside_a_topology_file_name_that_file(tmp_path: Path) -> None:
    topo = tmp_path / "net.yaml"
    topo.write_text("hosts: 2\nswitches: [s1]\nlinks:\n  - {a: h1, b: s1}\n  - {a: h2, b: s9}\n")
    data = {**base(), "topology": {"file": "net.yaml"}, "containers": []}
    err = error_of(tmp_path, data)
    assert err.source == str(tmp_path / "x.yaml")
    line = only_line(err)
    assert line.startswith(f'{topo}: links[1].b: "s9" is not valid: expected a host or switch')
    assert line.endswith("(line 5)")


def test_disconnected_inline_topology(tmp_path: Path) -> None:
    data = {
        **base(),
        "containers": [],
        "topology": {"hosts": 3, "switches": ["s1"], "links": [{"a": "h1", "b": "s1"}]},
    }
    text = str(error_of(tmp_path, data))
    assert "topology.links: hosts h2, h3 cannot reach h1" in text


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read file"):
        load_scenario(tmp_path / "nope.yaml")
    empty = write(tmp_path, "", "empty.yaml")
    with pytest.raises(ScenarioError, match="empty file"):
        load_scenario(empty)


def test_error_survives_pickling(tmp_path: Path) -> None:
    import pickle

    err = error_of(tmp_path, {**base(), "duration": 0})
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.problems == err.problems
