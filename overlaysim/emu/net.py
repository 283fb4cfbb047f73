"""The emulated underlay: a :class:`Topology` built as Mininet hosts, bridges and veths.

Lifecycle is explicit: ``Underlay(topology)`` only stores settings; :meth:`Underlay.build`
plans every name, records it and creates hosts and links; :meth:`Underlay.start` brings up
the bridges and applies the topology's link properties; :meth:`Underlay.stop` removes
exactly what was recorded, and is safe to call twice or after a failed build.
:func:`underlay_session` wraps the three so Ctrl-C, SIGTERM or an exception always ends
in ``stop()``.

Names. Everything visible in the root namespace starts with ``osim`` plus a two-character
run tag (``osima3``): bridges ``osima3s1`` (switch number 1 in the topology), their ports
``osima3s1-2`` (port 2), so nothing can collide with a user's own Mininet (``h1-eth0``) or
with another run. Hosts live in their own namespaces, where their underlay interfaces are
plainly ``eth0``, ``eth1``...; the Mininet node of host ``h1`` is ``osima3-h1``.

Addressing. Hosts get consecutive addresses from ``subnet`` (default ``172.30.0.0/16``,
room for 65,534 hosts) on their first interface; all switches form one L2 segment. When
switch links form a loop, the bridges run STP with the shortest timers the kernel allows.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import random
import re
import resource
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlaysim.agent import names
from overlaysim.emu import bridgenf, procs, rootns
from overlaysim.emu import record as runrec
from overlaysim.emu.forkserver import Forked, ForkServer
from overlaysim.emu.impair import Impairments
from overlaysim.emu.setup import require_emulation
from overlaysim.errors import UserError
from overlaysim.scenario.topology import LinkSpec, Topology

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

DEFAULT_SUBNET = "172.30.0.0/16"
IFNAMSIZ = 15  # usable characters in a Linux interface name
_TAG = re.compile(r"^[a-z][a-z0-9]$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class UnderlayError(UserError):
    """The topology cannot be emulated as given, or the underlay is misused."""


# --- the plan: every name and address, computed before anything is created ------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Port:
    """One end of a link: the interface, and the host whose namespace holds it.

    ``host`` is None for switch ports, which live in the root namespace.
    """

    node: str
    ifname: str
    host: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedLink:
    """A topology link with the interfaces that carry it."""

    index: int
    a: Port
    b: Port
    spec: LinkSpec

    @property
    def ends(self) -> tuple[Port, Port]:
        return (self.a, self.b)

    def peer(self, port: Port) -> Port:
        """The other end of the veth pair from ``port``."""
        return self.b if port == self.a else self.a


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedHost:
    name: str
    node: str  # Mininet node name
    ip: str
    ports: tuple[str, ...]  # interface names in the host's namespace, in link order


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Names and addresses for one run of one topology (pure data)."""

    tag: str
    prefix: str
    subnet: ipaddress.IPv4Network
    hosts: tuple[PlannedHost, ...]
    bridges: tuple[tuple[str, str], ...]  # (switch, bridge name)
    links: tuple[PlannedLink, ...]
    stp: bool

    def root_ports(self) -> list[str]:
        """Interfaces this plan puts in the root namespace (switch ports)."""
        return [p.ifname for link in self.links for p in link.ends if p.host is None]


def plan_underlay(topology: Topology, tag: str, subnet: str = DEFAULT_SUBNET) -> Plan:
    """Name every host, bridge and interface and give every host an address.

    Raises :class:`UnderlayError` for topologies that cannot be emulated: duplicate or
    odd names, links to unknown nodes, more hosts than the subnet holds.
    """
    if not _TAG.match(tag):
        raise UnderlayError(f"run tag {tag!r} must be a lowercase letter and a letter or digit")
    prefix = names.underlay_prefix(tag)
    net = ipaddress.ip_network(subnet, strict=True)
    if not isinstance(net, ipaddress.IPv4Network):
        raise UnderlayError(f"underlay subnet {subnet!r} must be IPv4")
    nodes = list(topology.hosts) + list(topology.switches)
    dup = sorted(n for n, k in Counter(nodes).items() if k > 1)
    if dup:
        raise UnderlayError(f"topology {topology.name!r}: duplicate node names {dup}")
    for n in nodes:
        if not _NODE_NAME.match(n):
            raise UnderlayError(
                f"topology {topology.name!r}: node name {n!r} must match {_NODE_NAME.pattern}"
            )
    if len(topology.hosts) > net.num_addresses - 2:
        raise UnderlayError(
            f"{len(topology.hosts)} hosts do not fit in {net} ({net.num_addresses - 2} addresses)"
        )
    hosts = set(topology.hosts)
    bridge = {s: names.switch_bridge(prefix, j) for j, s in enumerate(topology.switches, 1)}
    if any(len(b) > IFNAMSIZ for b in bridge.values()):
        raise UnderlayError(f"{len(bridge)} switches: bridge names would exceed {IFNAMSIZ} chars")
    next_port: dict[str, int] = {n: 0 for n in nodes}
    host_ports: dict[str, list[str]] = {h: [] for h in topology.hosts}

    def port(node: str, index: int, side: str) -> Port:
        if node not in next_port:
            raise UnderlayError(f"topology {topology.name!r}: link to unknown node {node!r}")
        if node in hosts:
            name = f"eth{next_port[node]}"
            next_port[node] += 1
            host_ports[node].append(name)
            return Port(node=node, ifname=name, host=node)
        next_port[node] += 1
        name = names.switch_port(bridge[node], next_port[node])
        if len(name) > IFNAMSIZ:  # huge switches: fall back to a per-link name
            name = names.link_port(prefix, index, side)
        return Port(node=node, ifname=name, host=None)

    links = []
    for i, link in enumerate(topology.links):
        if link.a == link.b:
            raise UnderlayError(f"topology {topology.name!r}: link from {link.a!r} to itself")
        links.append(
            PlannedLink(index=i, a=port(link.a, i, "a"), b=port(link.b, i, "b"), spec=link.spec)
        )
    first = int(net.network_address) + 1
    planned_hosts = tuple(
        PlannedHost(
            name=h,
            node=names.host_node(prefix, h),
            ip=str(ipaddress.IPv4Address(first + k)),
            ports=tuple(host_ports[h]),
        )
        for k, h in enumerate(topology.hosts)
    )
    return Plan(
        tag=tag,
        prefix=prefix,
        subnet=net,
        hosts=planned_hosts,
        bridges=tuple(bridge.items()),
        links=tuple(links),
        stp=_switch_loop(topology),
    )


def _switch_loop(topology: Topology) -> bool:
    """Whether switch-to-switch links form a cycle (an L2 loop needs STP)."""
    parent = {s: s for s in topology.switches}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for link in topology.links:
        if link.a in parent and link.b in parent:
            ra, rb = find(link.a), find(link.b)
            if ra == rb:
                return True
            parent[ra] = rb
    return False


# --- Mininet pieces: a pyroute2 veth link and a pyroute2 bridge ----------------------


def _mininet_classes() -> tuple[type, type, type]:
    """Mininet's Host, Switch and Link; imported late so planning works without it."""
    from mininet.link import Link
    from mininet.node import Host, Switch

    class VethLink(Link):
        """A Mininet link whose veth pair is made with one netlink call from the root
        namespace, each end created directly in its node's namespace (so no temporary
        name ever appears in the root namespace), with the underlay MTU."""

        def __init__(self, node1: Any, node2: Any, *, ipr: IPRoute, mtu: int, **kw: Any):
            self._ipr = ipr
            self._mtu = mtu
            super().__init__(node1, node2, **kw)

        def makeIntfPair(  # noqa: N802 - Mininet's name
            self,
            intfname1: str,
            intfname2: str,
            addr1: str | None = None,
            addr2: str | None = None,
            node1: Any = None,
            node2: Any = None,
            deleteIntfs: bool = False,  # noqa: N803
        ) -> None:
            peer: dict[str, Any] = {"ifname": intfname2, "mtu": self._mtu}
            if node2.inNamespace:
                peer["net_ns_pid"] = node2.pid
            spec: dict[str, Any] = {"mtu": self._mtu, "state": "up", "peer": peer}
            if node1.inNamespace:
                spec["net_ns_pid"] = node1.pid
            self._ipr.link("add", ifname=intfname1, kind="veth", **spec)
            if not node2.inNamespace:  # a root-namespace peer is brought up here
                self._ipr.link("set", index=self._ipr.link_lookup(ifname=intfname2)[0], state="up")

    return Host, Switch, VethLink


def _create_bridge(ipr: IPRoute, name: str, ports: Sequence[str], stp: bool) -> None:
    """A Linux bridge with ``ports`` enslaved; STP with 2 s forward delay if asked."""
    opts: dict[str, Any] = {}
    if stp:
        # Timers are in 1/100 s; 2 s forward delay and 1 s hello are the kernel minimums.
        opts = {"br_stp_state": 1, "br_forward_delay": 200, "br_hello_time": 100}
    ipr.link("add", ifname=name, kind="bridge", **opts)
    index = ipr.link_lookup(ifname=name)[0]
    for p in ports:
        ipr.link("set", index=ipr.link_lookup(ifname=p)[0], master=index)
    ipr.link("set", index=index, state="up")


def _wait_stp(ports: Sequence[str], timeout_s: float = 20.0) -> None:
    """Block until every bridge port is forwarding (3) or blocking (4)."""
    deadline = time.monotonic() + timeout_s
    pending = list(ports)
    while pending:
        pending = [
            p
            for p in pending
            if Path(f"/sys/class/net/{p}/brport/state").read_text().strip() not in ("3", "4")
        ]
        if pending and time.monotonic() > deadline:
            raise UnderlayError(f"STP did not converge within {timeout_s} s on {pending[:5]}")
        if pending:
            time.sleep(0.1)


# --- the underlay ----------------------------------------------------------------------


class Underlay:
    """A running emulated underlay for one topology; see the module docstring.

    ``impairments`` (an :class:`~overlaysim.emu.impair.Impairments`) changes loss, rate,
    partitions and crashes while it runs.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        subnet: str = DEFAULT_SUBNET,
        run_id: str | None = None,
        tag: str | None = None,
        mtu: int = 1500,
        shape: bool = True,
        state_dir: Path = runrec.STATE_DIR,
        seed: int = 0,
    ) -> None:
        """Store settings only. ``shape=False`` skips the topology's bandwidth limits;
        ``seed`` seeds the delay line's jitter (the scenario's seed)."""
        self.topology = topology
        self.subnet = subnet
        self.mtu = mtu
        self.shape = shape
        self.state_dir = state_dir
        self._want_run_id = run_id
        self._want_tag = tag
        self.run_id: str | None = None
        self.plan: Plan | None = None
        self.record: runrec.RunRecord | None = None
        self.impairments = Impairments(self)
        self.impairments.seed = seed
        self.timings: dict[str, float] = {}
        self.state = "new"
        self._hosts: dict[str, Any] = {}  # scenario host -> Mininet Host
        self._switches: dict[str, Any] = {}  # scenario switch -> Mininet Switch
        self._shell_items: dict[str, runrec.Item] = {}  # Mininet node name -> its record
        self._host_plan: dict[str, PlannedHost] = {}
        self._root_ipr: IPRoute | None = None
        self._procs: list[tuple[Any, runrec.Item]] = []  # Popen or Forked, and its record
        self._forkserver: ForkServer | None = None
        self._bridge_nf = False
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------

    def build(self) -> None:
        """Create hosts, switch nodes and links (bridges come up in :meth:`start`)."""
        if self.state != "new":
            raise UnderlayError(f"build() on an underlay that is {self.state}")
        require_emulation()
        self.state = "building"
        atexit.register(self.stop)
        t0 = time.perf_counter()
        try:
            self._build()
        except BaseException:
            self.stop()
            raise
        self.timings["build_s"] = time.perf_counter() - t0
        self.state = "built"

    def start(self) -> None:
        """Bring up the bridges and apply every link's bandwidth, loss and latency."""
        if self.state != "built":
            raise UnderlayError(f"start() on an underlay that is {self.state}")
        assert self.plan is not None and self.record is not None
        t0 = time.perf_counter()
        try:
            self._bridge_nf = bridgenf.hold_bridge_nf(self.record.path)
            ipr = self.netlink()
            for switch, bridge in self.plan.bridges:
                ports = [
                    p.ifname for link in self.plan.links for p in link.ends if p.node == switch
                ]
                _create_bridge(ipr, bridge, ports, self.plan.stp)
            if self.plan.stp:
                _wait_stp(self.plan.root_ports())
            self.timings["bridges_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            self.impairments.apply_baseline(shape=self.shape)
            self.timings["baseline_s"] = time.perf_counter() - t1
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.perf_counter() - t0
        n = max(1, len(self.plan.hosts))
        self.timings["per_host_ms"] = 1000 * (self.timings["build_s"] + self.timings["start_s"]) / n
        self.state = "running"

    def stop(self) -> None:
        """Remove everything this run created. Idempotent; safe after a partial build.

        Ctrl-C is ignored while tearing down, so a second one cannot leave half a network.
        Failures are logged and the run record kept, so ``overlaysim clean`` can finish.
        """
        with self._lock:
            if self.state in ("new", "stopped"):
                return
            with signals_deferred():
                errors = self._teardown()
            self.state = "stopped"
            atexit.unregister(self.stop)
        if errors:
            log.warning(
                "underlay %s: %d teardown step(s) failed (%s); run `overlaysim clean`",
                self.run_id,
                len(errors),
                "; ".join(errors[:3]),
            )
        elif self.record is not None:
            self.record.mark_stopped()
            self.record.discard()

    # -- queries --------------------------------------------------------------------

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.topology.hosts

    @property
    def links(self) -> tuple[PlannedLink, ...]:
        assert self.plan is not None, "build() first"
        return self.plan.links

    def host(self, name: str) -> Any:
        """The Mininet host object for scenario host ``name``."""
        try:
            return self._hosts[name]
        except KeyError:
            raise UnderlayError(f"no host {name!r} in this underlay") from None

    def underlay_ip(self, name: str) -> str:
        """Underlay IPv4 address of host ``name`` (on its first interface)."""
        return self._planned(name).ip

    def interfaces(self, name: str) -> tuple[str, ...]:
        """Underlay interface names inside host ``name``'s namespace (``eth0`` first)."""
        return self._planned(name).ports

    def pid(self, name: str) -> int:
        """PID of host ``name``'s shell; ``/proc/PID/ns/net`` is its namespace."""
        return int(self.host(name).pid)

    def bridge(self, switch: str) -> str:
        """Root-namespace bridge name of scenario switch ``switch``."""
        assert self.plan is not None, "build() first"
        return dict(self.plan.bridges)[switch]

    def links_between(self, a: str, b: str) -> list[PlannedLink]:
        """Links joining nodes ``a`` and ``b`` (either order); error if there are none."""
        found = [link for link in self.links if {link.a.node, link.b.node} == {a, b}]
        if not found:
            raise UnderlayError(f"no link between {a!r} and {b!r} in {self.topology.name!r}")
        return found

    @property
    def mechanisms(self) -> dict[str, str]:
        """Which kernel mechanism carries each link property and impairment."""
        return self.impairments.mechanisms

    def describe(self) -> dict[str, Any]:
        """Plain data for a run manifest: names, addresses, mechanisms, timings."""
        assert self.plan is not None, "build() first"
        return {
            "run_id": self.run_id,
            "tag": self.plan.tag,
            "prefix": self.plan.prefix,
            "subnet": str(self.plan.subnet),
            "mtu": self.mtu,
            "stp": self.plan.stp,
            "hosts": {h.name: {"ip": h.ip, "interfaces": list(h.ports)} for h in self.plan.hosts},
            "bridges": dict(self.plan.bridges),
            "mechanisms": self.mechanisms,
            "timings": dict(self.timings),
        }

    # -- running things inside hosts --------------------------------------------------

    def cmd(
        self,
        name: str,
        argv: Sequence[str],
        *,
        input: str | None = None,  # noqa: A002 - subprocess's name
        timeout: float | None = 60.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside host ``name`` (its network and mount namespaces) and wait."""
        return subprocess.run(
            ["mnexec", "-a", str(self.pid(name)), *_argv(argv)],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside host ``name``; recorded, and stopped by :meth:`stop`.

        The process gets its own session (Ctrl-C in the terminal does not reach it);
        ``kwargs`` go to :class:`subprocess.Popen`.
        """
        if self.state not in ("built", "running"):
            raise UnderlayError(f"popen() on an underlay that is {self.state}")
        args = _argv(argv)
        proc = subprocess.Popen(["mnexec", "-da", str(self.pid(name)), *args], **kwargs)
        item = runrec.Item(
            kind=runrec.PROCESS,
            pid=proc.pid,
            start=procs.proc_start(proc.pid),
            host=name,
            argv=tuple(args),
        )
        assert self.record is not None
        self.record.add(item)
        self._procs.append((proc, item))
        return proc

    def spawn_agent(self, name: str, argv: Sequence[str], stderr: Path) -> Forked:
        """Start an agent inside host ``name`` by forking the run's warm fork server
        (see :mod:`overlaysim.emu.forkserver`); recorded and stopped like :meth:`popen`.

        ``argv`` is the ``python -m overlaysim.agent.daemon ...`` command line; the
        agent's stderr is appended to ``stderr``.
        """
        if self.state not in ("built", "running"):
            raise UnderlayError(f"spawn_agent() on an underlay that is {self.state}")
        assert self.record is not None
        with self._lock:
            if self._forkserver is None:
                self._forkserver = ForkServer(env={**os.environ, "PYTHONUNBUFFERED": "1"})
                fs = self._forkserver.pid
                self._forkserver_item = runrec.Item(
                    kind=runrec.PROCESS, pid=fs, start=procs.proc_start(fs), argv=("forkserver",)
                )
                self.record.add(self._forkserver_item)
        args = _argv(argv)
        proc = self._forkserver.spawn(self.pid(name), args, stderr)
        item = runrec.Item(
            kind=runrec.PROCESS,
            pid=proc.pid,
            start=procs.proc_start(proc.pid),
            host=name,
            argv=tuple(args),
        )
        self.record.add(item)
        self._procs.append((proc, item))
        return proc

    def netlink(self) -> IPRoute:
        """The underlay's cached rtnetlink handle in the root namespace.

        Host namespaces get no cached handle: pyroute2 forks a helper to open each
        namespace socket (tens of ms per host), so bulk changes across hosts use
        :meth:`run_in` with ``ip``/``tc``/``nft``, in parallel.
        """
        from pyroute2 import IPRoute

        if self._root_ipr is None:
            self._root_ipr = IPRoute()
        return self._root_ipr

    def run_in(
        self,
        name: str | None,
        argv: Sequence[str],
        *,
        input: str | None = None,  # noqa: A002
    ) -> subprocess.CompletedProcess[str]:
        """Like :meth:`cmd`, but ``None`` runs in the root namespace."""
        if name is not None:
            return self.cmd(name, argv, input=input)
        return subprocess.run(
            _argv(argv), input=input, capture_output=True, text=True, timeout=60, check=False
        )

    # -- internals ------------------------------------------------------------------

    def _planned(self, name: str) -> PlannedHost:
        try:
            return self._host_plan[name]
        except KeyError:
            raise UnderlayError(f"no host {name!r} in this underlay") from None

    def _build(self) -> None:
        host_cls, switch_cls, link_cls = _mininet_classes()
        with runrec.state_lock(self.state_dir):
            tag = self._want_tag or _free_tag(self.state_dir)
            self.plan = plan_underlay(self.topology, tag, self.subnet)
            self.run_id = self._want_run_id or f"emu-{time.strftime('%Y%m%d-%H%M%S')}-{tag}"
            self.record = runrec.RunRecord.create(self.state_dir, self.run_id, tag)
        plan, record = self.plan, self.record
        self._host_plan = {h.name: h for h in plan.hosts}
        _clashes(plan)
        # Plan first: every root-namespace name is on record before it exists.
        for _switch, bridge in plan.bridges:
            record.add(runrec.Item(kind=runrec.BRIDGE, name=bridge))
        for ifname in plan.root_ports():
            record.add(runrec.Item(kind=runrec.LINK, name=ifname))
        _raise_fd_limit(4 * len(plan.hosts) + 256)  # a pty pair per node, plus pipes

        t = time.perf_counter()
        prefixlen = plan.subnet.prefixlen
        build_lock = threading.Lock()

        def make_host(h: PlannedHost) -> None:
            node = host_cls(h.node, ip=f"{h.ip}/{prefixlen}", inNamespace=True)
            with build_lock:  # the record and the map are shared between workers
                self._hosts[h.name] = node
                self._shell_items[node.name] = item = _shell_item(runrec.HOST, h.name, node)
                record.add(item)

        # Each host shell waits on its own bash to start: overlap those waits.
        _parallel(make_host, plan.hosts)
        self._hosts = {h.name: self._hosts[h.name] for h in plan.hosts}  # topology order
        for j, (switch, bridge) in enumerate(plan.bridges, 1):
            node = switch_cls(bridge, dpid=f"{j:x}", inNamespace=False)
            self._switches[switch] = node
            self._shell_items[node.name] = item = _shell_item(
                runrec.PROCESS, f"switch {switch}", node
            )
            record.add(item)
        self.timings["nodes_s"] = time.perf_counter() - t

        t = time.perf_counter()
        ipr = self.netlink()
        primary = {h.name: h.ports[0] for h in plan.hosts if h.ports}
        for link in plan.links:
            # Root-namespace end first, so it is the device created up by netlink.
            first, second = sorted(link.ends, key=lambda p: p.host is not None)
            node1, node2 = self._node(first.node), self._node(second.node)
            link_cls(
                node1,
                node2,
                ipr=ipr,
                mtu=self.mtu,
                intfName1=first.ifname,
                intfName2=second.ifname,
                params1={"up": _mininet_up(first, primary)},
                params2={"up": _mininet_up(second, primary)},
            )
        self.timings["links_s"] = time.perf_counter() - t

        t = time.perf_counter()

        def configure(h: PlannedHost) -> None:
            node = self._hosts[h.name]
            if h.ports:
                node.configDefault()  # address on eth0, eth0 and lo up
            else:
                node.configDefault(ip=None)

        _parallel(configure, plan.hosts)
        self.timings["config_s"] = time.perf_counter() - t

    def _stop_processes(self) -> None:
        """Everything running in the hosts: started by :meth:`popen` or not."""
        targets = [(proc.pid, item.start) for proc, item in self._procs]
        shells = {int(h.pid) for h in self._hosts.values() if h.pid}
        inodes = {i for i in (procs.netns_inode(p) for p in shells) if i is not None}
        others = [p for p in (procs.pids_in_netns(inodes) if inodes else []) if p not in shells]
        procs.terminate_all(targets + [(p, procs.proc_start(p)) for p in others])
        for proc, item in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)  # reap
            if self.record is not None:
                self.record.drop(item)
        self._procs.clear()
        if self._forkserver is not None:
            self._forkserver.close()
            self._forkserver = None
            if self.record is not None:
                self.record.drop(self._forkserver_item)

    def _node(self, name: str) -> Any:
        return self._hosts.get(name) or self._switches[name]

    def _teardown(self) -> list[str]:
        errors: list[str] = []

        def step(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # keep going: one stuck object must not leak the rest
                log.warning("teardown: %s: %s", what, exc)
                errors.append(f"{what}: {exc}")

        record = self.record
        step("processes", self._stop_processes)
        step("impairments", self.impairments.remove_root_state)
        for nodes in (list(self._hosts.values()), list(self._switches.values())):
            items = [i for i in (self._shell_items.get(n.name) for n in nodes) if i]
            for node in nodes:  # an interactive bash ignores SIGTERM but not SIGHUP
                step(f"node {node.name}", _hang_up, node)
            step("node shells", procs.terminate_all, [(i.pid or 0, i.start) for i in items])
            for node in nodes:
                step(f"node {node.name}", node.terminate)  # reaps the shell, closes its pty
            if record is not None:
                for item in items:
                    record.drop(item)
        if record is not None:
            ipr = self.netlink()
            # A host's namespace dies with its shell and the kernel deletes its veth pairs
            # in one batch; deleting them one by one costs an RCU grace period each.
            recorded = {item.name for item in record.outstanding(runrec.LINK)}
            to_hosts = _ports_to_hosts(self.plan) & recorded
            step("veth teardown", _wait_gone, ipr, sorted(to_hosts), 10.0)
            for kind in (runrec.LINK, runrec.BRIDGE):  # what is left (switch-to-switch), bridges
                for item in record.outstanding(kind):
                    step(f"{kind} {item.name}", _delete_recorded, item, record, ipr)
        if self._bridge_nf and record is not None:
            step("bridge-nf sysctls", bridgenf.release_bridge_nf, record.path)
            self._bridge_nf = False
        if self._root_ipr is not None:
            step("netlink handle", self._root_ipr.close)
            self._root_ipr = None
        return errors


def _parallel(fn: Any, items: Sequence[Any], workers: int = 8) -> None:
    """``fn(item)`` for every item on a few threads; the first error is raised."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, items):
            pass


def _argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str):
        raise TypeError("argv must be a list of arguments, not a shell string")
    return [str(a) for a in argv]


def _mininet_up(port: Port, primary: dict[str, str]) -> bool | None:
    """Whether Mininet should bring ``port`` up (None: netlink or configDefault does it)."""
    if port.host is None or primary.get(port.host) == port.ifname:
        return None
    return True


def _shell_item(kind: str, name: str, node: Any) -> runrec.Item:
    pid = int(node.pid)
    return runrec.Item(
        kind=kind, name=name, pid=pid, start=procs.proc_start(pid), argv=(f"mininet:{node.name}",)
    )


def _hang_up(node: Any) -> None:
    if node.shell is not None and node.shell.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.shell.pid, signal.SIGHUP)


def _ports_to_hosts(plan: Plan | None) -> set[str]:
    """Root-namespace ports whose veth peer sits in a host namespace."""
    if plan is None:
        return set()
    return {
        port.ifname
        for link in plan.links
        for port in link.ends
        if port.host is None and link.peer(port).host is not None
    }


def _wait_gone(ipr: IPRoute, ifnames: Sequence[str], timeout_s: float) -> None:
    """Wait until none of ``ifnames`` exists in the root namespace (or the timeout)."""
    pending = set(ifnames)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending &= {m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
        if pending:
            time.sleep(0.05)


def _delete_recorded(item: runrec.Item, record: runrec.RunRecord, ipr: IPRoute) -> None:
    rootns.delete_link(item.name, ipr)
    record.drop(item)


def _free_tag(state_dir: Path) -> str:
    """A run tag no record and no root-namespace link or nft table is using."""
    from pyroute2 import IPRoute

    used = {r.tag for r in runrec.load_records(state_dir)}
    with IPRoute() as ipr:
        links = [m.get_attr("IFLA_IFNAME") or "" for m in ipr.get_links()]
    tables = [name for _family, name in rootns.list_nft_tables()]
    rng = random.SystemRandom()
    for _ in range(200):
        tag = rng.choice(_B36[10:]) + rng.choice(_B36)
        prefix = names.underlay_prefix(tag)
        if tag in used or any(n.startswith(prefix) for n in links):
            continue
        if names.underlay_table(tag) in tables:
            continue
        return tag
    raise UnderlayError("no free run tag: too many leftover runs? run `overlaysim clean`")


def _clashes(plan: Plan) -> None:
    """Refuse to adopt existing root-namespace objects with our planned names."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        existing = {m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
    taken = sorted(existing & ({b for _s, b in plan.bridges} | set(plan.root_ports())))
    if taken:
        raise UnderlayError(f"interfaces {taken[:5]} already exist; run `overlaysim clean`")


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt for the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def interrupt(signum: int, _frame: Any) -> None:
        if os.getpid() != owner:
            # A forked helper (pyroute2 forks to open namespace sockets) must just die,
            # not unwind a copy of our stack through the session's teardown.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def underlay_session(topology: Topology, **kwargs: Any) -> Iterator[Underlay]:
    """Build and start an :class:`Underlay`; always stop it on the way out.

    Exceptions, Ctrl-C (KeyboardInterrupt) and SIGTERM/SIGHUP (turned into
    KeyboardInterrupt while the session runs) all end in :meth:`Underlay.stop`; the
    exception then propagates so the caller can mark its run interrupted or failed.

    >>> with underlay_session(topology) as u:  # doctest: +SKIP
    ...     u.cmd("h1", ["ping", "-c1", u.underlay_ip("h2")])
    """
    underlay = Underlay(topology, **kwargs)
    with _terminate_as_interrupt():
        try:
            underlay.build()
            underlay.start()
            yield underlay
        finally:
            underlay.stop()
