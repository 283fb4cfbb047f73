"""Scenario service events: the schema, the timeline checks (one line per bad input), the
dry run over IPAM, and the shipped scenarios/services.yaml on the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from overlaysim.metrics.finalize import metrics_for
from overlaysim.scenario.loader import load_scenario, validate_scenario
from overlaysim.scenario.problems import ScenarioError
from overlaysim.scenario.steps import ServiceCreate, ServiceRm, ServiceScale, ServiceUpdate
from overlaysim.scenario.timeline import plan
from overlaysim.sim.runner import run_simulation
from overlaysim.world.dryrun import dry_run

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "scenarios" / "services.yaml"


def scenario(events: list[dict[str, Any]], **fields: Any) -> Any:
    data = {
        "name": "t",
        "duration": 100,
        "topology": {"generator": "star", "hosts": 4},
        "networks": [{"name": "web", "subnet": "10.1.0.0/24"}],
        "containers": [{"name": "c1", "host": "h1", "networks": ["web"]}],
        "events": events,
        **fields,
    }
    return validate_scenario(data)


def problems(events: list[dict[str, Any]], **fields: Any) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        scenario(events, **fields)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def ev(at: float, action: str, **kw: Any) -> dict[str, Any]:
    return {"at": at, "action": action, **kw}


def create(at: float = 1, name: str = "api", replicas: int = 2, **kw: Any) -> dict[str, Any]:
    return ev(at, "service_create", name=name, network="web", replicas=replicas, **kw)


def test_service_events_plan_into_typed_steps() -> None:
    sc = scenario(
        [
            create(1, endpoint_mode="dnsrr"),
            ev(2, "service_scale", service="api", replicas=5),
            ev(3, "service_update", service="api", endpoint_mode="vip"),
            ev(4, "service_rm", service="api"),
        ]
    )
    steps = plan(sc).steps
    assert steps == [
        ServiceCreate(
            at=1.0, origin=0, name="api", network="web", replicas=2, endpoint_mode="dnsrr"
        ),
        ServiceScale(at=2.0, origin=1, service="api", replicas=5),
        ServiceUpdate(at=3.0, origin=2, service="api", endpoint_mode="vip"),
        ServiceRm(at=4.0, origin=3, service="api"),
    ]
    assert plan(sc).has_services
    assert scenario([create()]).events[0].endpoint_mode == "vip"  # Docker's default


def test_unknown_service_is_one_line() -> None:
    msgs = problems(
        [
            ev(1, "service_scale", service="api", replicas=2),
            create(2),
            ev(3, "service_rm", service="api"),
            ev(4, "service_update", service="api", endpoint_mode="dnsrr"),
        ]
    )
    assert msgs == [
        'events[0].service: "api" is not valid: expected a service made by service_create '
        "that exists at t=1 (existing: none)",
        'events[3].service: "api" is not valid: expected a service made by service_create '
        "that exists at t=4 (existing: none)",
    ]


def test_negative_replicas_is_one_line() -> None:
    (msg,) = problems([create(replicas=-1)])
    assert msg == "events[0].replicas: -1 is not valid: expected an integer between 0 and 100000"
    (msg,) = problems([create(), ev(2, "service_scale", service="api", replicas=-3)])
    assert msg == "events[1].replicas: -3 is not valid: expected an integer between 0 and 100000"


def test_unknown_endpoint_mode_is_one_line() -> None:
    (msg,) = problems([create(endpoint_mode="ipvs")])
    assert msg.startswith("events[0].endpoint_mode: ") and "vip" in msg and "dnsrr" in msg
    (msg,) = problems([create(), ev(2, "service_update", service="api", endpoint_mode="rr")])
    assert msg.startswith("events[1].endpoint_mode: ")


def test_duplicate_service_is_one_line() -> None:
    (msg,) = problems([create(1), create(2)])
    assert msg == 'events[1].name: "api" is not valid: expected a service name not in use at t=2'
    # a service listed under services counts too; after service_rm the name is free again
    static = {"services": [{"name": "api", "replicas": 1, "network": "web"}]}
    (msg,) = problems([create(1)], **static)
    assert msg.startswith("events[0].name:")
    scenario([create(1), ev(2, "service_rm", service="api"), create(3)])


def test_service_names_are_dns_labels_and_tasks_clash_with_no_container() -> None:
    (msg,) = problems([create(name="Api")])
    assert msg == (
        'events[0].name: "Api" is not valid: expected a service name of lowercase letters, '
        "digits and '-' (one DNS label)"
    )
    (msg,) = problems(
        [create(replicas=3)], containers=[{"name": "api.3", "host": "h1", "networks": ["web"]}]
    )
    assert msg == (
        "events[0].replicas: 3 is not valid: expected a number of tasks whose names are free "
        "at t=1 (task api.3 would clash with container api.3)"
    )
    (msg,) = problems([create(), ev(5, "detach", container="api.2")])
    assert msg.startswith(
        'events[1].container: "api.2" is not valid: expected a container that is not a service task'
    )


def test_dry_run_allocates_the_vip_and_names_an_exhausted_pool() -> None:
    tiny = {"networks": [{"name": "web", "subnet": "10.1.0.0/29"}]}  # 5 usable addresses
    world = dry_run(
        scenario([create(replicas=3), ev(2, "service_rm", service="api"), create(3)], **tiny)
    )
    assert world.services.by_name["api"].vip is not None and not world.skipped
    with pytest.raises(ScenarioError) as info:
        dry_run(scenario([create(replicas=6)], **tiny))
    # the tasks past the pool find no address (each task change is refused on its own)
    problems = info.value.problems
    assert [p.message.split()[1] for p in problems] == ["api.4", "api.5", "api.6"]
    assert all(p.path == "events[0]" and "no free address" in p.message for p in problems)


def test_services_scenario_gives_the_dns_metrics(tmp_path: Path) -> None:
    sc = load_scenario(SERVICES)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_simulation(sc, a, progress=False) == "complete"
    run_simulation(load_scenario(SERVICES), b, progress=False)
    files = sorted(p.name for p in a.iterdir() if p.is_file())
    assert "dns.csv" in files
    for name in files:  # same seed: the same folder, byte for byte
        if name != "manifest.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    metrics = json.loads((a / "metrics.json").read_text())
    conv, stale = metrics["dns_convergence_s"], metrics["stale_dns_window_s"]
    assert conv["n"] >= 8 and conv["unconverged"] == 0
    assert stale["n"] >= 8 and stale["unconverged"] == 0
    # a LAN gossips a change everywhere in well under a second; the crash takes the
    # failure-detection time, which bounds both maxima
    assert 0 < conv["p50"] < 1.0 and 0 < stale["p50"] < 1.0
    fd = metrics["failure_detection_s"]
    assert fd["count"] == 1 and conv["max"] == pytest.approx(stale["max"])
    assert stale["max"] <= fd["all_dead_max"] + 0.5
    assert metrics_for(a) == metrics  # recomputed from the folder, the same numbers
    assert not metrics["skipped_steps"]
    # the simulator does not model L4 balancing: the probe is emulation-only, no lb_spread
    assert sc.measure.lb_probe is not None
    assert "lb_spread" not in metrics and "lb_probe.csv" not in files


def test_lb_probe_names_a_service_there_at_the_end_and_a_container() -> None:
    ok = scenario([create()], measure={"lb_probe": {"service": "api", "client": "c1"}})
    assert ok.measure.lb_probe.connections == 30 and ok.measure.lb_probe.port == 8080
    got = problems(
        [create(), ev(5, "service_rm", service="api")],
        measure={"lb_probe": {"service": "api", "client": "nobody"}},
    )
    assert got == [
        'measure.lb_probe.service: "api" is not valid: expected a service made by '
        "service_create that exists at the end (existing: none)",
        'measure.lb_probe.client: "nobody" is not valid: expected the name of a container',
    ]


def test_publish_and_command_plan_into_the_step_and_bad_ports_are_one_line_each() -> None:
    cmd = ["python3", "-m", "http.server", "8080"]
    sc = scenario([create(1, publish=["8081:8080"], command=cmd)])
    (step,) = plan(sc).steps
    assert step.publish == ("8081:8080",) and step.command == tuple(cmd)
    assert step.describe()["publish"] == ["8081:8080"] and step.describe()["command"] == cmd
    # left out of the events row when not given (runs without them record what they did)
    assert "publish" not in plan(scenario([create()])).steps[0].describe()
    msgs = problems(
        [
            create(1, publish=["80", "0:80", "8080:80", "7946:80", "8080:81"]),
            create(2, name="db", publish=["8080:5432", "x:y"]),
            ev(3, "service_rm", service="api"),
            create(4, name="cache", publish=["8080:6379"]),  # free again after the rm
        ]
    )
    assert msgs == [
        'events[0].publish[0]: "80" is not valid: expected PUBLISHED:TARGET, two ports '
        "1-65535 (e.g. 8080:80)",
        'events[0].publish[1]: "0:80" is not valid: expected PUBLISHED:TARGET, two ports '
        "1-65535 (e.g. 8080:80)",
        'events[0].publish[3]: "7946:80" is not valid: expected a published port the agents '
        "do not use (7946 is gossip)",
        'events[0].publish[4]: "8080:81" is not valid: expected a published port listed once '
        "(8080 twice)",
        'events[1].publish[0]: "8080:5432" is not valid: expected a published port no service '
        "holds at t=2 (service api publishes 8080)",
        'events[1].publish[1]: "x:y" is not valid: expected PUBLISHED:TARGET, two ports '
        "1-65535 (e.g. 8080:80)",
    ]
    (msg,) = problems([create(1, command=[])])
    assert msg.startswith("events[0].command: ") and "\n" not in msg
    (msg,) = problems([create(1, command=["python3", ""])])
    assert msg == 'events[0].command[1]: "" is not valid: expected a non-empty string'


def test_publish_and_command_are_recorded_not_run_by_the_simulator_and_dry_run(
    tmp_path: Path,
) -> None:
    sc = scenario(
        [create(1, replicas=2, publish=["8081:8080"], command=["sleep", "60"])], duration=5
    )
    world = dry_run(sc)
    svc = world.services.by_name["api"]
    assert svc.publish == ((8081, 8080),) and svc.command == ("sleep", "60")
    assert svc.ingress_vip is None  # no routing mesh in a dry run
    assert all(world.containers[n].command == ("sleep", "60") for n in svc.slots.values())
    run_simulation(sc, tmp_path / "sim", progress=False)
    rows = _rows(tmp_path / "sim" / "events.csv", "service_spec")
    assert len(rows) == 1 and rows[0]["subject"] == "api"
    assert json.loads(rows[0]["detail"]) == {
        "publish": ["8081:8080"],
        "command": ["sleep", "60"],
        "run": False,
    }


def _rows(path: Path, kind: str) -> list[dict[str, str]]:
    import csv

    with path.open() as f:
        return [r for r in csv.DictReader(f) if r["kind"] == kind]
