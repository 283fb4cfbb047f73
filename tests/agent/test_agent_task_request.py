"""The run/task control request's name fields: aliases, task spec, command; bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from overlaysim.agent.control import BadRequest, ContainerRequest, operations
from overlaysim.core.services import EndpointMode, TaskSpec


class Recorder:
    def __init__(self) -> None:
        self.calls: list[ContainerRequest] = []

    async def run_container(self, req: ContainerRequest) -> dict[str, Any]:
        self.calls.append(req)
        return {"container": req.name}


def run(op: str, **req: Any) -> ContainerRequest:
    agent = Recorder()
    asyncio.run(operations(agent)[op](req))  # type: ignore[arg-type]
    return agent.calls[-1]


def test_task_fields_reach_the_agent_typed() -> None:
    c = run(
        "task",
        container="web.2",
        network="front",
        aliases=["Www", "api"],
        task={"service": "web", "slot": 2, "mode": "vip", "vip": "10.0.0.2", "gen": 3},
        command=["python3", "-m", "http.server"],
    )
    assert c.name == "web.2" and c.networks == ("front",)
    assert c.standalone is False and c.aliases == ("www", "api")
    assert c.task == TaskSpec("web", 2, EndpointMode.VIP, "10.0.0.2", 3)
    assert c.command == ("python3", "-m", "http.server")
    plain = run("run", container="c1", network="front")
    assert plain.standalone is True and plain.task is None and plain.ip is None
    assert plain.aliases == () and plain.command == () and dict(plain.task_vips) == {}
    rr = run(
        "task", container="db.1", network="b", task={"service": "db", "slot": 1, "mode": "dnsrr"}
    )
    assert rr.task is not None and rr.task.mode is EndpointMode.DNSRR and rr.task.vip is None


@pytest.mark.parametrize(
    ("req", "line"),
    [
        ({"aliases": "www"}, "aliases: expected a list of non-empty strings"),
        ({"aliases": ["bad name"]}, "alias 'bad name': expected a DNS name"),
        ({"task": "web.1"}, "task: expected an object"),
        ({"task": {"service": "web", "slot": 1, "vip": "10.0.0.2", "x": 1}}, "task field 'x'"),
        ({"task": {"service": "web", "slot": 1, "mode": "ipvs"}}, "task mode 'ipvs': expected"),
        ({"task": {"service": "web", "slot": 0, "vip": "10.0.0.2"}}, "task: slot 0: expected"),
        ({"task": {"service": "web", "slot": 1}}, "task: vip None: expected an IPv4"),
        ({"command": ["ok", ""]}, "command: expected a list of non-empty strings"),
    ],
)
def test_bad_name_fields_are_one_line(req: dict[str, Any], line: str) -> None:
    with pytest.raises(BadRequest) as info:
        run("task", container="web.1", network="front", **req)
    assert info.value.message.startswith(line) and "\n" not in info.value.message


class Leaver:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def disconnect(self, name: str, network: str, stay: bool = False) -> dict[str, Any]:
        self.calls.append(("disconnect", name, network, stay))
        return {}

    async def leave_network(self, network: str) -> dict[str, Any]:
        self.calls.append(("leave_network", network))
        return {}


def test_disconnect_stay_and_leave_network_reach_the_agent_checked() -> None:
    agent = Leaver()
    ops = operations(agent)  # type: ignore[arg-type]
    asyncio.run(ops["disconnect"]({"container": "c1", "network": "web"}))
    asyncio.run(ops["disconnect"]({"container": "c1", "network": "web", "stay": True}))
    asyncio.run(ops["leave_network"]({"network": "web"}))
    assert agent.calls == [
        ("disconnect", "c1", "web", False),
        ("disconnect", "c1", "web", True),
        ("leave_network", "web"),
    ]
    for op, req, line in [
        ("disconnect", {"container": "c1", "network": "web", "stay": 1}, "stay: expected true or"),
        ("leave_network", {}, "network: expected a non-empty string"),
        ("leave_network", {"network": ""}, "network: expected a non-empty string"),
    ]:
        with pytest.raises(BadRequest) as info:
            asyncio.run(ops[op](req))
        assert info.value.message.startswith(line) and "\n" not in info.value.message
    assert len(agent.calls) == 3  # a bad request reaches nothing
