"""The manager's service records: VIPs from IPAM, scale, endpoint-mode updates, bad input."""

from __future__ import annotations

import pytest

from overlaysim.agent.manager import Manager
from overlaysim.agent.service_registry import task_spec, vip_endpoint
from overlaysim.core.cluster import Cluster
from overlaysim.core.services import TaskSpec


def call(m: Manager, op: str, **args):
    return m.handle({"op": op, "args": args})


def ok(answer: dict):
    assert "error" not in answer, answer
    return answer["result"]


def err(answer: dict) -> str:
    assert "result" not in answer, answer
    e = answer["error"]
    return f"{e['type']}: {e['message']}"


@pytest.fixture
def mgr() -> Manager:
    m = Manager(Cluster(), lambda: ["h1", "h2", "h3"])
    ok(call(m, "network_create", spec={"name": "web", "subnet": "10.50.0.0/24"}))
    return m


def _held(m: Manager) -> dict[str, str]:
    return {a.endpoint: a.ip for a in m.cluster.allocations("web")}


def test_vip_comes_from_the_network_ipam_and_goes_back(mgr: Manager) -> None:
    s = ok(call(mgr, "service_create", name="api", replicas=3, network="web"))
    assert s["mode"] == "vip" and s["gen"] == 1 and s["replicas"] == 3
    assert _held(mgr) == {vip_endpoint("api"): s["vip"]}
    assert s["tasks"] == [["api.1", "h1"], ["api.2", "h2"], ["api.3", "h3"]]
    # a task's request field builds a valid TaskSpec, the agent's side of the contract
    spec = task_spec(s, "api.2")
    assert spec == {"service": "api", "slot": 2, "mode": "vip", "gen": 1, "vip": s["vip"]}
    TaskSpec(spec["service"], spec["slot"], vip=spec["vip"], gen=spec["gen"])
    # the network cannot go while the service holds its VIP
    assert err(call(mgr, "network_rm", name="web")).startswith("NetworkInUse")
    ok(call(mgr, "service_rm", name="api"))
    assert _held(mgr) == {}


def test_vip_reserve_is_idempotent_and_release_frees(mgr: Manager) -> None:
    a = ok(call(mgr, "vip_reserve", network="web", service="db"))["ip"]
    assert ok(call(mgr, "vip_reserve", network="web", service="db"))["ip"] == a
    assert ok(call(mgr, "vip_release", network="web", service="db"))["ip"] == a
    assert _held(mgr) == {}
    assert err(call(mgr, "vip_reserve", network="nope", service="db")).startswith("NetworkNotFound")


def test_vip_reserve_takes_a_requested_address_as_a_restarted_manager_needs() -> None:
    """A restarted manager starts with an empty IPAM: the VIPs its services held are
    reserved again at their addresses, so the next service gets another one; a clash is
    one line naming the VIP, the service, the network and who holds the address."""
    before = Manager(Cluster(), lambda: ["h1"])
    ok(call(before, "network_create", spec={"name": "web", "subnet": "10.50.0.0/24"}))
    old = ok(call(before, "service_create", name="api", replicas=1, network="web"))["vip"]
    after = Manager(Cluster(), lambda: ["h1"])  # the manager restarted: nothing held
    ok(call(after, "network_create", spec={"name": "web", "subnet": "10.50.0.0/24"}))
    assert ok(call(after, "vip_reserve", network="web", service="api", ip=old))["ip"] == old
    # asking again for the same address is fine (idempotent), another one is not
    assert ok(call(after, "vip_reserve", network="web", service="api", ip=old))["ip"] == old
    other = "10.50.0.200"
    assert err(call(after, "vip_reserve", network="web", service="api", ip=other)) == (
        f"AddressInUse: VIP {other} of service api on network web: the service already "
        f"holds VIP {old}; expected that address or none"
    )
    new = ok(call(after, "vip_reserve", network="web", service="db"))["ip"]
    assert new != old
    # a container holds the address: the clash names it
    ok(call(after, "allocate", network="web", endpoint="c1", ip="10.50.0.77", standalone=False))
    line = err(call(after, "vip_reserve", network="web", service="cache", ip="10.50.0.77"))
    assert line == (
        "AddressInUse: VIP 10.50.0.77 of service cache on network web: ip='10.50.0.77': "
        "already allocated to endpoint 'c1' on network web"
    )
    assert "\n" not in line
    assert err(call(after, "vip_reserve", network="web", service="x", ip=5)).startswith(
        "InvalidSpec: ip=5"
    )
    assert err(call(after, "vip_reserve", network="web", service="x", ip="10.9.0.1")).startswith(
        "InvalidSpec"
    )


def test_scale_adds_the_lowest_free_slots_and_removes_the_highest(mgr: Manager) -> None:
    ok(call(mgr, "service_create", name="api", replicas=3, network="web"))
    down = ok(call(mgr, "service_scale", name="api", replicas=1))
    assert down["removed"] == [["api.3", "h3"], ["api.2", "h2"]] and down["added"] == []
    assert down["tasks"] == [["api.1", "h1"]]
    up = ok(call(mgr, "service_scale", name="api", replicas=2))
    assert up["added"] == [["api.2", "h2"]]  # back where api.2 last ran (its tombstone's)
    zero = ok(call(mgr, "service_scale", name="api", replicas=0))
    assert zero["tasks"] == [] and len(zero["removed"]) == 2


def test_a_task_name_goes_back_to_the_host_it_last_ran_on(mgr: Manager) -> None:
    """Re-creating a removed service puts each task where that task name last ran (a
    host whose agent booted earlier than the deleting one could not create the entry
    over its tombstone); a new name, or one whose host is down, goes round robin."""
    live = ["h1", "h2", "h3"]
    mgr.services.live_hosts = lambda: list(live)
    first = ok(call(mgr, "service_create", name="web", replicas=3, network="web"))
    assert first["tasks"] == [["web.1", "h1"], ["web.2", "h2"], ["web.3", "h3"]]
    ok(call(mgr, "service_rm", name="web"))
    ok(call(mgr, "service_create", name="db", replicas=1, network="web"))  # moves the cursor
    again = ok(call(mgr, "service_create", name="web", replicas=4, network="web"))
    assert again["tasks"] == [["web.1", "h1"], ["web.2", "h2"], ["web.3", "h3"], ["web.4", "h2"]]
    ok(call(mgr, "service_rm", name="web"))
    live.remove("h2")
    down = ok(call(mgr, "service_create", name="web", replicas=2, network="web"))
    assert down["tasks"] == [["web.1", "h1"], ["web.2", "h3"]]  # h2 is down: the cursor's


def test_update_switches_endpoint_mode_with_a_new_generation(mgr: Manager) -> None:
    ok(call(mgr, "service_create", name="api", replicas=2, network="web"))
    s = ok(call(mgr, "service_update", name="api", mode="dnsrr"))
    assert s["mode"] == "dnsrr" and s["vip"] is None and s["gen"] == 2 and _held(mgr) == {}
    assert "vip" not in task_spec(s, "api.1")
    s = ok(call(mgr, "service_update", name="api", mode="vip"))
    assert s["gen"] == 3 and _held(mgr) == {vip_endpoint("api"): s["vip"]}
    same = ok(call(mgr, "service_update", name="api", mode="vip"))
    assert same["gen"] == 3  # no change, no new generation


@pytest.mark.parametrize(
    ("op", "args", "line"),
    [
        ("service_scale", {"name": "ghost", "replicas": 1}, "ServiceNotFound: service 'ghost'"),
        ("service_rm", {"name": "ghost"}, "ServiceNotFound: service 'ghost' not found"),
        ("service_update", {"name": "ghost", "mode": "vip"}, "ServiceNotFound"),
        ("service_scale", {"name": "api", "replicas": -1}, "InvalidSpec: replicas -1: expected"),
        (
            "service_create",
            {"name": "x", "replicas": 1, "network": "web", "mode": "ipvs"},
            "InvalidSpec: endpoint mode 'ipvs': unknown; expected vip or dnsrr",
        ),
        ("service_update", {"name": "api", "mode": "rr"}, "InvalidSpec: endpoint mode 'rr'"),
        (
            "service_create",
            {"name": "tasks", "replicas": 1, "network": "web"},
            "InvalidSpec: service name 'tasks'",
        ),
        (
            "service_create",
            {"name": "no spaces", "replicas": 1, "network": "web"},
            "InvalidSpec: service name 'no spaces': expected a DNS name",
        ),
        ("service_create", {"name": "x", "network": "web"}, "InvalidSpec: missing argument"),
        (
            "service_create",
            {"name": "x", "replicas": 1, "network": "web", "command": ["ok", 3]},
            "InvalidSpec: command=",
        ),
    ],
)
def test_bad_input_is_one_clear_line(mgr: Manager, op: str, args: dict, line: str) -> None:
    ok(call(mgr, "service_create", name="api", replicas=1, network="web"))
    message = err(call(mgr, op, **args))
    assert message.startswith(line) and "\n" not in message


def test_mesh_publish_holds_ports_of_services_placed_elsewhere(mgr: Manager) -> None:
    """The emulator's World places its tasks itself; the manager still holds their
    published ports (every host's mesh, a restarted agent's) and the ingress VIP."""
    vip = ok(call(mgr, "mesh_publish", service="api", publish=[[8081, 8080]]))["ip"]
    assert ok(call(mgr, "ingress_ports")) == [[8081, vip, 8080, "api"]]
    # the same ports again: the same VIP (a restore asks with ip=)
    assert ok(call(mgr, "mesh_publish", service="api", publish=["8081:8080"], ip=vip))["ip"] == vip
    assert err(call(mgr, "mesh_publish", service="db", publish=["8081:5432"])) == (
        "PortInUse: published port 8081: already used by service api"
    )
    assert err(
        call(mgr, "service_create", name="web", network="web", replicas=0, publish=["8081:80"])
    ) == ("PortInUse: published port 8081: already used by service api")
    assert err(call(mgr, "mesh_publish", service="db", publish=[])).startswith("InvalidSpec")
    assert ok(call(mgr, "mesh_unpublish", service="api"))["ip"] == vip
    assert ok(call(mgr, "ingress_ports")) == []
    assert err(call(mgr, "mesh_unpublish", service="api")).startswith("ServiceNotFound")
