"""Workloads' teardown against a container start under way (fakes, no kernel)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from overlaysim.agent.control import ContainerRequest
from overlaysim.agent.workloads import Workloads


class _Containers:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self, req: ContainerRequest) -> dict[str, Any]:
        await self.release.wait()  # the namespace is being made
        return {"netns": f"ns-{req.name}"}


class _ServiceNet:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.at_close: list[str] | None = None

    async def start(self, name: str, netns: str, **_: Any) -> None:
        self.started.append(name)  # hostname, resolv.conf, DNS

    async def close(self) -> None:
        self.at_close = list(self.started)


def test_teardown_waits_for_a_start_under_way_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        containers, svcnet = _Containers(), _ServiceNet()
        w = Workloads(containers, svcnet, names_in_kernel=True, on_error=lambda *_: None)  # type: ignore[arg-type]
        start = asyncio.create_task(w.run(ContainerRequest("c9", ("web",), standalone=True)))
        await asyncio.sleep(0)  # the start holds the lock
        close = asyncio.create_task(w.close())
        await asyncio.sleep(0.01)
        assert svcnet.at_close is None  # teardown waits for the start to finish
        containers.release.set()
        await start
        await close
        assert svcnet.at_close == ["c9"]  # so the sweep sees its names and removes them
        with pytest.raises(RuntimeError, match="c10: the agent is shutting down"):
            await w.run(ContainerRequest("c10", ("web",), standalone=True))
        assert svcnet.started == ["c9"]

    asyncio.run(scenario())
