"""Container generators and services expand to the same named, placed containers every time."""

from __future__ import annotations

from typing import Any

import pytest

from overlaysim.scenario.expand import ContainerSpec, expand_containers
from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.problems import ScenarioError


def scenario(**fields: Any) -> Any:
    data = {
        "name": "e",
        "duration": 10,
        "topology": {"generator": "star", "hosts": 3},
        "networks": [{"name": "web"}, {"name": "db"}],
        **fields,
    }
    return validate_scenario(data)


def test_generator_names_and_order() -> None:
    sc = scenario(
        containers=[
            {"name": "solo", "host": "h3", "networks": ["db"]},
            {"per_host": 2, "networks": ["web", "db"]},
            {"per_host": 1, "networks": ["db"], "hosts": ["h2"], "prefix": "x"},
        ]
    )
    got = expand_containers(sc)
    assert [c.name for c in got] == [
        "solo",
        "c-h1-1",
        "c-h1-2",
        "c-h2-1",
        "c-h2-2",
        "c-h3-1",
        "c-h3-2",
        "x-h2-1",
    ]
    assert got[1] == ContainerSpec(name="c-h1-1", host="h1", networks=("web", "db"))
    assert got[-1].host == "h2" and got[-1].networks == ("db",)


def test_expansion_is_deterministic_and_seed_independent() -> None:
    items = [{"per_host": 3, "networks": ["web"]}]
    services = [{"name": "api", "replicas": 5, "network": "web"}]
    a = expand_containers(scenario(containers=items, services=services, seed=1))
    b = expand_containers(scenario(containers=items, services=services, seed=2))
    assert a == b and len(a) == 9 + 5


def test_services_are_placed_round_robin() -> None:
    sc = scenario(
        services=[
            {"name": "api", "replicas": 4, "network": "web"},
            {"name": "cache", "replicas": 3, "network": "db", "hosts": ["h3", "h1"]},
        ]
    )
    got = [(c.name, c.host, c.networks, c.service) for c in expand_containers(sc)]
    assert got == [
        ("api.1", "h1", ("web",), "api"),
        ("api.2", "h2", ("web",), "api"),
        ("api.3", "h3", ("web",), "api"),
        ("api.4", "h1", ("web",), "api"),
        ("cache.1", "h3", ("db",), "cache"),
        ("cache.2", "h1", ("db",), "cache"),
        ("cache.3", "h3", ("db",), "cache"),
    ]


def test_service_name_clash_is_an_error() -> None:
    with pytest.raises(ScenarioError, match=r'services\[0\]: "api.1" is not valid'):
        scenario(
            containers=[{"name": "api.1", "host": "h1", "networks": ["web"]}],
            services=[{"name": "api", "replicas": 1, "network": "web"}],
        )


def test_generator_on_unknown_host_or_network() -> None:
    with pytest.raises(ScenarioError) as info:
        scenario(containers=[{"per_host": 1, "networks": ["web", "nope"], "hosts": ["h1", "h8"]}])
    paths = [p.path for p in info.value.problems]
    assert paths == ["containers[0].hosts[1]", "containers[0].networks[1]"]


def test_a_thousand_hosts_expand_quickly_to_unique_names() -> None:
    data = {
        "name": "big",
        "duration": 10,
        "topology": {"generator": "star", "hosts": 1000},
        "networks": [{"name": "app"}],
        "containers": [{"per_host": 2, "networks": ["app"]}],
    }
    got = expand_containers(validate_scenario(data))
    assert len(got) == 2000 and len({c.name for c in got}) == 2000
    assert got[-1] == ContainerSpec(name="c-h1000-2", host="h1000", networks=("app",))
