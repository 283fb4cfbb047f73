"""Run a scenario on the simulator and write its results folder.

The runner owns the ground truth (which hosts run, which containers live where, which
networks each host is attached to), applies the planned timeline to the simulated
cluster, and records what happens through the shared metrics code, so the emulator's
results use the same definitions.
"""

from __future__ import annotations

import contextlib
import gc
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import simpy

from overlaysim.core.cluster import Cluster, NetworkSpec
from overlaysim.core.config import configs
from overlaysim.core.endpoint import ENDPOINTS, Endpoint
from overlaysim.core.events import EntryEvent, EntryEventKind, MemberEvent
from overlaysim.core.wire import Message
from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.metrics.manifest import base_manifest
from overlaysim.metrics.records import NOT_MEASURED_BY_SIM, EventLog
from overlaysim.metrics.results import ResultsWriter
from overlaysim.metrics.rtt import site_pair, sites_of
from overlaysim.metrics.traffic import TrafficCounter
from overlaysim.scenario.schema import Scenario
from overlaysim.scenario.timeline import Plan, Step, plan
from overlaysim.sim.engine import Observer, SimCluster
from overlaysim.sim.underlay import Underlay

#: A graceful leave keeps the node running this long so its leave message spreads.
LEAVE_GRACE_S = 1.0
#: At most this many container pairs are probed for the reachability matrix.
MAX_PROBE_PAIRS = 5000


_ADDS = (EntryEventKind.CREATE, EntryEventKind.UPDATE)


class _Recorder(Observer):
    def __init__(self, events: EventLog, tracker: ConvergenceTracker, traffic: TrafficCounter):
        self.events = events
        self.tracker = tracker
        self.traffic = traffic

    def member_event(self, t: float, host: str, ev: MemberEvent) -> None:
        self.events.member(t, host, ev)

    def entry_event(self, t: float, host: str, ev: EntryEvent) -> None:
        op = "add" if ev.kind in _ADDS else "delete"
        self.tracker.seen(t, host, ev.network, ev.key, op)

    def sent(self, t: float, host: str, msg: Message, size: int) -> None:
        self.traffic.sent(t, host, size, msg.TYPE.name.lower())

    def received(self, t: float, host: str, msg: Message, size: int) -> None:
        self.traffic.recv(t, host, size, msg.TYPE.name.lower())


@dataclass(slots=True)
class _Container:
    name: str
    host: str
    networks: dict[str, Any] = field(default_factory=dict)  # network -> Allocation


class SimWorld:
    """Ground truth plus the simulated cluster; applies plan steps at their time."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self.env = simpy.Environment()
        self.topology = scenario.resolved_topology
        self.underlay = Underlay(self.topology)
        self._sites = sites_of(self.topology)
        #: Reachability rows sampled during the run (``measure.probe_interval``).
        self.probe_rows: list[dict[str, Any]] = []
        mconf, tconf = configs(scenario.profile, **scenario.protocol.model_dump())
        self.events = EventLog()
        self.tracker = ConvergenceTracker()
        self.traffic = TrafficCounter()
        self.cluster = SimCluster(
            self.env,
            self.underlay,
            membership=mconf,
            tables=tconf,
            rng=random.Random(seed),
            observer=_Recorder(self.events, self.tracker, self.traffic),
        )
        self.ipam = Cluster()
        self.networks = {}
        for net in scenario.networks:
            spec = NetworkSpec(
                name=net.name,
                subnet=net.subnet,
                gateway=net.gateway,
                ip_range=net.ip_range,
                aux_addresses=dict(net.aux_addresses or {}),
                attachable=net.attachable,
                encrypted=net.encrypted,
                mtu=net.mtu,
            )
            self.networks[net.name] = self.ipam.create_network(spec)
        self.managers = list(scenario.managers or self.topology.hosts[:1])
        self.up: set[str] = set()
        self.containers: dict[str, _Container] = {}
        self.attached: dict[str, dict[str, int]] = {}  # host -> network -> local containers
        self.net_hosts: dict[str, set[str]] = {n: set() for n in self.networks}
        self.skipped: list[dict[str, Any]] = []

    # -- host lifecycle --------------------------------------------------------------

    def _seeds(self, host: str) -> list[str]:
        seeds = [m for m in self.managers if m in self.up and m != host]
        if not seeds:
            seeds = [h for h in sorted(self.up) if h != host][:3]
        return seeds

    def start_host(self, host: str, kind: str) -> None:
        self.cluster.start(host, self._seeds(host))
        self.up.add(host)
        self.events.add(self.env.now, kind, subject=host)
        # Containers that live on this host (re)announce their endpoints.
        for c in self.containers.values():
            if c.host == host:
                for net, alloc in c.networks.items():
                    self._announce(c, net, alloc)

    def crash(self, host: str) -> None:
        if host not in self.up:
            return self._skip("crash", host=host, reason="host is not running")
        self.cluster.crash(host)
        self._host_gone(host, "node_crash")

    def leave(self, host: str) -> None:
        if host not in self.up:
            return self._skip("leave", host=host, reason="host is not running")
        self.cluster.leave(host)
        self._host_gone(host, "node_leave")
        self.env.process(self._stop_later(host))

    def _stop_later(self, host: str):
        yield self.env.timeout(LEAVE_GRACE_S)
        if host not in self.up:
            self.cluster.stop(host)

    def _host_gone(self, host: str, kind: str) -> None:
        now = self.env.now
        self.up.discard(host)
        self.attached.pop(host, None)
        for hosts in self.net_hosts.values():
            hosts.discard(host)
        self.events.add(now, kind, subject=host)
        self.tracker.node_gone(now, host)

    # -- endpoints -------------------------------------------------------------------

    def attach(self, name: str, host: str, network: str) -> None:
        c = self.containers.get(name)
        if c is None:
            c = self.containers[name] = _Container(name, host)
        if c.host != host:
            return self._skip("attach", container=name, reason=f"container lives on {c.host}")
        if network in c.networks:
            return self._skip("attach", container=name, reason=f"already on {network}")
        alloc = self.ipam.allocate(network, name, standalone=False)
        c.networks[network] = alloc
        self.events.add(self.env.now, "container_attach", node=host, subject=name, network=network)
        if host in self.up:
            self._announce(c, network, alloc)

    def _announce(self, c: _Container, network: str, alloc: Any) -> None:
        host = c.host
        now = self.env.now
        per_host = self.attached.setdefault(host, {})
        if host not in self.net_hosts[network]:
            self.net_hosts[network].add(host)
            self.events.add(now, "net_attach", node=host, network=network)
        if per_host.get(network, 0) == 0:
            self.cluster.call(host, lambda n, t: n.join_network(network, t))
        per_host[network] = per_host.get(network, 0) + 1
        value = Endpoint(name=c.name, ip=alloc.ip, mac=alloc.mac, vtep=host).to_value()
        self.cluster.call(host, lambda n, t: n.create_entry(network, ENDPOINTS, c.name, value, t))
        self._commit(host, network, c.name, "add")

    def _commit(self, host: str, network: str, key: str, op: str) -> None:
        now = self.env.now
        self.events.add(now, "entry_commit", node=host, network=network, key=key, op=op)
        targets = [h for h in self.net_hosts[network] if h in self.up]
        self.tracker.commit(now, host, network, key, op, sorted(targets))

    def detach(self, name: str, network: str | None) -> None:
        c = self.containers.get(name)
        if c is None:
            return self._skip("detach", container=name, reason="no such container")
        nets = [network] if network else list(c.networks)
        for net in nets:
            if net not in c.networks:
                self._skip("detach", container=name, reason=f"not on {net}")
                continue
            del c.networks[net]
            self.ipam.release(net, name)
            self.events.add(
                self.env.now, "container_detach", node=c.host, subject=name, network=net
            )
            if c.host not in self.up:
                continue  # nothing to tell; the host's entries die with it
            self.cluster.call(c.host, lambda n, t, net=net: n.delete_entry(net, ENDPOINTS, name, t))
            self._commit(c.host, net, name, "delete")
            per_host = self.attached[c.host]
            per_host[net] -= 1
            if per_host[net] == 0:
                self.cluster.call(c.host, lambda n, t, net=net: n.leave_network(net, t))
                self.net_hosts[net].discard(c.host)
                self.events.add(self.env.now, "net_detach", node=c.host, network=net)
                self.tracker.node_gone(self.env.now, c.host, network=net)
        if not c.networks:
            del self.containers[name]

    def _skip(self, action: str, **info: Any) -> None:
        self.skipped.append({"t": self.env.now, "action": action, **info})

    # -- the timeline ----------------------------------------------------------------

    def apply(self, step: Step) -> None:
        p = step.params
        a = step.action
        now = self.env.now
        self.events.add(now, "scenario", op=a, detail=step.describe())
        link = tuple(p["link"]) if p.get("link") else None
        if a == "loss":
            self.underlay.set_loss(p["percent"], link)
        elif a == "delay":
            self.underlay.set_delay(p["ms"], link)
        elif a == "rate":
            self.underlay.set_rate(p["mbps"], link)
        elif a == "clear":
            only = p.get("only")
            if only == "loss":
                self.underlay.set_loss(0.0, link)
            elif only == "delay":
                self.underlay.set_delay(0.0, link)
            else:
                self.underlay.clear(link)
        elif a == "partition":
            groups = [list(g) for g in p["groups"]]
            if p.get("rest"):
                listed = {h for g in groups for h in g}
                groups.append([h for h in self.topology.hosts if h not in listed])
            self.underlay.partition(groups)
            self.events.add(now, "partition", detail={"groups": groups})
        elif a == "heal":
            self.underlay.heal()
            self.events.add(now, "heal")
        elif a == "crash":
            self.crash(p["host"])
        elif a == "restart":
            if p["host"] in self.up:
                self._skip("restart", host=p["host"], reason="host is running")
            else:
                self.start_host(p["host"], "node_restart")
        elif a == "leave":
            self.leave(p["host"])
        elif a == "join":
            if p["host"] in self.up:
                self._skip("join", host=p["host"], reason="host is running")
            else:
                self.start_host(p["host"], "node_join")
        elif a == "attach":
            self.attach(p["container"], p["host"], p["network"])
        elif a == "detach":
            self.detach(p["container"], p.get("network"))
        elif a == "rotate_keys":
            self._skip("rotate_keys", reason="encryption keys are not modelled by the simulator")
        else:  # pragma: no cover - the schema admits no other action
            raise ValueError(f"unknown action {a!r}")

    def _timeline(self, steps: list[Step]):
        for step in steps:
            if step.at > self.env.now:
                yield self.env.timeout(step.at - self.env.now)
            self.apply(step)

    def boot(self, the_plan: Plan) -> None:
        order = [m for m in self.managers if m in the_plan.initial_hosts]
        order += [h for h in the_plan.initial_hosts if h not in order]
        if self.scenario.boot == "formed":
            self.cluster.start_formed(order)
            for h in order:
                self.up.add(h)
                self.events.add(self.env.now, "node_start", subject=h)
        else:
            for h in order:
                self.start_host(h, "node_start")
        for spec in the_plan.containers:
            for net in spec.networks:
                if spec.host in self.up:
                    self.attach(spec.name, spec.host, net)
                else:
                    self.containers.setdefault(spec.name, _Container(spec.name, spec.host))
                    c = self.containers[spec.name]
                    c.networks[net] = self.ipam.allocate(net, spec.name, standalone=False)
        self.env.process(self._timeline(the_plan.steps))
        if self.scenario.measure.probes:
            interval = self.scenario.measure.probe_interval
            self.env.process(self._probe_rounds(interval, float(self.scenario.duration)))

    # -- measurement -----------------------------------------------------------------

    def reachability_rows(self) -> list[dict[str, Any]]:
        """Model-level reachability between containers at the current time.

        Two containers on a shared network reach each other when both hosts run, each
        host's tables hold the other's endpoint with the right VTEP, and the underlay
        connects the hosts. Containers that share no network are never reachable: the
        model has no path between networks, which the emulator checks for real.
        """
        now = self.env.now
        site = self._sites
        names = sorted(self.containers)
        pairs = [(a, b) for a in names for b in names if a != b]
        if len(pairs) > MAX_PROBE_PAIRS:
            rng = random.Random(f"probes:{self.seed}")
            pairs = sorted(rng.sample(pairs, MAX_PROBE_PAIRS))
        rows = []
        for a, b in pairs:
            ca, cb = self.containers[a], self.containers[b]
            shared = sorted(set(ca.networks) & set(cb.networks))
            if not shared:
                rows.append(
                    {
                        "t": now,
                        "src": a,
                        "dst": b,
                        "network": "",
                        "expected": False,
                        "reachable": False,
                        "sites": site_pair(site, ca.host, cb.host),
                        "rtt_ms": None,
                    }
                )
                continue
            for net in shared:
                expected = ca.host in self.up and cb.host in self.up
                reachable = self._reachable(ca, cb, net)
                rows.append(
                    {
                        "t": now,
                        "src": a,
                        "dst": b,
                        "network": net,
                        "expected": expected,
                        "reachable": reachable,
                        "sites": site_pair(site, ca.host, cb.host),
                        "rtt_ms": self._rtt_ms(ca.host, cb.host) if reachable else None,
                    }
                )
        return rows

    def _rtt_ms(self, a: str, b: str) -> float:
        """The underlay model's round trip (path latency both ways, no serialisation)."""
        if a == b:
            return 0.0
        there, back = self.underlay._path_cost(a, b), self.underlay._path_cost(b, a)
        assert there is not None and back is not None  # reachable: a path exists
        return round((there[0] + back[0]) * 1000.0, 6)

    def _probe_rounds(self, interval: float, until: float) -> Any:
        """Sample reachability and RTT every ``interval`` during the run (the last
        sample is taken at the end, as before)."""
        while self.env.now + interval < until:
            yield self.env.timeout(interval)
            self.probe_rows.extend(self.reachability_rows())

    def _reachable(self, a: _Container, b: _Container, net: str) -> bool:
        if a.host not in self.up or b.host not in self.up:
            return False
        if a.host == b.host:
            return True
        na, nb = self.cluster.node(a.host), self.cluster.node(b.host)
        if na is None or nb is None:
            return False
        ea = na.tables.entries(net, ENDPOINTS).get((ENDPOINTS, b.name))
        eb = nb.tables.entries(net, ENDPOINTS).get((ENDPOINTS, a.name))
        if (
            ea is None
            or eb is None
            or ea.value.get("vtep") != b.host
            or eb.value.get("vtep") != a.host
        ):
            return False
        return self.underlay.reachable(a.host, b.host) and self.underlay.reachable(b.host, a.host)


def run_simulation(
    scenario: Scenario,
    out: Path,
    *,
    seed: int | None = None,
    progress: bool = True,
    overwrite: bool = True,
    plots: bool = True,
) -> str:
    """Simulate ``scenario`` and write its results folder; return the final status."""
    from overlaysim.metrics.compute import compute_metrics
    from overlaysim.metrics.tables import frame

    seed = scenario.seed if seed is None else seed
    the_plan = plan(scenario, seed)
    world = SimWorld(scenario, seed)
    mconf, tconf = configs(scenario.profile, **scenario.protocol.model_dump())
    manifest = base_manifest(
        name=scenario.name,
        backend="sim",
        seed=seed,
        scenario=scenario.resolved(),
        capabilities={},
        nodes=len(scenario.resolved_topology.hosts),
        protocol={"membership": _asdict(mconf), "tables": _asdict(tconf)},
        mechanisms={
            "loss": "simulated per-link Bernoulli drop",
            "delay": "simulated link latency",
            "rate": "simulated serialisation delay (no queueing)",
            "partition": "simulated reachability groups",
            "crash": "node stopped, its links silent",
        },
        networks=[
            {
                "name": n.name,
                "vni": n.vni,
                "subnet": n.subnet,
                "gateway": n.gateway,
                "mtu": n.mtu,
                "encrypted": n.encrypted,
            }
            for n in world.networks.values()
        ],
    )
    writer = ResultsWriter(out, manifest, overwrite=overwrite)
    duration = float(scenario.duration)
    status = "complete"
    error = None
    try:
        world.boot(the_plan)
        with frozen_heap():
            _run_env(world.env, duration, progress, scenario.name)
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception as exc:
        status = "failed"
        error = f"{type(exc).__name__}: {exc}"
    t_end = float(world.env.now)
    conv_rows = world.tracker.finish(t_end)
    reach_rows = world.probe_rows + world.reachability_rows() if scenario.measure.probes else []
    tp_rows = [
        {
            "src": a,
            "dst": b,
            "proto": "tcp",
            "overlay_bps": None,
            "underlay_bps": None,
            "ratio": None,
            "reason": NOT_MEASURED_BY_SIM,
        }
        for a, b in scenario.measure.throughput
    ]
    traffic_rows = world.traffic.rows()
    kind_rows = world.traffic.kind_rows()
    writer.write_table("events", world.events.rows)
    writer.write_table("convergence", conv_rows)
    writer.write_table("traffic", traffic_rows)
    writer.write_table("traffic_kinds", kind_rows)
    writer.write_table("reachability", reach_rows)
    writer.write_table("throughput", tp_rows)
    metrics = compute_metrics(
        frame("events", world.events.rows),
        frame("convergence", conv_rows),
        frame("traffic", traffic_rows),
        frame("reachability", reach_rows),
        frame("throughput", tp_rows),
        traffic_kinds=frame("traffic_kinds", kind_rows),
        backend="sim",
        scenario=scenario.name,
        seed=seed,
        duration_s=t_end,
        nodes=len(scenario.resolved_topology.hosts),
    )
    metrics["messages"] = {
        "sent": world.cluster.messages_sent,
        "delivered": world.cluster.messages_delivered,
        "lost": world.cluster.messages_lost,
    }
    metrics["skipped_steps"] = world.skipped
    writer.write_metrics(metrics)
    if plots and status != "failed":
        from overlaysim.metrics.results import load_run
        from overlaysim.report.plots import write_plots

        write_plots(load_run(out), writer.plots_dir)
    writer.finish(status, error)
    if status == "failed":
        raise RuntimeError(f"simulation failed: {error} (partial results in {out})")
    return status


@contextlib.contextmanager
def frozen_heap():
    """Keep the cyclic garbage collector off the cluster's long-lived state.

    A simulated cluster holds millions of long-lived objects (N x N member views);
    every full collection would walk them all, a cost that grows with N and dominated
    the wall time above a few thousand nodes. Freezing moves them out of the
    collector's generations for the run; unfreezing gives them back afterwards.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _asdict(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


def _run_env(env: simpy.Environment, duration: float, progress: bool, name: str) -> None:
    """Advance virtual time to ``duration`` in slices, with a progress bar."""
    slices = 200
    step = duration / slices
    if not progress:
        env.run(until=duration)
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.1f}/{task.total:.0f} s simulated"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task(f"sim {name}", total=duration)
        for i in range(1, slices + 1):
            env.run(until=min(duration, i * step))
            bar.update(task, completed=env.now)
