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
