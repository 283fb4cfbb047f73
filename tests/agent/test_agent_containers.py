"""Attach and detach with each failure injected: every rollback leaves nothing behind.

The real :class:`Manager` (in process, no socket) holds the addresses, the real
:class:`Programmer` drives a kernel-less data plane, and a small node stands in for the
core's tables; each test breaks one step and checks that the address is released,
the port unplugged, the entry absent and the container forgotten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agent_fakes import FakeDataPlane, aio

from overlaysim.agent.containers import Containers
from overlaysim.agent.control import BadRequest, ContainerRequest, ControlError
from overlaysim.agent.keys import Keys
from overlaysim.agent.logging import EventLog
from overlaysim.agent.manager import Manager, ManagerClient, _result
from overlaysim.agent.programmer import Programmer
from overlaysim.core.cluster import Cluster
from overlaysim.core.endpoint import Endpoint
from overlaysim.core.tables import TablesError

HOST, VTEP = "h1", "10.98.0.1"


class LocalManager(ManagerClient):
    """A manager client answering from an in-process :class:`Manager`; ``fail`` breaks ops."""

    def __init__(self, manager: Manager) -> None:
        super().__init__("127.0.0.1:1")
        self.manager = manager
        self.fail: dict[str, Exception] = {}
        self.ops: list[str] = []

    async def call(self, op: str, **args: Any) -> Any:
        self.ops.append(op)
        if op in self.fail:
            raise self.fail.pop(op)
        return _result(self.manager.handle({"op": op, "args": args}))


class FakeNode:
    """The node calls containers make: joined networks and endpoint entries."""

    def __init__(self) -> None:
        self.joined: set[str] = set()
        self.entries: dict[tuple[str, str], dict[str, str]] = {}
        self.fail_create: Exception | None = None

    @property
    def tables(self) -> FakeNode:
        return self

    def networks(self) -> set[str]:
        return set(self.joined)

    def join_network(self, network: str, now: float) -> None:
        self.joined.add(network)

    def leave_network(self, network: str, now: float) -> None:
        self.joined.discard(network)

    def create_entry(
        self, network: str, table: str, key: str, value: dict[str, str], now: float
    ) -> None:
        if self.fail_create is not None:
            exc, self.fail_create = self.fail_create, None
            raise exc
        self.entries[(network, key)] = value

    def delete_entry(self, network: str, table: str, key: str, now: float) -> None:
        if self.entries.pop((network, key), None) is None:
            raise TablesError(f"no entry {key} on {network}")


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.cluster = Cluster()
        manager = Manager(self.cluster, lambda: [HOST])
        for name, subnet in (("web", "10.10.0.0/24"), ("db", "10.20.0.0/24")):
            spec = {"name": name, "subnet": subnet, "attachable": True}
            assert "result" in manager.handle({"op": "network_create", "args": {"spec": spec}})
        self.manager = LocalManager(manager)
        self.dp = FakeDataPlane(underlay_ip=VTEP)
        self.node = FakeNode()
        self.events = EventLog(tmp_path / "h1.jsonl", node=HOST, keep=True)
        self.errors: list[str] = []
        programmer = Programmer(self.dp, node=HOST, log=self.events)

        async def run(fn: Any, *args: Any) -> Any:
            return fn(*args)

        def on_error(what: str, exc: BaseException) -> None:
            self.errors.append(what)

        async def nothing() -> None:
            return None

        keys = Keys(
            host=HOST,
            manager=lambda: self.manager,
            dataplane=lambda: self.dp,
            run=run,
            submit=lambda fn, *a: fn(*a),
            events=self.events,
            on_error=on_error,
        )
        self.containers = Containers(
            host=HOST,
            vtep=VTEP,
            underlay_mtu=1500,
            node=self.node,
            programmer=lambda: programmer,
            manager=lambda: self.manager,
            keys=keys,
            run=run,
            flush=lambda: None,
            before_allocate=nothing,
            events=self.events,
            on_error=on_error,
        )

    def held(self, network: str) -> list[str]:
        """Endpoints holding an address on ``network`` at the manager."""
        return sorted(a.endpoint for a in self.cluster.allocations(network))

    def assert_nothing_left(self) -> None:
        assert self.held("web") == [] and self.held("db") == []
        assert self.dp.containers == {} and self.dp.kernel == {}
        assert self.node.entries == {} and self.node.joined == set()
        assert self.containers.networks_of() == {}


@aio
async def test_attach_and_detach_happy_path(tmp_path: Path) -> None:
    w = World(tmp_path)
    out = await w.containers.run(ContainerRequest("c1", ("web", "db"), standalone=True))
    assert [n["network"] for n in out["networks"]] == ["web", "db"]
    assert w.held("web") == ["c1"] and w.held("db") == ["c1"]
    value = w.node.entries[("web", "c1")]
    assert Endpoint.from_value(value, vtep_ip=True).vtep == VTEP
    assert out["networks"][0]["mtu"] == 1450  # the core's derivation
    await w.containers.remove("c1")
    w.assert_nothing_left()


@aio
async def test_rollback_when_the_data_plane_refuses(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.dp.fail_next = OSError("injected: veth creation failed")
    with pytest.raises(OSError, match="injected"):
        await w.containers.run(ContainerRequest("c1", ("web",), standalone=True))
    assert "release" in w.manager.ops  # the allocated address went back
    w.assert_nothing_left()


@aio
async def test_rollback_when_the_entry_cannot_be_written(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.node.fail_create = TablesError("injected: network not joined")
    with pytest.raises(ControlError, match="injected"):
        await w.containers.run(ContainerRequest("c1", ("web",), standalone=True))
    assert ("detach", "c1", "web") in w.dp.calls  # unplugged again
    w.assert_nothing_left()


@aio
async def test_rollback_of_earlier_networks_when_a_later_one_fails(tmp_path: Path) -> None:
    w = World(tmp_path)
    original = w.manager.call
    calls = {"allocate": 0}

    async def second_allocate_fails(op: str, **args: Any) -> Any:
        if op == "allocate":
            calls["allocate"] += 1
            if calls["allocate"] == 2:
                raise BadRequest("injected: pool exhausted")
        return await original(op, **args)

    w.manager.call = second_allocate_fails  # type: ignore[method-assign]
    with pytest.raises(BadRequest, match="pool exhausted"):
        await w.containers.run(ContainerRequest("c1", ("web", "db"), standalone=True))
    # web was attached, then rolled back: entry deleted, unplugged, address released
    assert ("detach", "c1", "web") in w.dp.calls
    assert [e for e in w.events.lines or [] if e["kind"] == "detach"]
    w.assert_nothing_left()
    # and the name is free again
    await w.containers.run(ContainerRequest("c1", ("web",), standalone=True))
    assert w.held("web") == ["c1"]


@aio
async def test_a_failing_rollback_is_reported_and_the_first_error_raised(tmp_path: Path) -> None:
    w = World(tmp_path)
    original = w.manager.call
    state = {"allocs": 0}

    async def flaky(op: str, **args: Any) -> Any:
        if op == "allocate":
            state["allocs"] += 1
            if state["allocs"] == 2:
                raise BadRequest("injected: second network refused")
        if op == "release":
            raise OSError("injected: manager gone during rollback")
        return await original(op, **args)

    w.manager.call = flaky  # type: ignore[method-assign]
    with pytest.raises(BadRequest, match="second network refused"):
        await w.containers.run(ContainerRequest("c1", ("web", "db"), standalone=True))
    assert "release" in w.errors  # the rollback's own failure is logged, not raised
    assert w.containers.networks_of() == {} and w.dp.containers == {}


@aio
async def test_detach_of_an_unknown_network_or_container_is_a_clear_error(tmp_path: Path) -> None:
    w = World(tmp_path)
    await w.containers.run(ContainerRequest("c1", ("web",), standalone=True))
    with pytest.raises(BadRequest, match="not on network db"):
        await w.containers.disconnect("c1", "db")
    with pytest.raises(BadRequest, match="no container c9"):
        await w.containers.remove("c9")
    with pytest.raises(BadRequest, match="already exists"):
        await w.containers.run(ContainerRequest("c1", ("db",), standalone=True))


@aio
async def test_withdraw_deletes_the_entries_first_and_remove_finishes(tmp_path: Path) -> None:
    from overlaysim.core.services import TaskSpec

    w = World(tmp_path)
    task = TaskSpec("api", 1, vip="10.10.0.200")
    await w.containers.run(
        ContainerRequest("api.1", ("web", "db"), standalone=False, aliases=("x",), task=task)
    )
    value = w.node.entries[("web", "api.1")]
    assert value["service"] == "api" and value["vip"] == "10.10.0.200" and value["aliases"] == "x"
    await w.containers.withdraw("api.1")
    await w.containers.withdraw("api.1")  # twice: nothing more to delete
    await w.containers.withdraw("ghost")  # unknown: nothing to do
    assert w.node.entries == {} and w.dp.containers  # names gone, still plugged in
    assert w.held("web") == ["api.1"]
    await w.containers.remove("api.1")
    w.assert_nothing_left()
    assert w.errors == []  # remove did not try to delete the entries again
    deletes = [r for r in w.events.lines if r["kind"] == "entry_commit" and r["op"] == "delete"]
    assert len(deletes) == 2


@aio
async def test_a_stay_disconnect_keeps_the_network_until_leave_network(tmp_path: Path) -> None:
    w = World(tmp_path)
    await w.containers.run(ContainerRequest("c1", ("web",), standalone=True))
    await w.containers.disconnect("c1", "web", stay=True)
    # unplugged and forgotten, but the host stays on the network's tables
    assert w.containers.networks_of() == {} and w.dp.containers == {}
    assert w.node.networks() == {"web"}
    assert await w.containers.leave_network("web") == {"network": "web", "left": True}
    assert w.node.networks() == set()
    # nothing left to leave: said so, not an error
    assert await w.containers.leave_network("web") == {"network": "web", "left": False}


@aio
async def test_leave_network_stays_while_a_local_container_is_on_it(tmp_path: Path) -> None:
    w = World(tmp_path)
    await w.containers.run(ContainerRequest("c1", ("web",), standalone=True))
    await w.containers.disconnect("c1", "web", stay=True)
    await w.containers.run(ContainerRequest("c2", ("web",), standalone=True))  # came back
    assert await w.containers.leave_network("web") == {"network": "web", "left": False}
    assert w.node.networks() == {"web"} and ("web", "c2") in w.node.entries
    # a plain disconnect of the last container leaves at once, as before
    await w.containers.disconnect("c2", "web")
    assert w.node.networks() == set()
