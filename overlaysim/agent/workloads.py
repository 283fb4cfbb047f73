"""A container's whole life on this host: interfaces and addresses, then names and command.

:class:`~overlaysim.agent.containers.Containers` attaches and detaches (with its
rollbacks); :class:`~overlaysim.agent.servicenet.ServiceNet` gives a container its
hostname, resolv.conf, embedded DNS, VIP table and task command. :class:`Workloads`
runs the two in order under one lock, so that starting and removing a container never
interleave with another start or removal, and undoes the first when the second fails.
The driver loop (:mod:`overlaysim.agent.daemon`) only forwards control requests here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from overlaysim.agent.containers import Containers
from overlaysim.agent.control import ContainerRequest
from overlaysim.agent.servicenet import ServiceNet


class Workloads:
    """Start, connect, disconnect and remove containers with their names and commands.

    ``names_in_kernel`` off (an injected, fake data plane) skips the names and commands
    that need a real namespace; ``on_error(what, exc)`` reports a failed rollback.
    """

    def __init__(
        self,
        containers: Containers,
        svcnet: ServiceNet,
        *,
        names_in_kernel: bool,
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.containers = containers
        self.svcnet = svcnet
        self.names_in_kernel = names_in_kernel
        self._closed = False
        self._on_error = on_error
        #: Serialises starting and removing containers with their names and commands.
        self._lock = asyncio.Lock()

    async def run(self, req: ContainerRequest) -> dict[str, Any]:
        """Start a container on its networks: ``docker run`` (standalone) or a service task.

        Once its namespace exists it gets its hostname (its name), resolv.conf, embedded
        DNS server and VIP table; then its command, if any, starts inside it. A failure
        at any step removes everything made so far.
        """
        async with self._lock:
            if self._closed:  # a request that raced the agent's teardown
                raise RuntimeError(f"container {req.name}: the agent is shutting down")
            out = await self.containers.run(req)
            netns = out["netns"]
            if not self.names_in_kernel:
                return out
            try:
                pid = await self.svcnet.start(
                    req.name, netns, aliases=req.aliases, task=req.task, command=req.command
                )
                if pid is not None:
                    out["pid"] = pid
            except BaseException:
                await self.svcnet.stop(req.name)
                try:
                    await self.containers.remove(req.name)
                except Exception as exc:  # report the first failure, not this one
                    self._on_error("control:run:rollback", exc)
                raise
            return out

    async def connect(self, name: str, network: str, ip: str | None = None) -> dict[str, Any]:
        """Attach a running container to one more network."""
        return await self.containers.connect(name, network, ip)

    async def disconnect(self, name: str, network: str, stay: bool = False) -> dict[str, Any]:
        """Detach a container from one network (it goes when its last network does).

        ``stay``: when this was the host's last container on the network, the host
        stays on it (its tables) until :meth:`leave_network` (the scenario's
        ``service_timing.detach_delay``, whose time the world keeps for every backend)."""
        async with self._lock:
            c = self.containers.get(name)
            if c is not None and len(c.nets) == 1:
                await self.svcnet.stop(name)  # the last network: the namespace goes
            return await self.containers.disconnect(name, network, stay)

    async def leave_network(self, network: str) -> dict[str, Any]:
        """Leave ``network`` unless a local container is on it."""
        async with self._lock:
            return await self.containers.leave_network(network)

    async def remove(self, name: str) -> dict[str, Any]:
        """Remove a container: its entries first, then its command and names, interfaces
        and addresses (other hosts stop sending it new connections before it stops)."""
        async with self._lock:
            await self.containers.withdraw(name)
            await self.svcnet.stop(name)
            return await self.containers.remove(name)

    async def close(self) -> None:
        """Teardown: let a start or removal under way finish, refuse new starts, then stop
        every container's names and commands (routing mesh, DNS servers, files).

        Without the lock a start racing the teardown would write its resolv.conf and UTS
        file after the sweep and leave them behind."""
        async with self._lock:
            self._closed = True
            await self.svcnet.close()

    async def ingress(
        self, ports: list[list[Any]], *, if_version: int | None = None
    ) -> dict[str, Any]:
        """Hold exactly ``ports`` in the routing mesh (see :meth:`ServiceNet.ingress`)."""

        async def run(name: str, networks: list[str]) -> dict[str, Any]:
            return await self.run(ContainerRequest(name, tuple(networks), standalone=False))

        return await self.svcnet.ingress(ports, run, self.remove, if_version=if_version)
