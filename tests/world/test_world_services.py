"""Services in the world, played on the simulator: placement, scale, update, rm, crashes,
and the service-DNS truth the metrics compare against."""

from __future__ import annotations

import ipaddress
import json

import pytest

from overlaysim.core.endpoint import ENDPOINTS
from overlaysim.core.services import AnswerKind, Directory, EndpointMode, vip_endpoint
from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.steps import (
    Attach,
    Crash,
    Restart,
    ServiceCreate,
    ServiceRm,
    ServiceScale,
    ServiceUpdate,
    Step,
)
from overlaysim.scenario.timeline import plan
from overlaysim.sim.runner import SimWorld
from overlaysim.world.services import place

SUBNET = "10.20.0.0/24"


def scenario(hosts: int = 5, timing: dict | None = None):
    extra = {"service_timing": timing} if timing else {}
    return validate_scenario(
        {
            **extra,
            "name": "svc",
            "duration": 60,
            "topology": {"generator": "star", "hosts": hosts},
            "networks": [{"name": "app", "subnet": SUBNET}],
            "containers": [{"name": "client", "host": f"h{hosts}", "networks": ["app"]}],
        }
    )


def run(
    steps: list[Step],
    until: float = 60.0,
    hosts: int = 5,
    seed: int = 1,
    timing: dict | None = None,
) -> SimWorld:
    sc = scenario(hosts, timing)
    the_plan = plan(sc, seed)
    the_plan.steps = sorted(steps, key=lambda s: s.at)
    world = SimWorld(sc, seed, services=True)
    world.start(the_plan)
    world.env.run(until=until)
    return world


def hosts_of(world: SimWorld, service: str) -> dict[str, str]:
    svc = world.services.by_name[service]
    return {world.containers[n].name: world.containers[n].host for n in svc.slots.values()}


def directory(world: SimWorld, host: str) -> Directory:
    """What ``host``'s embedded DNS would answer from: its endpoint table now."""
    d = Directory()
    node = world.cluster.node(host)
    values = {key: e.value for (_, key), e in node.tables.entries("app", ENDPOINTS).items()}
    d.load("app", values)
    return d


def truth_rows(world: SimWorld, service: str) -> list[tuple[float, list[str]]]:
    return [
        (r[0], json.loads(r[7])["ips"])
        for r in world.events.rows
        if r[2] == "service_tasks" and r[3] == service
    ]


def test_place_prefers_fewest_tasks_then_fewest_containers_then_topology_order():
    hosts = ["h1", "h2", "h3"]
    assert place(hosts, {"h1", "h2", "h3"}, {}) == "h1"
    assert place(hosts, {"h1", "h2", "h3"}, {"h1": 1}) == "h2"
    assert place(hosts, {"h1", "h2", "h3"}, {"h1": 1}, {"h2": 2, "h3": 1}) == "h3"
    assert place(hosts, {"h2"}, {"h2": 5}) == "h2"  # only running hosts count
    assert place(hosts, set(), {}) is None


def test_create_spreads_tasks_and_scale_fills_then_removes_the_highest_slots():
    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=3),
            ServiceScale(at=5, service="web", replicas=5),
        ],
        until=8,
    )
    # h5 holds the client: the 5th task goes there only once every host has one task
    assert hosts_of(world, "web") == {
        "web.1": "h1",
        "web.2": "h2",
        "web.3": "h3",
        "web.4": "h4",
        "web.5": "h5",
    }
    svc = world.services.by_name["web"]
    assert svc.mode is EndpointMode.VIP and svc.gen == 1
    net = ipaddress.ip_network(SUBNET)
    task_ips = {world.containers[n].networks["app"] for n in svc.slots.values()}
    assert ipaddress.ip_address(svc.vip) in net and svc.vip not in task_ips
    assert world.sim.ipam.allocation("app", vip_endpoint("web")).ip == svc.vip
    # a remote host's endpoint entry carries the name fields of the task
    value = world.cluster.node("h4").tables.entries("app", ENDPOINTS)[(ENDPOINTS, "web.1")].value
    assert value["service"] == "web" and value["slot"] == "1" and value["vip"] == svc.vip
    assert value["mode"] == "vip" and value["svc_gen"] == "1"
    # the client host answers the service name with the VIP, tasks.web with all five
    d = directory(world, "h5")
    assert d.resolve("client", "web").ips == (svc.vip,)
    assert set(d.resolve("client", "tasks.web").ips) == task_ips

    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=5),
            ServiceScale(at=5, service="web", replicas=2),
        ],
        until=10,
    )
    assert hosts_of(world, "web") == {"web.1": "h1", "web.2": "h2"}
    assert not {"web.3", "web.4", "web.5"} & set(world.containers)
    # one task change at a time, task_interval (0.5 s) apart: five adds, three removals
    rows = truth_rows(world, "web")
    assert [t for t, _ in rows] == [1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 5.5, 6.0]
    assert [len(ips) for _, ips in rows] == [1, 2, 3, 4, 5, 4, 3, 2]
    assert set(rows[-1][1]) < set(rows[4][1])


def test_placement_and_addresses_do_not_depend_on_the_seed():
    steps = [
        ServiceCreate(at=1, name="web", network="app", replicas=3),
        ServiceCreate(at=2, name="rr", network="app", replicas=2, endpoint_mode="dnsrr"),
        ServiceScale(at=5, service="web", replicas=6),
    ]
    a, b = run(steps, until=7, seed=1), run(steps, until=7, seed=99)
    for svc in ("web", "rr"):
        assert hosts_of(a, svc) == hosts_of(b, svc)
        assert truth_rows(a, svc) == truth_rows(b, svc)
    # rr.1 goes to the one empty host; then every host holds one container
    assert hosts_of(a, "rr") == {"rr.1": "h4", "rr.2": "h1"}
    # web.4/web.5 to the hosts without a web task, web.6 to the least loaded one
    assert hosts_of(a, "web") == {
        "web.1": "h1",
        "web.2": "h2",
        "web.3": "h3",
        "web.4": "h4",
        "web.5": "h5",
        "web.6": "h2",
    }


def test_update_replaces_tasks_with_the_new_mode_and_gives_the_vip_back():
    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=3),
            ServiceUpdate(at=5, service="web", endpoint_mode="dnsrr"),
        ],
        until=10,
    )
    svc = world.services.by_name["web"]
    assert svc.mode is EndpointMode.DNSRR and svc.vip is None and svc.gen == 2
    assert hosts_of(world, "web") == {"web.1": "h1", "web.2": "h2", "web.3": "h3"}
    assert all(world.containers[n].task.gen == 2 for n in svc.slots.values())
    assert not any(a.endpoint == vip_endpoint("web") for a in world.sim.ipam.allocations("app"))
    rows = truth_rows(world, "web")
    before, after = rows[2][1], rows[-1][1]
    # each task in turn: removed, then its successor detach_delay (0.25 s) later
    assert [t for t, _ in rows[3:]] == [5.0, 5.25, 5.5, 5.75, 6.0, 6.25]
    assert [len(ips) for _, ips in rows[3:]] == [2, 3, 2, 3, 2, 3]
    assert len(after) == 3 and not set(before) & set(after)  # replaced tasks, new addresses
    ans = directory(world, "h5").resolve("client", "web")
    assert ans.kind is AnswerKind.ANSWER and set(ans.ips) == set(after)

    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=2, endpoint_mode="dnsrr"),
            ServiceUpdate(at=5, service="web", endpoint_mode="vip"),
        ],
        until=10,
    )
    svc = world.services.by_name["web"]
    assert svc.vip is not None and directory(world, "h5").resolve("client", "web").ips == (svc.vip,)


def test_a_task_name_goes_back_to_its_last_host_while_that_host_runs():
    """Re-created after an rm, ``web.1`` and ``web.2`` go back to h1 and h2 although
    containers added there make h3 and h4 the least loaded: elsewhere, a host whose
    node booted earlier than the deleting one could not create the name again before
    its tombstone is reaped (the emulator's agents refused; this simulator's first boots
    share epoch 0 and did not). A last host that is down does not count."""
    busy = [
        Attach(at=7, container=f"x{h}{i}", host=f"h{h}", network="app")
        for h in (1, 2)
        for i in (1, 2)
    ]
    steps: list[Step] = [
        ServiceCreate(at=1, name="web", network="app", replicas=2),
        ServiceRm(at=5, service="web"),
        *busy,
        ServiceCreate(at=10, name="web", network="app", replicas=2),
    ]
    world = run(steps, until=14)
    assert hosts_of(world, "web") == {"web.1": "h1", "web.2": "h2"}
    assert not world.skipped
    world = run([*steps[:-1], Crash(at=9, host="h2"), steps[-1]], until=14)
    assert hosts_of(world, "web") == {"web.1": "h1", "web.2": "h3"}


def test_rm_removes_every_task_and_the_vip_and_the_name_stops_resolving():
    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=3),
            ServiceRm(at=5, service="web"),
        ],
        until=10,
    )
    assert "web" not in world.services.by_name
    assert not [n for n in world.containers if n.startswith("web.")]
    assert not any(a.endpoint == vip_endpoint("web") for a in world.sim.ipam.allocations("app"))
    assert truth_rows(world, "web")[-1] == (6.0, [])
    assert directory(world, "h5").resolve("client", "web").kind is AnswerKind.NXDOMAIN
    rows = world.dns_tracker.finish()
    stale = [r for r in rows if r["metric"] == "stale_dns_window_s"]
    assert len(stale) == 3 and all(r["status"] == "converged" for r in stale)
    assert all(0 < r["value_s"] < 2 for r in stale)  # a LAN deletes in well under 2 s


def test_a_crashed_hosts_tasks_leave_the_dns_truth_and_come_back_with_it():
    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=3),
            Crash(at=10, host="h2"),
            Restart(at=40, host="h2"),
        ],
        until=55,
    )
    rows = truth_rows(world, "web")
    web2 = world.containers["web.2"].networks["app"]
    assert [t for t, _ in rows] == [1.0, 1.5, 2.0, 10.0, 40.0]
    rows = rows[2:]
    assert web2 in rows[0][1] and web2 not in rows[1][1] and web2 in rows[2][1]
    dns = world.dns_tracker.finish()
    crash_conv = next(r for r in dns if r["metric"] == "dns_convergence_s" and r["t"] == 10.0)
    crash_stale = next(r for r in dns if r["metric"] == "stale_dns_window_s" and r["t"] == 10.0)
    assert crash_stale["ip"] == web2 and crash_stale["status"] == "converged"
    # the other hosts drop the dead host's entries when failure detection declares it dead
    detected = [r for r in world.events.rows if r[2] == "member_dead" and r[3] == "h2"]
    assert detected and crash_stale["value_s"] == pytest.approx(
        max(r[0] for r in detected) - 10.0, abs=1.0
    )
    # waited for: the running hosts on the network (h1, h3 and the client's h5)
    assert crash_conv["status"] == "converged" and crash_conv["targets"] == 3
    # after the restart every host answers all three tasks again
    assert set(directory(world, "h5").resolve("client", "tasks.web").ips) == set(rows[2][1])
    assert all(r["status"] == "converged" for r in dns)


def test_steps_the_world_cannot_play_are_skipped_with_the_reason():
    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=2),
            ServiceCreate(at=2, name="web", network="app", replicas=1),
            ServiceScale(at=3, service="nope", replicas=2),
            ServiceUpdate(at=4, service="web", endpoint_mode="vip"),
            ServiceRm(at=5, service="nope"),
        ],
        until=6,
    )
    assert [(s["action"], s["service"], s["reason"]) for s in world.skipped] == [
        ("service_create", "web", "service web exists"),
        ("service_scale", "nope", "no service nope"),
        ("service_update", "web", "service web is already in vip mode"),
        ("service_rm", "nope", "no service nope"),
    ]
    assert len(world.services.by_name["web"].slots) == 2


def test_a_service_step_unfolds_task_by_task_and_a_host_leaves_detach_delay_later():
    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=3),
            ServiceScale(at=10, service="web", replicas=0),
        ],
        until=12,
        timing={"task_interval": 0.4, "detach_delay": 0.3},
    )
    rows = world.events.rows
    attach = [(r[0], r[3]) for r in rows if r[2] == "container_attach" and r[3].startswith("web")]
    assert attach == [(1.0, "web.1"), (1.4, "web.2"), (1.8, "web.3")]
    detach = [(r[0], r[3]) for r in rows if r[2] == "container_detach"]
    assert detach == [(10.0, "web.3"), (10.4, "web.2"), (10.8, "web.1")]
    # h1-h3 held nothing else on app: each leaves 0.3 s after its task went, not before
    leaves = {r[1]: r[0] for r in rows if r[2] == "net_detach"}
    assert leaves == pytest.approx({"h3": 10.3, "h2": 10.7, "h1": 11.1})
    # the simulated node leaves then too (its table no longer holds the network)
    assert "app" not in world.cluster.node("h1").tables.networks()
    commits = [(r[0], r[1]) for r in rows if r[2] == "entry_commit" and r[6] == "delete"]
    assert commits == [(10.0, "h3"), (10.4, "h2"), (10.8, "h1")]


def test_the_leave_is_pending_until_its_time_and_zero_timing_is_one_instant():
    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=1),
            ServiceRm(at=10, service="web"),
        ],
        until=10.2,
        timing={"task_interval": 0.4, "detach_delay": 0.3},
    )
    assert "app" in world.cluster.node("h1").tables.networks()  # 0.2 s after: still on it
    assert not [r for r in world.events.rows if r[2] == "net_detach"]

    world = run(
        [
            ServiceCreate(at=1, name="web", network="app", replicas=3),
            ServiceRm(at=10, service="web"),
        ],
        until=11,
        timing={"task_interval": 0, "detach_delay": 0},
    )
    times = {r[0] for r in world.events.rows if r[2] in ("container_detach", "net_detach")}
    assert times == {10.0}
    assert {t for t, _ in truth_rows(world, "web")} == {1.0, 10.0}
