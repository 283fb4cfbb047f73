"""overlayd: the live agent, one process per (Mininet) host.

``python -m overlaysim.agent.daemon --name h3 --bind 172.30.0.3 --seeds 172.30.0.1:7946
--manager 172.30.0.1:2377 --control /run/overlaysim/<run>/h3.sock --log ...``

The agent is a thin asyncio driver around one :class:`~overlaysim.core.node.Node`: it
feeds the node datagrams and streams from :class:`~overlaysim.agent.transport.Transport`,
fires its single timer, and after every input flushes the node's sends (to the
transport) and events (to the JSON-lines log and to the
:class:`~overlaysim.agent.programmer.Programmer`, which programs the kernel on a worker
thread). It makes no protocol decisions. Its containers (attach, detach and their
rollbacks) are :class:`~overlaysim.agent.containers.Containers`, started and removed with
their names and commands by :class:`~overlaysim.agent.workloads.Workloads`; its network
keys :class:`~overlaysim.agent.keys.Keys`; what the control API reads
:mod:`overlaysim.agent.views`; the kernel side the :mod:`overlaysim.agent.dataplane` package.

All state is in memory: SIGKILL is a node crash. A restart cleans the kernel objects
its previous boot recorded (``--record``), asks the manager to release the previous
boot's addresses and joins with a higher epoch (milliseconds since 1970 by default).
SIGTERM/SIGINT leave gracefully and remove everything created. ``docs/agent.md``
describes the control operations and log lines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from overlaysim.agent.containers import Containers
from overlaysim.agent.control import ContainerRequest, ControlError, ControlServer, operations
from overlaysim.agent.created import clean_recorded
from overlaysim.agent.dataplane import DataPlane
from overlaysim.agent.keys import Keys
from overlaysim.agent.logging import EventLog, RateLimit, event_line
from overlaysim.agent.manager import MANAGER_PORT, Manager, ManagerClient, ManagerServer
from overlaysim.agent.options import AgentConfig, parse_args
from overlaysim.agent.programmer import DataPlanePort, Programmer, remote_entries
from overlaysim.agent.servicenet import ServiceNet
from overlaysim.agent.transport import (
    Counters,
    TrafficDelta,
    Transport,
    sealed_configs,
)
from overlaysim.agent.views import members_view, status_view, tables_view
from overlaysim.agent.workloads import Workloads
from overlaysim.core.cluster import Cluster
from overlaysim.core.config import configs
from overlaysim.core.endpoint import ENDPOINTS
from overlaysim.core.events import EntryEvent, MemberEvent
from overlaysim.core.gossip_crypto import GossipKeyring
from overlaysim.core.node import Node
from overlaysim.core.wire import Message, TableGossip

#: The underlay MTU libnetwork's overlay driver assumes whatever the real one is (its
#: fixed 1450-byte VXLAN MTU); used when ``tables.mtu_from_underlay`` is off.
ASSUMED_UNDERLAY_MTU = 1500
#: Attempts to fetch and apply the routing mesh's ports at start (0.5 s apart).
MESH_RESTORE_TRIES = 20


class Agent:
    """One running agent.

    ``dataplane`` may be injected (tests); otherwise the kernel one is built at start.
    ``handle_signals`` installs the SIGTERM/SIGINT handlers (one agent per process).
    ``names_in_kernel`` gives containers their hostname, resolv.conf, embedded DNS and
    VIP table (default: only with the kernel data plane).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        dataplane: DataPlanePort | None = None,
        handle_signals: bool = True,
        names_in_kernel: bool | None = None,
    ) -> None:
        self.cfg = config
        self.handle_signals = handle_signals
        self.events = EventLog(config.log, node=config.name)
        self.counters = Counters()
        #: Seals gossip and the manager channel (None: cleartext control plane).
        self.keyring = GossipKeyring(list(config.gossip_keys)) if config.gossip_keys else None
        proto = config.protocol
        mcfg, tcfg = configs(
            config.profile,
            proto.get("membership"),
            proto.get("tables"),
            proto.get("variant", "overlaysim"),
            proto.get("extensions"),
        )
        if self.keyring is not None:  # sealing adds bytes: leave room in every datagram
            mcfg, tcfg = sealed_configs(mcfg, tcfg)
        self.node = Node(
            name=config.name,
            addr=config.addr,
            membership=mcfg,
            tables=tcfg,
            rng=random.Random(config.seed),
            epoch=config.epoch,
        )
        self._dataplane = dataplane
        self.programmer: Programmer | None = None
        self.transport = Transport(
            bind=config.bind,
            port=config.port,
            deliver=self._deliver,
            on_error=self._report,
            counters=self.counters,
            keyring=self.keyring,
        )
        addr = config.manager_addr
        self.manager = ManagerClient(addr, keyring=self.keyring) if addr else None
        self.manager_server: ManagerServer | None = None
        self.control: ControlServer | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataplane")
        self.keys = Keys(
            host=config.name,
            manager=self._need_manager,
            dataplane=lambda: self.programmer.dataplane if self.programmer else None,
            run=self._dp,
            submit=self._submit,
            events=self.events,
            on_error=self._error,
        )
        self.containers = Containers(
            host=config.name,
            vtep=config.bind,
            # libnetwork assumes a 1500-byte underlay (the docker variant's setting)
            underlay_mtu=config.underlay_mtu
            if self.node.tables.config.mtu_from_underlay
            else ASSUMED_UNDERLAY_MTU,
            node=self.node,
            programmer=self._programmer,
            manager=self._need_manager,
            keys=self.keys,
            run=self._dp,
            flush=self._flush,
            before_allocate=self._release_host,
            events=self.events,
            on_error=self._error,
        )
        #: Names, embedded DNS, VIP tables, task commands, routing mesh.
        self.svcnet = ServiceNet(
            host=config.name, prefix=config.prefix, underlay_ip=config.bind, seed=config.seed,
            events=self.events, run=self._dp, submit=self._submit,
        )  # fmt: skip
        # Hostname, resolv.conf and DNS need the container's real namespace: off with an
        # injected (fake) data plane unless asked for; the directory is fed either way.
        self.workloads = Workloads(
            self.containers,
            self.svcnet,
            names_in_kernel=dataplane is None if names_in_kernel is None else names_in_kernel,
            on_error=self._error,
        )
        self._limits: dict[str, RateLimit] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        #: When the armed timer became due: its deadline, or the moment it was armed if
        #: the core gave a deadline already past (work it wants done at once).
        self._timer_due = 0.0
        #: How late each timer fired since the last ``timer_lag`` line (s past when it
        #: was due).
        self._timer_late: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._rekeys: set[asyncio.Task[None]] = set()  # early rotations under way
        self._released = False
        self._stopping = False
        self._torn_down = False
        self._done = asyncio.Event()
        #: Set once the agent listens and has started its node.
        self.started = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until stopped, clean up. Returns the exit status."""
        try:
            await self._start()
        except BaseException:
            await self._teardown()
            raise
        await self._done.wait()
        return 0

    async def _start(self) -> None:
        cfg = self.cfg
        cleaned: list[str] = []
        if cfg.record is not None and cfg.record.exists():
            # a previous boot of this host was killed: remove exactly what it recorded
            cleaned = [o.name for o in await self._dp(clean_recorded, cfg.record)]
            await self.svcnet.forget_leftovers(cleaned)  # its containers' name files
            await self._recover_mesh()  # its routing mesh's host table and ip_forward
        dataplane = self._dataplane or DataPlane(
            host=cfg.name,
            underlay_ip=cfg.bind,
            vxlan_port=cfg.vxlan_port,
            record_path=cfg.record,
            prefix=cfg.prefix,
            esp_port=cfg.esp_port,
            esp_max_seq=cfg.esp_seq_limit,
            on_rekey=self._rekey_callback() if self.node.tables.config.rekey_with_next else None,
        )
        self.programmer = Programmer(dataplane, node=cfg.name, log=self.events)
        await self.transport.start()
        if cfg.serve_manager:
            port = int(cfg.manager_addr.rpartition(":")[2]) if cfg.manager_addr else MANAGER_PORT
            manager = Manager(Cluster(), self._live_hosts, secure=self.keyring is not None)
            self.manager_server = ManagerServer(
                manager,
                cfg.bind,
                port,
                keyring=self.keyring,
                key_rotation=cfg.key_rotation if self.keyring is not None else None,
            )
            await self.manager_server.start()
        if cfg.control is not None:
            self.control = ControlServer(
                cfg.control, operations(self, cfg.leave_grace), self._unexpected
            )
            await self.control.start()
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            self._install_signal_handlers(loop)
        now = time.monotonic()
        self.events.write(
            "start",
            addr=cfg.addr,
            epoch=cfg.epoch,
            profile=cfg.profile,
            seeds=list(cfg.seeds),
            manager=cfg.manager_addr or "",
            cleaned=cleaned,
        )
        self.node.start(now, cfg.seeds)
        self._flush()
        for coro in (
            self._traffic_loop(),
            self._reconcile_loop(),
            self._join_loop(),
            self._release_loop(),
            self.keys.loop(self.cfg.key_poll),
        ):
            self._tasks.append(loop.create_task(coro))
        self.started.set()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """SIGTERM/SIGINT: graceful leave and clean stop.

        Not ``loop.add_signal_handler``: its wakeup fd is inherited by children that
        pyroute2 forks (and stops with SIGTERM), so a signal to a helper would reach
        this loop and stop the agent. A plain handler checks which process it runs in.
        """
        pid = os.getpid()

        def on_signal(signum: int, frame: object) -> None:
            if os.getpid() != pid:  # a forked helper: end it the way the signal would
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            loop.call_soon_threadsafe(self.request_stop, True)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)

    def request_stop(self, leave: bool = True) -> None:
        """Stop soon (from a signal handler or a control operation)."""
        if not self._stopping:
            self._stopping = True
            asyncio.get_running_loop().create_task(self._stop(leave))

    async def _stop(self, leave: bool) -> None:
        try:
            if leave and not self.node.membership.has_left:
                self.node.leave(time.monotonic())
                self._flush()
                await asyncio.sleep(self.cfg.leave_grace)  # timers keep gossiping the leave
            async with self.containers.ops:
                await self._release_all()
        finally:
            await self._teardown()

    async def _teardown(self) -> None:
        if self._torn_down:
            return
        self._torn_down = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        await self.transport.close()
        if self.manager is not None:
            await self.manager.aclose()
        for server in (self.control, self.manager_server):
            if server is not None:
                await server.close()
        try:  # before the namespaces go: routing mesh, commands, DNS sockets, files
            await self.workloads.close()
        except Exception as exc:
            self._error("teardown", exc)
        crypto: dict[str, Any] = {}
        try:
            crypto = await self.keys.final_counters()
        except Exception as exc:
            self._error("teardown", exc)
        if self.programmer is not None:
            try:
                await self._dp(self.programmer.close)
            except Exception as exc:
                self._error("teardown", exc)
        self._executor.shutdown(wait=True)
        self.events.write("stop", counters=self.counters.as_dict(), esp=crypto)
        self.events.close()
        self._done.set()

    # --- driving the core -------------------------------------------------------------------

    def _deliver(self, src: str, msg: Message) -> None:
        if self.cfg.trace_gossip and isinstance(msg, TableGossip):
            self.events.write("gossip_rx", **_gossip_fields(msg), src=msg.source)
        try:
            if not self.node.receive(src, msg, time.monotonic()):
                return  # it changed nothing (a retransmission of what we hold): no outputs
        except Exception as exc:  # a peer's message must never take the agent down
            self.counters.handler_errors += 1
            self._report(
                "handler", f"{msg.TYPE.name.lower()} from {src}: {type(exc).__name__}: {exc}"
            )
        self._flush()

    def _on_timer(self) -> None:
        when = self._timer_at
        self._timer = self._timer_at = None
        fired = time.monotonic()
        if when is not None:
            # a busy loop (or a starved process) runs the callback late: the emulator's
            # fidelity guard reads this from the log (docs/emulation.md, "Lag"). Counted
            # from when it was due here, not from a deadline that had passed before the
            # core asked for it (that is not lateness of this loop).
            self._timer_late.append(max(0.0, fired - self._timer_due))
        # asyncio may fire up to one clock tick early; the core must see the deadline reached
        now = max(fired, when or 0.0)
        try:
            self.node.handle_timer(now)
        except Exception as exc:
            self._report("timer", f"{type(exc).__name__}: {exc}")
            self._flush(not_before=now + 0.1)  # don't spin on a timer that keeps failing
            return
        self._flush()

    def _flush(self, not_before: float | None = None) -> None:
        """Hand over the node's outputs and re-arm its timer."""
        trace = self.cfg.trace_gossip
        for item in self.node.take_sends():
            if trace and isinstance(item.msg, TableGossip):
                self.events.write("gossip_tx", **_gossip_fields(item.msg), dst=item.dst)
            self.transport.send(item)
        events = self.node.take_events()
        if events:
            self._on_events(events)
        when = self.node.next_timer()
        if when is not None and not_before is not None:
            when = max(when, not_before)
        if when == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, when
        if when is not None and not self._torn_down:
            self._timer_due = max(when, time.monotonic())
            self._timer = asyncio.get_running_loop().call_at(when, self._on_timer)

    def _on_events(self, events: list[MemberEvent | EntryEvent]) -> None:
        """Fan node events out: the log, the key ring, the kernel, then the names.

        The table events go to the data-plane thread as one job (a burst is not a
        thread hop per entry), queued before the VIP re-plans they cause, as when each
        event was its own job."""
        program: list[EntryEvent] = []
        for ev in events:
            if isinstance(ev, MemberEvent):
                self.keys.note_epoch(ev)  # a restarted peer's new epoch: fresh replay windows
            else:
                program.append(ev)
            kind, fields = event_line(ev)
            self.events.write(kind, **fields)
        if program and self.programmer is not None and not self._torn_down:
            self._submit(self._program, program)
        for ev in program:
            self.svcnet.on_event(ev)

    def _program(self, events: list[EntryEvent]) -> None:
        """Data-plane thread: apply table events in order; one failing does not stop the
        rest (each is logged as its own job's failure was)."""
        programmer = self._programmer()
        for ev in events:
            try:
                programmer.on_event(ev)
            except Exception as exc:
                self._error("dataplane", exc)

    def _report(self, what: str, detail: str) -> None:
        """Log a peer or transport error, at most once per second per kind."""
        limit = self._limits.setdefault(what, RateLimit(1.0))
        suppressed = limit.allow(time.monotonic())
        if suppressed is None:
            return
        kind = "wire_error" if what in ("wire", "frame", "auth") else "agent_error"
        self.events.write(kind, what=what, detail=detail, suppressed=suppressed)

    def _programmer(self) -> Programmer:
        assert self.programmer is not None, "the agent has not started"
        return self.programmer

    def _unexpected(self, op: str, exc: BaseException) -> None:
        self._error(f"control:{op}", exc)

    def _error(self, what: str, exc: BaseException) -> None:
        """Log a local failure that must not stop the agent."""
        self.events.write("agent_error", what=what, error=f"{type(exc).__name__}: {exc}")

    def _live_hosts(self) -> list[str]:
        return [self.cfg.name, *self.node.membership.alive()]

    # --- worker thread (data plane) --------------------------------------------------------

    async def _dp(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _rekey_callback(self) -> Callable[[], None]:
        """What an ESP send thread calls when an SA runs out of sequence numbers: an
        early rotation, run on this (the event loop's) thread."""
        loop = asyncio.get_running_loop()

        def start() -> None:
            if not self._torn_down:
                task = loop.create_task(self.keys.rotate_early())
                self._rekeys.add(task)  # held until done: the loop keeps weak references
                task.add_done_callback(self._rekeys.discard)

        return lambda: loop.call_soon_threadsafe(start)

    def _submit(self, fn: Any, *args: Any) -> None:
        """Queue a data-plane job without waiting; jobs run one at a time, in order."""
        if self._torn_down:
            return
        fut = self._executor.submit(fn, *args)
        fut.add_done_callback(self._job_done)

    def _job_done(self, fut: Future[Any]) -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if exc is not None:
            self._error("dataplane", exc)

    # --- periodic work ----------------------------------------------------------------------

    async def _traffic_loop(self) -> None:
        delta = TrafficDelta()
        while True:
            await asyncio.sleep(self.cfg.traffic_interval)
            self.events.write("traffic", **delta.take(self.counters))
            self._write_timer_lag()

    def _write_timer_lag(self) -> None:
        """One ``timer_lag`` line: how late each timer fired since the previous one."""
        late, self._timer_late = self._timer_late, []
        if late:
            # 0.1 ms resolution: far below the 0.5 s at which a run counts as overloaded
            self.events.write(
                "timer_lag", fires=len(late), late_ms=[round(x * 1e3, 1) for x in late]
            )

    async def _reconcile_loop(self) -> None:
        if not self.node.tables.config.reconcile:
            return  # switched off (the docker variant): kernel drift stays until re-gossip
        while True:
            await asyncio.sleep(self.cfg.reconcile_interval)
            try:
                await self.reconcile()
            except Exception as exc:
                self._error("reconcile", exc)

    async def reconcile(self) -> dict[str, Any]:
        """Repair every local network's kernel state against the tables, now."""
        # the snapshot is read here, on the loop thread; jobs queued before it run first
        tables = self.node.tables
        desired = {
            network: remote_entries(tables.entries(network, ENDPOINTS).values(), self.cfg.name)
            for network in tables.networks()
        }
        assert self.programmer is not None
        return await self._dp(self.programmer.reconcile, desired)

    async def _join_loop(self) -> None:
        """Seeds may start after us: keep asking them until someone else is known."""
        seeds = [s for s in self.cfg.seeds if s != self.cfg.addr]
        if not seeds:
            return
        while True:
            await asyncio.sleep(self.cfg.join_retry)
            membership = self.node.membership
            if not membership.has_left and not membership.alive():
                membership.join(seeds, time.monotonic())
                self._flush()

    async def refresh_keys(self) -> dict[str, Any]:
        """Fetch the network key ring from the manager; install it if it is newer."""
        return await self.keys.refresh()

    async def crypto(self) -> dict[str, Any]:
        """The encrypted data path: key tags, SAs, counters, cleartext VXLAN drops."""
        return await self.keys.crypto()

    async def _release_loop(self) -> None:
        """Release the addresses a previous boot of this host held (it is gone), then
        take the routing mesh's published ports from the manager."""
        while not self._released and self.manager is not None:
            try:
                await self._release_host()
            except Exception:
                await asyncio.sleep(0.5)
        for attempt in range(1, MESH_RESTORE_TRIES + 1 if self.manager is not None else 0):
            try:
                await self._restore_mesh()
                return
            except Exception as exc:
                if attempt == MESH_RESTORE_TRIES:  # the CLI's next port set still comes
                    self._error("mesh_restore", exc)
                await asyncio.sleep(0.5)

    async def _recover_mesh(self) -> None:
        """A killed boot's routing mesh: its host table goes, ``ip_forward`` goes back."""
        try:
            before = await self.svcnet.recover()
        except Exception as exc:  # never fatal: the restore below replaces the table
            self._error("mesh_recover", exc)
            return
        if before is not None:
            self.events.write("mesh_recovered", ip_forward=before)

    async def _restore_mesh(self) -> None:
        """This boot's routing mesh from the manager's service registry, so a restarted
        (or newly joined) host answers on the published ports without the CLI sending
        them again. A port set sent since the fetch wins (``if_version``)."""
        assert self.manager is not None
        version = self.svcnet.mesh_version
        ports = await self.manager.ingress_ports()
        if not ports:
            return
        out = await self.workloads.ingress(ports, if_version=version)
        if not out.get("skipped"):
            self.events.write("mesh_restored", ports=out["ports"])

    async def _release_host(self) -> None:
        """Release the previous boot's addresses once (before this boot allocates any)."""
        if self._released or self.manager is None:
            return
        released = await self.manager.release_host(self.cfg.name)
        self._released = True
        if released:
            self.events.write("previous_boot", released=released)

    async def _release_all(self) -> None:
        """Give back every local container's addresses (best effort, on a clean stop)."""
        if self.manager is not None:
            await self.containers.release_all(self.manager)

    # --- containers ---------------------------------------------------------------------------

    def _need_manager(self) -> ManagerClient:
        if self.manager is None:
            raise ControlError("NoManager", "this agent was started without --manager")
        return self.manager

    # --- operations (the control API's, see overlaysim.agent.control) ------------------

    def status(self) -> dict[str, Any]:
        """Name, epoch, members with states, counters, networks and local containers."""
        counters = self.counters.as_dict()
        counters["program_errors"] = self.programmer.errors if self.programmer else 0
        return status_view(
            self.node,
            epoch=self.cfg.epoch,
            counters=counters,
            containers=self.containers.networks_of(),
            services=self.svcnet.status(),
        )

    def members(self) -> dict[str, Any]:
        """Every known member (ourselves included): state, address, incarnation, epoch."""
        return members_view(self.node.membership)

    def tables(self) -> dict[str, Any]:
        """Live endpoint entries per attached network."""
        return tables_view(self.node.tables)

    async def kernel(self) -> dict[str, Any]:
        """FDB and neighbour entries the kernel holds per local network."""
        assert self.programmer is not None
        return await self._dp(self.programmer.kernel)

    async def run_container(self, req: ContainerRequest) -> dict[str, Any]:
        """Start a container with its names and command (see :meth:`Workloads.run`)."""
        return await self.workloads.run(req)

    async def connect(self, name: str, network: str, ip: str | None = None) -> dict[str, Any]:
        """Attach a running container to one more network."""
        return await self.workloads.connect(name, network, ip)

    async def disconnect(self, name: str, network: str, stay: bool = False) -> dict[str, Any]:
        """Detach a container from one network (it goes when its last network does);
        ``stay``: see :meth:`Workloads.disconnect`."""
        return await self.workloads.disconnect(name, network, stay)

    async def leave_network(self, network: str) -> dict[str, Any]:
        """Leave ``network`` unless a local container is on it (see
        :meth:`Containers.leave_network`)."""
        return await self.workloads.leave_network(network)

    async def remove(self, name: str) -> dict[str, Any]:
        """Remove a container, its entries first (see :meth:`Workloads.remove`)."""
        return await self.workloads.remove(name)

    async def ingress(self, ports: list[list[Any]]) -> dict[str, Any]:
        """Hold exactly ``ports`` in the routing mesh (see :meth:`ServiceNet.ingress`)."""
        return await self.workloads.ingress(ports)

    async def manager_call(self, op: str, args: dict[str, Any]) -> Any:
        """Forward one manager request; the manager's errors come back unchanged."""
        return await self._need_manager().call(op, **args)


def _gossip_fields(msg: TableGossip) -> dict[str, Any]:
    """What a ``gossip_tx``/``gossip_rx`` line says about one table-gossip datagram: its
    network and each entry as ``[table, key, owner, ltime, deleted]`` (enough to tell
    which commit it carries)."""
    return {
        "network": msg.network,
        "entries": [[e.table, e.key, e.owner, e.ltime, int(e.deleted)] for e in msg.entries],
    }


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format=f"overlayd[{config.name}] %(levelname)s %(message)s"
    )
    try:
        return asyncio.run(Agent(config).run())
    except OSError as exc:  # e.g. the port is taken: a clear message, not a traceback
        print(f"overlayd[{config.name}]: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
