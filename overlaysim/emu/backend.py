"""The emulator's side of the world's verbs: real agents in Mininet hosts.

:class:`EmuBackend` implements :class:`~overlaysim.world.backend.Backend` on a
:class:`~overlaysim.emu.testbed.Testbed`: hosts are ``overlayd`` processes, containers
are tasks in them (namespaces), impairments go to the underlay's
:class:`~overlaysim.emu.impair.Impairments`. :func:`crash_host` and :func:`restart_host`
are the one way a host is crashed and restarted, for runs and for the lab.

Time: ``t0 = time.monotonic()`` at scenario start. Agents log ``time.monotonic()``
too; every namespace shares the kernel's clock, so ``t - t0`` is scenario time for
everybody.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from overlaysim.agent.control import ControlError
from overlaysim.agent.manager import ManagerUnavailable
from overlaysim.agent.service_registry import INGRESS
from overlaysim.core.cluster_errors import ClusterError
from overlaysim.core.network import DEFAULT_ATTACHMENT, attachment_record
from overlaysim.emu.impair import UnsupportedImpairment
from overlaysim.emu.testbed import Testbed, TestbedError
from overlaysim.metrics.lag import AgentOp
from overlaysim.scenario.schema import Scenario
from overlaysim.scenario.steps import ImpairKind, Link
from overlaysim.world.container import Container
from overlaysim.world.world import StepSkipped

if TYPE_CHECKING:
    from overlaysim.world.world import World

T = TypeVar("T")

#: How long ``boot: formed`` waits for every agent to see every other alive.
FORM_TIMEOUT_S = 60.0

#: Errors of one step that skip the step (recorded with the reason) instead of
#: failing the run: the cluster refused, an agent or the manager was unreachable.
STEP_ERRORS = (ClusterError, ControlError, ManagerUnavailable, OSError, TestbedError)


def why(exc: BaseException) -> str:
    """``Type: message``, the reason recorded for a skipped step."""
    return f"{type(exc).__name__}: {exc}"


def crash_host(testbed: Testbed, host: str, *, clean_later: bool = False) -> None:
    """Kill ``host``'s agent (SIGKILL, no goodbye) and silence its links.

    ``clean_later`` leaves the removal of the dead boot's kernel objects to a worker
    thread (:meth:`Testbed.kill_agent`): a scenario's timeline does not wait for it.
    """
    testbed.kill_agent(host, clean_later=clean_later)
    testbed.underlay.impairments.crash_links(host)


def restart_host(testbed: Testbed, host: str, seeds: Iterable[str], *, links: bool = True) -> float:
    """Give ``host`` its links back and start a fresh agent joining through ``seeds``;
    return the monotonic time it started (the ``start`` line of its log), once it answers.

    ``links=False``: the caller gave the links back already (a scenario's restart does
    that at the step's time and the rest on a worker thread).
    """
    if links:
        testbed.underlay.impairments.restore_links(host)
    if host in testbed.agents:
        testbed.wait_exit(host, timeout=5.0)  # a leaving agent may still be finishing
    testbed.start_agent(host, list(seeds))
    return testbed.wait_ready([host])[host]


class EmuBackend:
    """Backend verbs on a live testbed (bind the world with :meth:`bind` before use)."""

    records_commits = False  # the agents log their commits
    runs_tasks = True  # task commands and the routing mesh run for real
    #: A container takes an agent a few hundred ms, a new agent about a second to
    #: answer (more while the dead boot's kernel objects are removed): the world plays
    #: them on per-host lanes so other hosts' steps are not late.
    steps_in_background = True

    def __init__(self, scenario: Scenario, testbed: Testbed) -> None:
        self.scenario = scenario
        self.testbed = testbed
        self.underlay = testbed.underlay
        self.t0: float | None = None
        #: The networks as the manager made them (for the manifest).
        self.networks: list[dict[str, Any]] = []
        self.world: World | None = None
        #: Published services' ingress VIPs: their tasks also join the ingress network.
        self.ingress_vips: dict[str, str] = {}
        #: Every container call to an agent during the timeline and how long it took
        #: (what names a slow operation as the cause of step lag; metrics/lag.py).
        self.ops: list[AgentOp] = []
        self._ops_lock = threading.Lock()  # lanes call from their own threads

    def _call(self, host: str, op: str, who: str, on: str, /, **args: Any) -> Any:
        """``testbed.call(host, op, **args)``, its duration kept in :attr:`ops` as a
        call about container ``who`` ("" for a host's own) on ``on``, the network(s)
        (once the timeline runs; a failed call too: the time was spent). Positional
        only: ``args`` carry their own ``container`` and ``network``."""
        if self.t0 is None:
            return self.testbed.call(host, op, **args)
        start = time.monotonic()
        try:
            return self.testbed.call(host, op, **args)
        finally:
            end = time.monotonic()
            with self._ops_lock:
                self.ops.append(AgentOp(start - self.t0, host, op, who, on, end - start))

    def agent_ops(self) -> list[AgentOp]:
        """The timed agent calls so far, in the order they began."""
        with self._ops_lock:
            return sorted(self.ops, key=lambda o: (o.at, o.host, o.container))

    def bind(self, world: World) -> None:
        """The world whose containers a restarted manager must re-register."""
        self.world = world

    def now(self) -> float:
        """Seconds since scenario start (0 before it)."""
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def refused(self, exc: BaseException) -> str | None:
        if isinstance(exc, UnsupportedImpairment):
            return str(exc)
        if isinstance(exc, STEP_ERRORS):
            return why(exc)
        return None

    # -- hosts ---------------------------------------------------------------------------

    def boot(
        self,
        order: Sequence[str],
        *,
        formed: bool,
        seeds: Callable[[str, Collection[str]], list[str]],
    ) -> dict[str, float]:
        tb = self.testbed
        if not formed:
            self.t0 = time.monotonic()  # the joins are part of the run
        started: list[str] = []
        for h in order:
            # seeds among the agents already started (as in the simulator, later hosts
            # join through earlier ones): the first, a manager, has none rather than
            # pushing to hosts whose agents are not listening yet
            tb.start_agent(h, seeds(h, started))
            started.append(h)
        starts = tb.wait_ready(order)
        if formed:
            tb.wait_formed(order, timeout=FORM_TIMEOUT_S + 0.5 * len(order))
            self.create_networks()
            self.t0 = time.monotonic()
            return dict.fromkeys(order, 0.0)
        self.create_networks()
        return {h: max(0.0, starts[h] - self.t0) for h in order}

    def create_networks(self) -> None:
        """Create the scenario's networks through the manager; keep what it made."""
        for net in self.scenario.networks:
            spec = {
                "name": net.name,
                "subnet": net.subnet,
                "gateway": net.gateway,
                "ip_range": net.ip_range,
                "aux_addresses": dict(net.aux_addresses or {}),
                "attachable": net.attachable,
                "encrypted": net.encrypted,
                "mtu": net.mtu,
                "attachment": net.attachment,
            }
            made = self.testbed.manager_call("network_create", spec=spec)
            if any(n["name"] == made["name"] for n in self.networks):
                continue  # re-created after a manager restart: keep the first facts
            self.networks.append(
                {
                    "name": made["name"],
                    "vni": made["vni"],
                    "subnet": made["subnet"],
                    "gateway": made["gateway"],
                    "mtu": made.get("mtu"),
                    "encrypted": made.get("encrypted", False),
                }
                | attachment_record(made.get("attachment", DEFAULT_ATTACHMENT))
            )

    def prepare_start(self, host: str) -> None:
        # at the step's time, on the timeline's thread: impairments change only there
        self.underlay.impairments.restore_links(host)

    def start(self, host: str, seeds: list[str]) -> float:
        """Start ``host``'s agent (its links are back: :meth:`prepare_start`); runs on
        the world's worker thread."""
        assert self.t0 is not None
        started = restart_host(self.testbed, host, seeds, links=False)
        if host == self.testbed.manager_host:
            self._restore_manager()
        return max(0.0, started - self.t0)

    def _restore_manager(self) -> None:
        """A restarted manager starts empty: re-create the networks, reserve the services'
        VIPs again at their addresses and re-register the addresses that containers on
        running hosts still hold, so none is handed out twice. (Managers are not
        replicated yet; see docs/agent.md, Limits.)"""
        self.create_networks()
        world = self.world
        if world is None:
            return
        self._restore_vips(world)
        if self._restore_published(world):
            self._restore_ingress_addresses(world)
            # the manager host's new agent asked its empty manager for the ports at start
            self._sync_mesh()
        for c in world.containers.values():
            if not c.live or c.host not in world.up:
                continue
            for net, ip in c.networks.items():
                if ip:
                    self.testbed.manager_call(
                        "allocate", network=net, endpoint=c.name, ip=ip, standalone=False,
                        host=c.host,
                    )  # fmt: skip

    def _restore_vips(self, world: World) -> None:
        """Every service's VIP again at its address (``vip_reserve`` with ``ip``), before
        any container's: a VIP is never handed out twice. A clash (the address is held
        by someone else) is recorded as one line and the restore goes on."""
        for svc in world.services.by_name.values():
            if svc.vip is None:
                continue
            try:
                self.testbed.manager_call(
                    "vip_reserve", network=svc.network, service=svc.name, ip=svc.vip
                )
            except ClusterError as exc:
                world.skip(
                    "restore_vip",
                    host=self.testbed.manager_host,
                    service=svc.name,
                    reason=why(exc),
                )

    def _restore_published(self, world: World) -> bool:
        """Published ports again, each service at its ingress VIP (a clash: one line);
        whether any service publishes ports."""
        published = False
        for svc in world.services.by_name.values():
            if not svc.publish or svc.ingress_vip is None:
                continue
            published = True
            try:
                self.testbed.manager_call(
                    "mesh_publish",
                    service=svc.name,
                    publish=[list(p) for p in svc.publish],
                    ip=svc.ingress_vip,
                )
            except ClusterError as exc:
                world.skip(
                    "restore_publish",
                    host=self.testbed.manager_host,
                    service=svc.name,
                    reason=why(exc),
                )
        return published

    def _restore_ingress_addresses(self, world: World) -> None:
        """The ingress network's addresses (tasks and every host's ingress sandbox; the
        agents made them, the world does not know them) again, read from the running
        agents' tables, so the restarted manager hands none of them out twice."""
        tb = self.testbed
        held: dict[str, tuple[str, str]] = {}
        for host in tb.running():
            if host == tb.manager_host:  # its new boot holds nothing of the old one
                continue
            for key, entry in (tb.call(host, "tables").get(INGRESS) or {}).items():
                ip = (entry.get("value") or {}).get("ip")
                if ip and entry.get("owner") != tb.manager_host:
                    held[key] = (ip, str(entry.get("owner")))
        for key, (ip, owner) in sorted(held.items()):
            try:
                tb.manager_call(
                    "allocate", network=INGRESS, endpoint=key, ip=ip, standalone=False, host=owner
                )
            except ClusterError as exc:
                world.skip("restore_ingress", host=tb.manager_host, container=key, reason=why(exc))

    def crash(self, host: str) -> None:
        # the timeline goes on while the dead boot's kernel objects are removed (the
        # host's links are silenced at once; a restart waits for the clean-up)
        crash_host(self.testbed, host, clean_later=True)

    def leave(self, host: str) -> None:
        self.testbed.call(host, "leave")

    # -- containers ----------------------------------------------------------------------

    def reserve(self, c: Container, network: str) -> str:
        return ""  # the manager hands out the address when the host runs it

    def attach(
        self, c: Container, networks: Sequence[str], first: Collection[str]
    ) -> dict[str, str]:
        if c.live:  # a running container joins one more network
            out = {}
            for net in networks:
                out[net] = self._call(
                    c.host, "connect", c.name, net, container=c.name, network=net
                )["ip"]
            return out
        names: dict[str, Any] = {}  # only when set: runs without services ask as before
        if c.aliases:
            names["aliases"] = list(c.aliases)
        if c.command:
            names["command"] = list(c.command)
        wanted = list(networks)
        if c.task is not None:
            t = c.task
            names["task"] = {
                "service": t.service,
                "slot": t.slot,
                "mode": t.mode.value,
                "vip": t.vip,
                "gen": t.gen,
            }
            ingress_vip = self.ingress_vips.get(t.service)
            if ingress_vip is not None:  # the routing mesh reaches it on the ingress network
                names["task"]["vips"] = {INGRESS: ingress_vip}
                wanted.append(INGRESS)
        answer = self._call(
            c.host, "task", c.name, ",".join(networks), container=c.name, networks=wanted, **names
        )
        c.sandbox = answer.get("netns", "")
        # the world knows the networks it asked for; the ingress one is the mesh's business
        return {
            att["network"]: att["ip"]
            for att in answer.get("networks", [])
            if att["network"] in networks
        }

    def detach(
        self, c: Container, network: str, *, live: bool, last: bool, stay: bool = False
    ) -> None:
        """The agent unplugs ``c``; when it was the host's last container on the network
        the agent leaves the network too, unless ``stay`` (the world plays that leave
        later: :meth:`leave_network`)."""
        if not live:
            return
        if c.task is not None and c.task.service in self.ingress_vips:
            # a published task is on the ingress network too: that goes first
            self._call(c.host, "disconnect", c.name, INGRESS, container=c.name, network=INGRESS)
        keep = {"stay": True} if last and stay else {}  # only when set: others ask as before
        self._call(c.host, "disconnect", c.name, network, container=c.name, network=network, **keep)

    def leave_network(self, host: str, network: str) -> None:
        """The agent leaves ``network`` (control ``leave_network``: it stays when a
        container of its own is on it)."""
        self._call(host, "leave_network", "", network, network=network)

    def reserve_vip(self, service: str, network: str) -> str:
        """The manager allocates the VIP from the network's IPAM (control ``vip_reserve``)."""
        return self.testbed.manager_call("vip_reserve", network=network, service=service)["ip"]

    def release_vip(self, service: str, network: str) -> None:
        self.testbed.manager_call("vip_release", network=network, service=service)

    def publish(self, service: str, ports: Sequence[tuple[int, int]]) -> str | None:
        """The manager holds the ports and the service's ingress VIP (``mesh_publish``);
        every running host's agent then holds the whole port set (a host that starts
        later takes it from the manager itself)."""
        vip = self.testbed.manager_call(
            "mesh_publish", service=service, publish=[list(p) for p in ports]
        )["ip"]
        self.ingress_vips[service] = vip
        self._sync_mesh()
        return vip

    def unpublish(self, service: str) -> None:
        self.ingress_vips.pop(service, None)
        self.testbed.manager_call("mesh_unpublish", service=service)
        self._sync_mesh()

    def _sync_mesh(self) -> None:
        ports = self.testbed.manager_call("ingress_ports")
        hosts = self.testbed.running()
        if hosts:
            with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
                list(pool.map(lambda h: self.testbed.call(h, "ingress", ports=ports), hosts))

    def each_host(
        self, fn: Callable[[T], None], items: Iterable[T], host: Callable[[T], str]
    ) -> None:
        by_host: dict[str, list[T]] = defaultdict(list)
        for item in items:
            by_host[host(item)].append(item)

        def run(h: str) -> None:
            for item in by_host[h]:
                fn(item)

        if by_host:
            with ThreadPoolExecutor(max_workers=min(16, len(by_host))) as pool:
                list(pool.map(run, list(by_host)))

    # -- the underlay ----------------------------------------------------------------------

    def impair(self, kind: ImpairKind, value: float, link: Link | None, jitter_ms: float) -> None:
        imp = self.underlay.impairments
        if kind == "loss":
            imp.loss(value, link)
        elif kind == "delay":
            imp.delay(value, jitter_ms, link)
        else:
            imp.rate(value, link)

    def clear(self, kind: ImpairKind | None, link: Link | None) -> None:
        self.underlay.impairments.clear(link, kind=kind)

    def partition(self, groups: list[list[str]]) -> None:
        self.underlay.impairments.partition(groups)

    def heal(self) -> None:
        self.underlay.impairments.heal()

    def rotate_keys(self, hosts: list[str]) -> dict[str, Any] | None:
        """Rotate the network keys at the manager, then have every running agent fetch
        the new ring at once, so each rotation finishes everywhere before the next."""
        if not any(n["encrypted"] for n in self.networks):
            raise StepSkipped("no encrypted network")
        tb = self.testbed
        t = self.now()
        running = set(tb.running())
        ring, answers = tb.rotate_keys([h for h in hosts if h in running])
        late = [h for h, a in answers.items() if a["generation"] != ring["generation"]]
        return {
            "generation": ring["generation"],
            "primary": ring["primary"],
            "hosts": len(answers),
            "took_s": round(self.now() - t, 3),
            "late": late,
        }
