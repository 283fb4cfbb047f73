"""A restarted manager gets back what the world holds: services' VIPs, then addresses.

No root: the testbed is a stand-in whose manager calls go to a real
:class:`~overlaysim.agent.manager.Manager`, created anew as a restarted manager is.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from overlaysim.agent.manager import Manager, error_from_wire
from overlaysim.core.cluster import Cluster
from overlaysim.core.services import EndpointMode, TaskSpec
from overlaysim.emu.backend import EmuBackend
from overlaysim.scenario.loader import load_scenario
from overlaysim.world.container import Container
from overlaysim.world.services import ServiceState

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"


class FakeTestbed:
    """The manager host's agent, reduced to its manager calls."""

    manager_host = "h1"
    underlay = SimpleNamespace()

    def __init__(self) -> None:
        self.manager = Manager(Cluster(), lambda: ["h1", "h2"])
        self.ingress_tables: dict[str, Any] = {}  # what h2's agent holds on ingress
        self.mesh: dict[str, list[list[Any]]] = {}  # host -> the ports last sent

    def running(self) -> list[str]:
        return ["h1", "h2"]

    def call(self, host: str, op: str, **args: Any) -> Any:
        if op == "tables":
            return {"ingress": self.ingress_tables} if host == "h2" else {}
        if op == "ingress":
            self.mesh[host] = args["ports"]
            return {"ports": [p[0] for p in args["ports"]]}
        raise AssertionError(op)

    def restart_manager(self) -> None:
        self.manager = Manager(Cluster(), lambda: ["h1", "h2"])  # starts empty

    def manager_call(self, call: str, **args: Any) -> Any:
        answer = self.manager.handle({"op": call, "args": args})
        if "error" in answer:
            raise error_from_wire(answer["error"])
        return answer["result"]


def _world(services: list[ServiceState], containers: list[Container]) -> SimpleNamespace:
    skipped: list[dict[str, Any]] = []
    return SimpleNamespace(
        services=SimpleNamespace(by_name={s.name: s for s in services}),
        containers={c.name: c for c in containers},
        up={"h1", "h2"},
        skipped=skipped,
        skip=lambda action, **info: skipped.append({"action": action, **info}),
    )


def test_restored_manager_holds_the_old_vips_and_hands_out_new_ones() -> None:
    tb = FakeTestbed()
    backend = EmuBackend(load_scenario(QUICKSTART), tb)  # type: ignore[arg-type]
    backend.create_networks()
    vip = backend.reserve_vip("api", "web")
    task_ip = tb.manager_call(
        "allocate", network="web", endpoint="api.1", standalone=False, host="h2"
    )["ip"]
    api = ServiceState("api", "web", EndpointMode.VIP, vip, slots={1: "api.1"})
    task = Container("api.1", "h2", {"web": task_ip}, live=True, task=api.task(1))
    world = _world([api], [task])
    backend.bind(world)  # type: ignore[arg-type]

    tb.restart_manager()
    backend._restore_manager()

    assert world.skipped == []
    held = {a.endpoint: a.ip for a in tb.manager.cluster.allocations("web")}
    assert held == {"vip:api": vip, "api.1": task_ip}
    # the next service's VIP is another address (before the fix: the old VIP again)
    other = backend.reserve_vip("db", "web")
    assert other not in (vip, task_ip)
    # the restored VIP is the service's own: reserving it again returns it
    assert backend.reserve_vip("api", "web") == vip


def test_a_vip_clash_on_restore_is_one_line_and_the_rest_is_restored() -> None:
    tb = FakeTestbed()
    backend = EmuBackend(load_scenario(QUICKSTART), tb)  # type: ignore[arg-type]
    backend.create_networks()
    vip = backend.reserve_vip("api", "web")
    # an inconsistent world: two services claim the same VIP
    api = ServiceState("api", "web", EndpointMode.VIP, vip)
    dup = ServiceState("dup", "web", EndpointMode.VIP, vip)
    c1 = Container("c1", "h1", {"web": "10.10.0.50"}, live=True)
    world = _world([api, dup], [c1])
    backend.bind(world)  # type: ignore[arg-type]

    tb.restart_manager()
    backend._restore_manager()

    assert world.skipped == [
        {
            "action": "restore_vip",
            "host": "h1",
            "service": "dup",
            "reason": f"AddressInUse: VIP {vip} of service dup on network web: ip='{vip}': "
            "already allocated to endpoint 'vip:api' on network web",
        }
    ]
    held = {a.endpoint: a.ip for a in tb.manager.cluster.allocations("web")}
    assert held == {"vip:api": vip, "c1": "10.10.0.50"}
    TaskSpec("api", 1, vip=vip)  # the spec the world's tasks carry is still valid


def test_restored_manager_holds_published_ports_and_the_ingress_addresses() -> None:
    tb = FakeTestbed()
    backend = EmuBackend(load_scenario(QUICKSTART), tb)  # type: ignore[arg-type]
    backend.create_networks()
    ingress_vip = backend.publish("api", [(8081, 8080)])
    assert ingress_vip is not None and tb.mesh == {"h1": [[8081, ingress_vip, 8080, "api"]]} | {
        "h2": [[8081, ingress_vip, 8080, "api"]]
    }
    task = tb.manager_call("allocate", network="ingress", endpoint="api.1", standalone=False)
    box = tb.manager_call("allocate", network="ingress", endpoint="ingress.h2", standalone=False)
    tb.ingress_tables = {
        "api.1": {"owner": "h2", "value": {"ip": task["ip"]}},
        "ingress.h2": {"owner": "h2", "value": {"ip": box["ip"]}},
        "ingress.h1": {"owner": "h1", "value": {"ip": "10.0.0.99"}},  # the old manager boot's
    }
    api = ServiceState(
        "api", "web", EndpointMode.DNSRR, None, publish=((8081, 8080),), ingress_vip=ingress_vip
    )
    world = _world([api], [])
    backend.bind(world)  # type: ignore[arg-type]

    tb.restart_manager()
    tb.mesh.clear()
    backend._restore_manager()

    assert world.skipped == []
    held = {a.endpoint: a.ip for a in tb.manager.cluster.allocations("ingress")}
    assert held == {"vip:api": ingress_vip, "api.1": task["ip"], "ingress.h2": box["ip"]}
    assert tb.manager_call("ingress_ports") == [[8081, ingress_vip, 8080, "api"]]
    # every running agent is told again (the manager host's new boot asked too early)
    assert tb.mesh == {h: [[8081, ingress_vip, 8080, "api"]] for h in ("h1", "h2")}
