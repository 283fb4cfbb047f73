"""One agent's service networking: names, DNS, VIPs, task commands and the routing mesh.

The agent (:mod:`overlaysim.agent.daemon`) calls it at four points:

* every table event (:meth:`ServiceNet.on_event`, on the event loop): the host's
  :class:`~overlaysim.agent.service_host.ServiceHost` updates its directory, and the VIP
  tables of the local containers it touched are rewritten on the data-plane worker
  thread (the plan is read on the loop, where the directory changes; ``nft`` runs on
  the worker, in order with the programmer's jobs; plans made while a rewrite is
  still queued join it, each container's newest plan once);
* once a container's namespace exists (:meth:`ServiceNet.start`): its hostname,
  resolv.conf, embedded DNS server and VIP table, then its command
  (:mod:`overlaysim.agent.taskprocs`);
* before its namespace goes (:meth:`ServiceNet.stop`): all of it, command first;
* the published ports (:meth:`ServiceNet.ingress`, :mod:`overlaysim.agent.ingress`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from overlaysim.agent import ingress as mesh
from overlaysim.agent.dns import EmbeddedDns
from overlaysim.agent.logging import EventLog
from overlaysim.agent.service_host import ServiceHost
from overlaysim.agent.service_registry import INGRESS
from overlaysim.agent.taskprocs import TaskProcesses
from overlaysim.core.events import EntryEvent
from overlaysim.core.services import Directory, TaskSpec

__all__ = ["ServiceNet"]

#: Run a blocking function on the data-plane worker and wait / queue it without waiting.
RunOnWorker = Callable[..., Awaitable[Any]]
Submit = Callable[..., None]


class ServiceNet:
    """The service networking of the host ``host`` (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str,
        prefix: str,
        underlay_ip: str,
        seed: int | None,
        events: EventLog,
        run: RunOnWorker,
        submit: Submit,
    ) -> None:
        self.host, self.prefix, self.underlay_ip = host, prefix, underlay_ip
        self.names = ServiceHost(EmbeddedDns(Directory(), rng=random.Random(seed)))
        self.procs = TaskProcesses()
        self.events = events
        self._run, self._submit = run, submit
        self.ingress_netns: str | None = None  # the routing mesh's sandbox, once needed
        #: The host's ``ip_forward`` before the mesh turned it on (also in the host table).
        self._forward_before = "0"
        #: How many times the mesh's port set was set (a restore fetched earlier yields).
        self.mesh_version = 0
        self._mesh_lock = asyncio.Lock()

    @property
    def sandbox_name(self) -> str:
        """The ingress sandbox's container name (one per host)."""
        return f"ingress.{self.host}"

    def on_event(self, ev: EntryEvent) -> None:
        touched = self.names.on_event(ev)
        if touched:
            self._queue_vips(touched)

    def _queue_vips(self, names: Sequence[str] | set[str]) -> None:
        """Rewrite the VIP tables of ``names`` on the worker, coalesced with rewrites
        still queued (:meth:`ServiceHost.queue_vips`)."""
        if self.names.queue_vips(names):
            self._submit(self.names.apply_queued)

    async def start(
        self,
        name: str,
        netns: str,
        *,
        aliases: Sequence[str] = (),
        task: TaskSpec | None = None,
        command: Sequence[str] = (),
    ) -> int | None:
        """Names for a container whose namespace exists, then its command; its pid."""
        await self.names.start_container(name, netns)
        self._queue_vips([name])
        pid = self.procs.start(name, netns, command).pid if command else None
        self.events.write(
            "names", container=name, netns=netns, aliases=list(aliases),
            service=task.service if task else "", command=list(command),
        )  # fmt: skip
        return pid

    async def stop(self, name: str) -> None:
        """Stop a container's command, DNS server, hostname and resolv.conf."""
        status = await self.procs.stop(name)
        if status is not None:
            self.events.write("command_stopped", container=name, status=status)
        await self.names.stop_container(name)

    async def forget_leftovers(self, netns_names: Sequence[str]) -> None:
        """The files a killed previous boot's containers had (their namespaces are gone)."""
        for name in netns_names:
            await asyncio.to_thread(self.names.remove_files, name)

    async def ingress(
        self,
        ports: list[list[Any]],
        run: Callable[[str, list[str]], Awaitable[dict[str, Any]]],
        remove: Callable[[str], Awaitable[Any]],
        *,
        if_version: int | None = None,
    ) -> dict[str, Any]:
        """Hold exactly ``ports`` (``[[P, ingress VIP, T, ...], ...]``) in the routing mesh.

        The first port starts the ingress sandbox (``run``: a container on the
        ``ingress`` network, then joined to this namespace); with none left it goes.
        With ``if_version`` only if the port set was not set since that version (a
        restore that fetched the set earlier yields to a newer one): ``skipped`` is True.
        """
        async with self._mesh_lock:
            if if_version is not None and if_version != self.mesh_version:
                return {"ports": [], "sandbox": self.ingress_netns, "skipped": True}
            self.mesh_version += 1
            if ports and self.ingress_netns is None:
                await self._start_mesh(run, remove)
            if ports:
                rules = mesh.render_host_rules(
                    self.prefix, self.underlay_ip, ports, self._forward_before
                )
                await self._run(mesh.replace_host_rules, rules)
            elif self.ingress_netns is not None:
                await self._run(mesh.remove_host_side, self.prefix)
                await remove(self.sandbox_name)
                self.ingress_netns = None
            return {"ports": [p[0] for p in ports], "sandbox": self.ingress_netns}

    async def _start_mesh(
        self,
        run: Callable[[str, list[str]], Awaitable[dict[str, Any]]],
        remove: Callable[[str], Awaitable[Any]],
    ) -> None:
        """The sandbox and the veth pair. The host table comes first, holding the host's
        ``ip_forward`` as it was: whatever happens later (a failure here, a killed
        agent), removing the table puts forwarding back."""
        before = await self._run(mesh.forwarding)
        empty = mesh.render_host_rules(self.prefix, self.underlay_ip, [], before)
        await self._run(mesh.replace_host_rules, empty)
        self._forward_before = before
        sbox = self.sandbox_name
        started = False
        try:
            out = await run(sbox, [INGRESS])
            started = True
            net = out["networks"][0]
            await self._run(
                mesh.plumb, self.prefix, out["netns"], f"{net['ip']}/{net['prefixlen']}"
            )
        except BaseException:
            await self._run(mesh.remove_host_side, self.prefix)
            if started:
                await remove(sbox)
            raise
        self.ingress_netns = out["netns"]

    async def recover(self) -> str | None:
        """After a killed boot: remove the routing mesh it left in the host namespace and
        put its ``ip_forward`` back; the value restored (None: it left no mesh)."""
        return await self._run(mesh.remove_host_side, self.prefix)

    async def close(self) -> None:
        """Before the namespaces go: routing mesh, commands, DNS servers, files."""
        if self.ingress_netns is not None:
            await self._run(mesh.remove_host_side, self.prefix)
        await self.procs.stop_all()
        for name in list(self.names.containers):
            await self.names.stop_container(name)
        await self.names.dns.close()

    def status(self) -> dict[str, Any]:
        return {
            "dns": dict(self.names.dns.counts),
            "vip_errors": self.names.vip_errors,
            "commands": self.procs.status(),
            "published": self.ingress_netns is not None,
        }
