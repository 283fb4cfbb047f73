"""Local containers of one agent: attach and detach, with their rollbacks.

Attaching a container to a network takes four steps, each of which can fail:

1. the manager allocates an address (nothing to undo when it refuses);
2. the data plane plugs the container in (undo: release the address);
3. the node writes the endpoint entry (undo: unplug, release the address);
4. for ``run`` with several networks, the next network's attach (undo: detach every
   network attached so far and forget the container).

Each rollback reports its own failures as ``agent_error`` lines and re-raises the
first failure, so the caller sees why the operation failed and nothing half-made
stays behind (``tests/agent/test_agent_containers.py`` injects each failure).
The operations are serialised by one lock (:attr:`Containers.ops`), which a clean
stop also takes before releasing every address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from overlaysim.agent.control import BadRequest, ContainerRequest, ControlError
from overlaysim.agent.dataplane import NetInfo
from overlaysim.agent.keys import Keys, RunOnWorker
from overlaysim.agent.logging import EventLog
from overlaysim.agent.manager import ManagerClient
from overlaysim.agent.programmer import Programmer
from overlaysim.core.endpoint import ENDPOINTS, Endpoint
from overlaysim.core.mtu import derive_mtu
from overlaysim.core.network import DEFAULT_ATTACHMENT
from overlaysim.core.services import EndpointMode, TaskSpec, name_fields
from overlaysim.core.tables import TablesError


class NodePort(Protocol):
    """The part of :class:`overlaysim.core.node.Node` containers use."""

    @property
    def tables(self) -> Any: ...
    def join_network(self, network: str, now: float) -> None: ...
    def leave_network(self, network: str, now: float) -> None: ...
    def create_entry(
        self, network: str, table: str, key: str, value: dict[str, str], now: float
    ) -> None: ...
    def delete_entry(self, network: str, table: str, key: str, now: float) -> None: ...


@dataclass(slots=True)
class Container:
    """A local container and its attachments (network -> what ``attach`` returned)."""

    name: str
    standalone: bool
    nets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Extra DNS names on every network, and the service task this container is.
    aliases: tuple[str, ...] = ()
    task: TaskSpec | None = None
    #: The service's VIP on networks where it is not ``task.vip`` (the ingress network).
    task_vips: dict[str, str] = field(default_factory=dict)


class Containers:
    """The containers of one host (see module docstring).

    ``vtep`` is the host's underlay address (the endpoints' VTEP), ``flush`` hands the
    node's outputs over after each change, ``before_allocate`` runs before every
    address allocation (the agent releases its previous boot's addresses there).
    """

    def __init__(
        self,
        *,
        host: str,
        vtep: str,
        underlay_mtu: int,
        node: NodePort,
        programmer: Callable[[], Programmer],
        manager: Callable[[], ManagerClient],
        keys: Keys,
        run: RunOnWorker,
        flush: Callable[[], None],
        before_allocate: Callable[[], Awaitable[None]],
        events: EventLog,
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.host = host
        self.vtep = vtep
        self.underlay_mtu = underlay_mtu
        self.node = node
        self._programmer = programmer
        self._manager = manager
        self.keys = keys
        self._run = run
        self._flush = flush
        self._before_allocate = before_allocate
        self.events = events
        self._on_error = on_error
        #: Serialises container operations (and a clean stop's release of addresses).
        self.ops = asyncio.Lock()
        self._containers: dict[str, Container] = {}
        self._netinfo: dict[str, dict[str, Any]] = {}  # name or id -> manager's inspect

    # --- views ------------------------------------------------------------------------

    def networks_of(self) -> dict[str, list[str]]:
        """Local containers and the networks each is on."""
        return {n: sorted(c.nets) for n, c in self._containers.items()}

    def get(self, name: str) -> Container | None:
        """The local container ``name``, if there is one."""
        return self._containers.get(name)

    # --- operations -------------------------------------------------------------------

    async def run(self, req: ContainerRequest) -> dict[str, Any]:
        """Start a container on its networks: ``docker run`` (standalone) or a service task.

        Its aliases and task become name fields of its endpoint entries (the embedded
        DNS of every host answers from them); its command is not ours to start.
        """
        name = req.name
        async with self.ops:
            if name in self._containers:
                raise BadRequest(f"container {name} already exists on {self.host}")
            c = Container(
                name,
                req.standalone,
                aliases=req.aliases,
                task=req.task,
                task_vips=dict(req.task_vips),
            )
            self._containers[name] = c
            attached = []
            try:
                for network in req.networks:
                    attached.append(await self._attach(c, network, req.ip))
            except BaseException:
                for network in list(c.nets):  # rollback 4: what was attached goes
                    try:
                        await self._detach(c, network)
                    except Exception as exc:  # report the first failure, not this one
                        self._on_error("control:run:rollback", exc)
                self._containers.pop(name, None)
                raise
            netns = attached[0]["netns"]
            return {"container": name, "host": self.host, "netns": netns, "networks": attached}

    async def connect(self, name: str, network: str, ip: str | None = None) -> dict[str, Any]:
        """Attach a running container to one more network."""
        async with self.ops:
            return await self._attach(self._container(name), network, ip)

    async def disconnect(self, name: str, network: str, stay: bool = False) -> dict[str, Any]:
        """Detach a container from one network (it goes when its last network does);
        with ``stay`` a last container's network is not left (:meth:`leave_network`
        does that later)."""
        async with self.ops:
            return await self._detach(self._container(name), self._name(network), stay)

    async def leave_network(self, network: str) -> dict[str, Any]:
        """Leave ``network``'s tables, unless a local container is on it (one attached
        since the ``stay`` disconnect keeps the host on the network)."""
        async with self.ops:
            net = self._name(network)
            if any(net in c.nets for c in self._containers.values()):
                return {"network": net, "left": False}
            return {"network": net, "left": self._leave(net)}

    async def remove(self, name: str) -> dict[str, Any]:
        """Remove a container: its entries, interfaces and addresses."""
        async with self.ops:
            c = self._container(name)
            out = [await self._detach(c, network) for network in list(c.nets)]
            self._containers.pop(c.name, None)
            return {"container": c.name, "networks": out}

    async def withdraw(self, name: str) -> None:
        """Delete ``name``'s endpoint entries but leave it plugged in.

        Before a task's command is stopped its names go first, as Docker takes a task out
        of DNS and the load balancer before stopping it: new connections stop being sent
        to it while it still answers the ones it has. :meth:`remove` then skips them.
        """
        async with self.ops:
            c = self._containers.get(name)
            if c is None:
                return
            for network in list(c.nets):
                self._delete_entry(c, network)
            self._flush()

    async def release_all(self, manager: ManagerClient) -> None:
        """Give back every local container's addresses (best effort, on a clean stop)."""
        calls = [
            manager.release(network, c.name)
            for c in self._containers.values()
            for network in c.nets
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                self._on_error("release", r)

    # --- attach / detach --------------------------------------------------------------

    async def _network(self, name: str) -> dict[str, Any]:
        info = self._netinfo.get(name)
        if info is None:
            info = await self._manager().network_inspect(name)
            self._netinfo[name] = self._netinfo[info["name"]] = info
        return info

    async def _attach(self, c: Container, network: str, ip: str | None) -> dict[str, Any]:
        manager = self._manager()
        net = await self._network(network)
        name = net["name"]
        if name in c.nets:
            raise BadRequest(f"container {c.name} is already on network {name}")
        if net["encrypted"]:
            await self.keys.ensure(name)
        info = NetInfo(
            name=name,
            vni=net["vni"],
            subnet=net["subnet"],
            gateway=net["gateway"],
            mtu=derive_mtu(self.underlay_mtu, net["encrypted"], net["mtu"]),
            encrypted=bool(net["encrypted"]),
            attachment=net.get("attachment", DEFAULT_ATTACHMENT),
        )
        await self._before_allocate()
        alloc = await manager.allocate(name, c.name, ip, c.standalone, host=self.host)
        programmer = self._programmer()
        try:
            plug = await self._run(
                programmer.attach, c.name, info, alloc["ip"], alloc["prefixlen"], alloc["mac"]
            )
        except BaseException:
            await self._release_quietly(name, c.name)  # rollback 2
            raise
        self.events.write(
            "attach", container=c.name, network=name, ip=alloc["ip"], mac=alloc["mac"],
            vni=info.vni, mtu=info.mtu, ifname=plug["ifname"], netns=plug["netns"],
        )  # fmt: skip
        now = time.monotonic()
        if plug["first"]:
            self.node.join_network(name, now)
        endpoint = Endpoint(name=c.name, ip=alloc["ip"], mac=alloc["mac"], vtep=self.vtep)
        try:
            task = c.task
            if task is not None and name in c.task_vips:
                task = dataclasses.replace(task, mode=EndpointMode.VIP, vip=c.task_vips[name])
            value = {**endpoint.to_value(), **name_fields(c.aliases, task)}
            self.node.create_entry(name, ENDPOINTS, c.name, value, now)
        except TablesError as exc:  # rollback 3
            self._flush()
            await self._unplug(c.name, name)
            await self._release_quietly(name, c.name)
            raise ControlError(type(exc).__name__, str(exc)) from None
        self.events.write(
            "entry_commit", network=name, key=c.name, op="add", ip=alloc["ip"], vtep=self.vtep
        )
        self._flush()
        c.nets[name] = {
            "ip": alloc["ip"],
            "mac": alloc["mac"],
            "prefixlen": alloc["prefixlen"],
            "gateway": alloc["gateway"],
            "mtu": info.mtu,
            "vni": info.vni,
            "ifname": plug["ifname"],
            "netns": plug["netns"],
        }
        return {"network": name, **c.nets[name]}

    async def _detach(self, c: Container, network: str, stay: bool = False) -> dict[str, Any]:
        if network not in c.nets:
            raise BadRequest(f"container {c.name} is not on network {network}")
        self._delete_entry(c, network)
        attachment = c.nets.pop(network)
        self._flush()
        await self._unplug(c.name, network, stay)
        self.events.write("detach", container=c.name, network=network)
        released = await self._release_quietly(network, c.name)
        if not c.nets:
            self._containers.pop(c.name, None)
        return {"network": network, "ip": attachment["ip"], "released": released}

    def _delete_entry(self, c: Container, network: str) -> None:
        """Delete the endpoint entry of ``c`` on ``network`` once (see :meth:`withdraw`)."""
        attachment = c.nets[network]
        if attachment.get("withdrawn"):
            return
        attachment["withdrawn"] = True
        try:
            self.node.delete_entry(network, ENDPOINTS, c.name, time.monotonic())
        except TablesError as exc:  # already gone from the table (e.g. after a leave)
            self._on_error("delete_entry", exc)
        else:
            self.events.write(
                "entry_commit",
                network=network,
                key=c.name,
                op="delete",
                ip=attachment["ip"],
                vtep=self.vtep,
            )

    async def _unplug(self, container: str, network: str, stay: bool = False) -> None:
        result = await self._run(self._programmer().detach, container, network)
        if result["last"] and not stay:
            self._leave(network)

    def _leave(self, network: str) -> bool:
        """Leave ``network``'s tables (no local container is on it); whether it was on them."""
        on = network in self.node.tables.networks()
        if on:
            self.node.leave_network(network, time.monotonic())
            self._flush()
        self._netinfo = {k: v for k, v in self._netinfo.items() if v["name"] != network}
        return on

    def _name(self, network: str) -> str:
        """The network's name (a request may name it by id)."""
        info = self._netinfo.get(network)
        return info["name"] if info else network

    async def _release_quietly(self, network: str, container: str) -> bool:
        try:
            await self._manager().release(network, container)
        except Exception as exc:
            self._on_error("release", exc)
            return False
        return True

    def _container(self, name: str) -> Container:
        c = self._containers.get(name)
        if c is None:
            raise BadRequest(f"no container {name} on {self.host}")
        return c
