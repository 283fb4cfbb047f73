"""Cross-field checks that play the timeline in order: lifecycles, attach/detach, partitions."""

from __future__ import annotations

from typing import Any

import pytest

from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.problems import ScenarioError


def run(events: list[dict[str, Any]], **fields: Any) -> Any:
    data = {
        "name": "t",
        "duration": 100,
        "topology": {"generator": "star", "hosts": 4},
        "networks": [{"name": "web"}, {"name": "db"}],
        "containers": [{"name": "c1", "host": "h1", "networks": ["web"]}],
        "events": events,
        **fields,
    }
    return validate_scenario(data)


def problems(events: list[dict[str, Any]], **fields: Any) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        run(events, **fields)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def ev(at: float, action: str, **kw: Any) -> dict[str, Any]:
    return {"at": at, "action": action, **kw}


def test_restart_needs_an_earlier_crash_or_leave() -> None:
    run([ev(5, "crash", host="h2"), ev(9, "restart", host="h2")])
    run([ev(5, "leave", host="h2"), ev(9, "restart", host="h2")])
    (msg,) = problems([ev(5, "restart", host="h2")])
    assert msg.startswith('events[0].host: "h2" is not valid: expected a host that crashed or left')


def test_order_is_by_time_not_by_file_position() -> None:
    run([ev(9, "restart", host="h2"), ev(5, "crash", host="h2")])
    (msg,) = problems([ev(5, "restart", host="h2"), ev(9, "crash", host="h2")])
    assert msg.startswith("events[0].host")


def test_crashing_a_stopped_host_twice() -> None:
    (msg,) = problems([ev(5, "crash", host="h2"), ev(6, "leave", host="h2")])
    assert msg == 'events[1].host: "h2" is not valid: expected a host that is running at t=6'


def test_a_first_join_means_the_host_starts_outside() -> None:
    run([ev(5, "join", host="h4"), ev(8, "leave", host="h4"), ev(9, "join", host="h4")])
    (msg,) = problems(
        [ev(5, "crash", host="h4"), ev(6, "restart", host="h4"), ev(7, "join", host="h4")]
    )
    assert msg.startswith('events[2].host: "h4" is not valid')


def test_attach_new_and_existing_containers() -> None:
    run(
        [
            ev(1, "attach", container="c1", host="h1", network="db"),
            ev(2, "attach", container="n1", host="h2", network="web"),
        ]
    )
    msgs = problems(
        [
            ev(1, "attach", container="c1", host="h2", network="db"),
            ev(2, "attach", container="c1", host="h1", network="web"),
            ev(3, "attach", container="n1", host="h2", network="nope"),
        ]
    )
    assert msgs[0] == 'events[0].host: "h2" is not valid: expected h1, where c1 runs'
    assert msgs[1].startswith('events[1].network: "web" is not valid: expected a network c1 is not')
    assert msgs[2].startswith('events[2].network: "nope" is not valid: expected a network listed')


def test_attach_to_a_crashed_host() -> None:
    (msg,) = problems(
        [ev(1, "crash", host="h3"), ev(2, "attach", container="n", host="h3", network="web")]
    )
    assert msg.startswith('events[1].host: "h3" is not valid: expected a host that is running')


def test_detach_needs_an_existing_container() -> None:
    run(
        [
            ev(1, "detach", container="c1", network="web"),
            ev(2, "attach", container="c1", host="h1", network="db"),
        ]
    )
    run([ev(1, "attach", container="n", host="h2", network="db"), ev(2, "detach", container="n")])
    msgs = problems(
        [
            ev(1, "detach", container="ghost"),
            ev(2, "detach", container="c1", network="db"),
            ev(3, "detach", container="c1"),
            ev(4, "detach", container="c1"),
        ]
    )
    assert (
        msgs[0]
        == 'events[0].container: "ghost" is not valid: expected a container that exists at t=1'
    )
    assert (
        msgs[1]
        == 'events[1].network: "db" is not valid: expected a network c1 is on at t=2 (it is on: web)'
    )
    assert msgs[2].startswith('events[3].container: "c1" is not valid')  # removed at t=3


def test_detach_before_the_attach_that_creates_it() -> None:
    (msg,) = problems(
        [ev(5, "attach", container="n", host="h2", network="web"), ev(2, "detach", container="n")]
    )
    assert msg.startswith("events[1].container")


def test_partition_groups() -> None:
    run([ev(1, "partition", groups=[["h1", "h2"], ["h3", "h4"]])])
    run([ev(1, "partition", groups=[["h1"]], rest=True)])
    msgs = problems([ev(1, "partition", groups=[["h1", "h2"], ["h2"]])])
    assert (
        msgs[0]
        == 'events[0].groups[1][0]: "h2" is not valid: expected a host in one group only (also in group 0)'
    )
    assert msgs[1].startswith("events[0].groups: hosts h3, h4 are in no group: expected every host")
    (msg,) = problems([ev(1, "partition", groups=[["h1", "h2", "h3", "h4"]])])
    assert msg.endswith("expected at least two groups of hosts")
    (msg,) = problems([ev(1, "partition", groups=[["h1", "h9"]], rest=True)])
    assert msg.startswith('events[0].groups[0][1]: "h9" is not valid')


def test_impairment_links_must_exist() -> None:
    run([ev(1, "loss", percent=3, link=["s1", "h2"]), ev(2, "clear", link=["h2", "s1"])])
    (msg,) = problems([ev(1, "rate", mbps=10, link=["h1", "h2"])])
    assert msg.startswith('events[0].link: ["h1", "h2"] is not valid')


def test_churn_and_throughput_references() -> None:
    msgs = problems(
        [ev(1, "churn", network="db2", rate_per_s=1, duration=5, hosts=["h1", "h5"])],
        measure={"throughput": [["c1", "c1"]]},
    )
    assert [m.split(":")[0] for m in msgs] == [
        "events[0].network",
        "events[0].hosts[1]",
        "measure.throughput[0]",
    ]
    # A container attached by an event may be measured.
    run(
        [ev(1, "attach", container="n", host="h2", network="web")],
        measure={"throughput": [["c1", "n"]]},
    )


def test_problems_come_in_file_order() -> None:
    msgs = problems(
        [ev(50, "crash", host="h7"), ev(10, "heal"), ev(5, "crash", host="h8")],
        managers=["h9"],
    )
    assert [m.split(":")[0] for m in msgs] == ["managers[0]", "events[0].host", "events[2].host"]
