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
import logging
import os
import random
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlaysim.agent import names
from overlaysim.emu import bridgenf, procs, rootns
from overlaysim.emu import record as runrec
from overlaysim.emu.forkserver import Forked, ForkServer
from overlaysim.emu.impair import Impairments
from overlaysim.emu.mininet_parts import create_bridge, mininet_classes, wait_stp
from overlaysim.emu.plan import (
    DEFAULT_SUBNET,
    Plan,
    PlannedHost,
    PlannedLink,
    Port,
    UnderlayError,
    plan_underlay,
)
from overlaysim.emu.setup import require_emulation
from overlaysim.emu.signals import signals_deferred, terminate_as_interrupt
from overlaysim.scenario.topology import Topology

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


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
                create_bridge(ipr, bridge, ports, self.plan.stp)
            if self.plan.stp:
                wait_stp(self.plan.root_ports())
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
        assert self.plan is not None, "build() first"
        return self.plan.links_between(a, b)

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
        host_cls, switch_cls, link_cls = mininet_classes()
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
            to_hosts = (self.plan.ports_to_hosts() if self.plan else set()) & recorded
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
def underlay_session(topology: Topology, **kwargs: Any) -> Iterator[Underlay]:
    """Build and start an :class:`Underlay`; always stop it on the way out.

    Exceptions, Ctrl-C (KeyboardInterrupt) and SIGTERM/SIGHUP (turned into
    KeyboardInterrupt while the session runs) all end in :meth:`Underlay.stop`; the
    exception then propagates so the caller can mark its run interrupted or failed.

    >>> with underlay_session(topology) as u:  # doctest: +SKIP
    ...     u.cmd("h1", ["ping", "-c1", u.underlay_ip("h2")])
    """
    underlay = Underlay(topology, **kwargs)
    with terminate_as_interrupt():
        try:
            underlay.build()
            underlay.start()
            yield underlay
        finally:
            underlay.stop()
