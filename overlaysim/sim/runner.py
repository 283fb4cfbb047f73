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
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import simpy

from overlaysim.core.cluster import Cluster
from overlaysim.core.config import configs
from overlaysim.core.endpoint import ENDPOINTS, Endpoint
from overlaysim.core.events import EntryEvent, EntryEventKind, MemberEvent
from overlaysim.core.network import Allocation, attachment_record
from overlaysim.core.services import name_fields, vip_endpoint
from overlaysim.core.wire import Entry, Message, MsgType
from overlaysim.errors import RunFailed
from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.metrics.dns import DnsTracker
from overlaysim.metrics.finalize import Outcome, finalize
from overlaysim.metrics.records import HOLD_EVENTS_MAX_HOSTS, NOT_MEASURED_BY_SIM, EventLog
from overlaysim.metrics.results import ResultsWriter
from overlaysim.metrics.traffic import TrafficCounter
from overlaysim.scenario.schema import Scenario
from overlaysim.scenario.sites import site_pair, sites_of
from overlaysim.scenario.steps import Step
from overlaysim.scenario.timeline import Plan, plan
from overlaysim.sim.engine import Observer, SimCluster
from overlaysim.sim.hugepages import HeapCollapser
from overlaysim.sim.underlay import Underlay
from overlaysim.world.container import Container
from overlaysim.world.dryrun import network_spec
from overlaysim.world.manifest import run_manifest
from overlaysim.world.world import StepSkipped, World

#: A graceful leave keeps the node running this long so its leave message spreads.
LEAVE_GRACE_S = 1.0
#: At most this many container pairs are probed for the reachability matrix.
MAX_PROBE_PAIRS = 5000


#: Events after which the host holds the entry live (a REFRESH: a newer version of it
#: with the same content, which is what an owner's re-add after a restart can be).
_ADDS = (EntryEventKind.CREATE, EntryEventKind.UPDATE, EntryEventKind.REFRESH)


#: Traffic kind of each message type (the enum's name costs a property call per message).
_KIND = {t: t.name.lower() for t in MsgType}


class _Recorder(Observer):
    def __init__(
        self,
        events: EventLog,
        tracker: ConvergenceTracker,
        traffic: TrafficCounter,
        holds: bool = False,
        dns: DnsTracker | None = None,
    ):
        self.events = events
        self.tracker = tracker
        self.traffic = traffic
        self.holds = holds  # record entry_held rows (small runs only)
        self.dns = dns  # fed only in runs with services

    def member_event(self, t: float, host: str, ev: MemberEvent) -> None:
        self.events.member(t, host, ev)

    def entry_event(self, t: float, host: str, ev: EntryEvent) -> None:
        op = "add" if ev.kind in _ADDS else "delete"
        self.tracker.seen(t, host, ev.network, ev.key, op)
        if self.holds:
            self.events.add(t, "entry_held", node=host, network=ev.network, key=ev.key, op=op)
        if self.dns is not None:
            self.dns.host_event(t, host, ev)

    def sent(self, t: float, host: str, msg: Message, size: int, count: int = 1) -> None:
        self.traffic.sent(t, host, size, _KIND[msg.TYPE], count)

    def received(self, t: float, host: str, msg: Message, size: int) -> None:
        self.traffic.recv(t, host, size, _KIND[msg.TYPE])


class SimBackend:
    """The simulator's side of the world's verbs: a SimPy cluster over the graph underlay."""

    records_commits = True
    runs_tasks = False  # task commands and published ports are recorded, not run
    steps_in_background = False  # every step is one instant of the timeline

    def __init__(self, scenario: Scenario, seed: int, observer: Observer) -> None:
        self.env = simpy.Environment()
        self.underlay = Underlay(scenario.resolved_topology)
        mconf, tconf = configs(
            scenario.profile, **scenario.protocol.model_dump(exclude={"esp_seq_limit"})
        )
        self.cluster = SimCluster(
            self.env,
            self.underlay,
            membership=mconf,
            tables=tconf,
            rng=random.Random(seed),
            observer=observer,
        )
        self.ipam = Cluster()
        self.networks = {
            net.name: self.ipam.create_network(network_spec(net)) for net in scenario.networks
        }
        self._allocs: dict[tuple[str, str], Allocation] = {}
        self.up: Collection[str] = ()  # the world's hosts up, bound by SimWorld

    def now(self) -> float:
        return self.env.now

    def refused(self, exc: BaseException) -> str | None:
        return None  # the model refuses nothing: any exception is a bug or bad input

    # -- hosts ---------------------------------------------------------------------------

    def boot(self, order, *, formed, seeds) -> dict[str, float]:  # type: ignore[no-untyped-def]
        if formed:
            self.cluster.start_formed(order)
        else:
            started: list[str] = []
            for h in order:
                self.cluster.start(h, seeds(h, started))
                started.append(h)
        return dict.fromkeys(order, self.env.now)

    def prepare_start(self, host: str) -> None:
        return None  # nothing comes before the start itself

    def start(self, host: str, seeds: list[str]) -> float:
        self.cluster.start(host, seeds)
        return self.env.now

    def crash(self, host: str) -> None:
        self.cluster.crash(host)

    def leave(self, host: str) -> None:
        self.cluster.leave(host)
        self.env.process(self._stop_later(host))

    def _stop_later(self, host: str):  # type: ignore[no-untyped-def]
        yield self.env.timeout(LEAVE_GRACE_S)
        if host not in self.up:
            self.cluster.stop(host)

    # -- containers ----------------------------------------------------------------------

    def _alloc(self, name: str, network: str) -> Allocation:
        alloc = self._allocs.get((name, network))
        if alloc is None:
            alloc = self._allocs[(name, network)] = self.ipam.allocate(
                network, name, standalone=False
            )
        return alloc

    def reserve(self, c: Container, network: str) -> str:
        return self._alloc(c.name, network).ip

    def attach(self, c: Container, networks, first) -> dict[str, str]:  # type: ignore[no-untyped-def]
        out = {}
        for net in networks:
            alloc = self._alloc(c.name, net)
            if net in first:
                self.cluster.call(c.host, lambda n, t, net=net: n.join_network(net, t))
            endpoint = Endpoint(name=c.name, ip=alloc.ip, mac=alloc.mac, vtep=c.host)
            value = {**endpoint.to_value(), **name_fields(c.aliases, c.task)}
            self.cluster.call(
                c.host, lambda n, t, net=net, v=value: n.create_entry(net, ENDPOINTS, c.name, v, t)
            )
            out[net] = alloc.ip
        return out

    def detach(
        self, c: Container, network: str, *, live: bool, last: bool, stay: bool = False
    ) -> None:
        self.ipam.release(network, c.name)
        self._allocs.pop((c.name, network), None)
        if live:
            self.cluster.call(c.host, lambda n, t: n.delete_entry(network, ENDPOINTS, c.name, t))
        if last and not stay:
            self.leave_network(c.host, network)

    def leave_network(self, host: str, network: str) -> None:
        self.cluster.call(host, lambda n, t: n.leave_network(network, t))

    def reserve_vip(self, service: str, network: str) -> str:
        return self.ipam.allocate(network, vip_endpoint(service), standalone=False).ip

    def release_vip(self, service: str, network: str) -> None:
        self.ipam.release(network, vip_endpoint(service))

    def publish(self, service: str, ports: Sequence[tuple[int, int]]) -> str | None:
        return None  # no routing mesh here: the World records the ports (runs_tasks)

    def unpublish(self, service: str) -> None:
        return None

    def each_host(self, fn, items, host) -> None:  # type: ignore[no-untyped-def]
        for item in items:  # in order: the IPAM hands out addresses in the plan's order
            fn(item)

    # -- the underlay ----------------------------------------------------------------------

    def impair(self, kind: str, value: float, link, jitter_ms: float) -> None:  # type: ignore[no-untyped-def]
        if kind == "loss":
            self.underlay.loss(value, link)
        elif kind == "delay":
            self.underlay.delay(value, jitter_ms, link)
        else:
            self.underlay.rate(value, link)

    def clear(self, kind, link) -> None:  # type: ignore[no-untyped-def]
        self.underlay.clear(link, kind)

    def partition(self, groups: list[list[str]]) -> None:
        self.underlay.partition(groups)

    def heal(self) -> None:
        self.underlay.heal()

    def rotate_keys(self, hosts: list[str]) -> dict[str, Any] | None:
        raise StepSkipped("encryption keys are not modelled by the simulator")


class SimWorld(World):
    """The world on the simulator, plus the model-level measurements."""

    def __init__(self, scenario: Scenario, seed: int, *, services: bool = False) -> None:
        self.seed = seed
        self._ip_vteps: dict[tuple[str, str], dict[str | None, set[str | None]]] = {}
        events = EventLog()
        tracker = ConvergenceTracker()
        self.traffic = TrafficCounter()
        #: The service-DNS metrics, kept only when the timeline has service steps.
        self.dns_tracker = DnsTracker() if services else None
        holds = len(scenario.resolved_topology.hosts) <= HOLD_EVENTS_MAX_HOSTS  # entry_held rows
        recorder = _Recorder(events, tracker, self.traffic, holds=holds, dns=self.dns_tracker)
        backend = SimBackend(scenario, seed, recorder)
        super().__init__(scenario, backend, tracker=tracker, events=events, dns=self.dns_tracker)
        backend.up = self.up
        self.sim = backend
        self.tracker = tracker
        self.env = backend.env
        self.cluster = backend.cluster
        self.underlay = backend.underlay
        self.networks = backend.networks
        self._sites = sites_of(scenario.resolved_topology)
        #: Reachability rows sampled during the run (``measure.probe_interval``).
        self.probe_rows: list[dict[str, Any]] = []

    def start(self, the_plan: Plan) -> None:
        """Boot, then schedule the timeline's steps as a SimPy process."""
        self.boot(the_plan)
        self.env.process(self._timeline(the_plan.steps))
        measure = self.scenario.measure
        if measure.probes:
            duration = float(self.scenario.duration)
            self.env.process(self._probe_rounds(measure.probe_interval, duration))

    def _timeline(self, steps: list[Step]):  # type: ignore[no-untyped-def]
        for at, work in self.timeline(steps):
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
            work()

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
        self._ip_vteps.clear()  # (host, network) -> ip -> VTEPs of its live entries, this round
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
        there, back = self.underlay.path_latency(a, b), self.underlay.path_latency(b, a)
        assert there is not None and back is not None  # reachable: a path exists
        return round((there + back) * 1000.0, 6)

    def _probe_rounds(self, interval: float, until: float):  # type: ignore[no-untyped-def]
        """Sample reachability and RTT every ``interval`` during the run (the last
        sample is taken at the end, as before)."""
        while self.env.now + interval < until:
            yield self.env.timeout(interval)
            self.probe_rows.extend(self.reachability_rows())

    def _reachable(self, a: Container, b: Container, net: str) -> bool:
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
            or self._conflicting(a.host, net, ea)
            or self._conflicting(b.host, net, eb)
        ):
            return False
        return self.underlay.reachable(a.host, b.host) and self.underlay.reachable(b.host, a.host)

    def _conflicting(self, host: str, net: str, e: Entry) -> bool:
        """Whether ``host`` also holds a live entry giving ``e``'s IP another VTEP.

        A data plane forwards by address (neighbour IP -> MAC, FDB MAC -> VTEP), one
        VTEP per address: a stale entry for a reused IP leaves the forwarding ambiguous
        (libnetwork keeps the entry it programmed first), so the model counts the pair
        as unreachable.
        """
        index = self._ip_vteps.get((host, net))
        if index is None:
            index = {}
            node = self.cluster.node(host)
            for other in node.tables.entries(net, ENDPOINTS).values() if node else ():
                index.setdefault(other.value.get("ip"), set()).add(other.value.get("vtep"))
            self._ip_vteps[(host, net)] = index
        return len(index.get(e.value.get("ip"), ())) > 1


def run_simulation(
    scenario: Scenario,
    out: Path,
    *,
    seed: int | None = None,
    progress: bool = True,
    overwrite: bool = True,
) -> str:
    """Simulate ``scenario`` and write its results folder (no plots); return the final
    status. A failure writes the folder with status ``failed`` and raises
    :class:`~overlaysim.errors.RunFailed` naming the cause and the folder."""
    seed = scenario.seed if seed is None else seed
    the_plan = plan(scenario, seed)
    world = SimWorld(scenario, seed, services=the_plan.has_services)
    manifest = run_manifest(
        scenario,
        seed,
        backend="sim",
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
            | attachment_record(n.attachment)
            for n in world.networks.values()
        ],
    )
    writer = ResultsWriter(out, manifest, overwrite=overwrite)
    duration = float(scenario.duration)
    status = "complete"
    error = None
    try:
        world.start(the_plan)
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
    tables = {
        "events": world.events.rows,
        "convergence": conv_rows,
        "traffic": world.traffic.rows(),
        "traffic_kinds": world.traffic.kind_rows(),
        "reachability": reach_rows,
        "throughput": tp_rows,
    }
    if world.dns_tracker is not None:
        tables["dns"] = world.dns_tracker.finish()
    finalize(
        writer,
        Outcome(
            status=status,
            error=error,
            duration_s=t_end,
            tables=tables,
            counters={
                "messages": {
                    "sent": world.cluster.messages_sent,
                    "delivered": world.cluster.messages_delivered,
                    "lost": world.cluster.messages_lost,
                }
            },
            skipped_steps=world.skipped,
        ),
    )
    if status == "failed":
        raise RunFailed(f"simulation failed: {error} (partial results in {out})")
    return status


def run_observed(scenario: Scenario, seed: int, tap: Callable[[Observer], Observer]) -> SimWorld:
    """Simulate ``scenario`` in memory, no results folder, with an observer of the
    caller's: ``tap`` is given the run's own observer and returns the one the cluster
    uses (it should forward to the one it was given). Returns the finished world.

    For replays and benches that need what a results folder does not keep (every
    datagram, the first instant each host held each entry); the run is the one
    ``overlaysim sim`` makes for the same scenario and seed.
    """
    the_plan = plan(scenario, seed)
    world = SimWorld(scenario, seed, services=the_plan.has_services)
    world.cluster.observer = tap(world.cluster.observer)
    world.start(the_plan)
    with frozen_heap():
        world.env.run(until=float(scenario.duration))
    return world


@contextlib.contextmanager
def frozen_heap(huge_pages: bool = True) -> Iterator[HeapCollapser | None]:
    """Keep the cyclic garbage collector off the cluster's long-lived state, and (with
    ``huge_pages``) the heap on huge pages where the kernel allows it (see
    overlaysim/sim/hugepages.py; asked after a collection, at most every
    ``_COLLAPSE_EVERY`` wall seconds). Yields the :class:`HeapCollapser`, or None.

    A simulated cluster holds millions of long-lived objects (N x N member views);
    every full collection would walk them all, a cost that grows with N and dominated
    the wall time above a few thousand nodes. Freezing moves them out of the
    collector's generations for the run; unfreezing gives them back afterwards.

    The state keeps growing during a run (at 10,000 nodes from 6 to 17 GB while a t=0
    burst spreads), so what survives each full collection is frozen too: the next one
    walks only what was made since. Garbage is collected before it is frozen; what
    becomes cyclic garbage later waits for the end of the run (the cluster's state is
    freed by reference counts, not cycles). No result depends on when garbage goes.

    The youngest generation is collected every ``_YOUNG_THRESHOLD`` allocations rather
    than every 700: a young collection walks what every young container points at, and
    the messages in flight point at thousands of records each (a bulk sync carries every
    record a node holds). At 5,000 hosts this halved the collector's time
    (docs/scale.md, twentieth round). The thresholds are restored afterwards.
    """
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(_YOUNG_THRESHOLD, *thresholds[1:])
    collapse = HeapCollapser(_COLLAPSE_EVERY) if huge_pages else None

    def refreeze(phase: str, info: dict) -> None:
        if phase == "stop":
            if info["generation"] == 2:
                gc.freeze()
            if collapse is not None:
                collapse()  # rate-limited: a clock read on most calls

    gc.callbacks.append(refreeze)
    try:
        yield collapse
    finally:
        gc.callbacks.remove(refreeze)
        gc.set_threshold(*thresholds)
        gc.unfreeze()


#: Allocations between collections of the youngest generation during a run (see
#: :func:`frozen_heap`; the interpreter's default is 700).
_YOUNG_THRESHOLD = 10_000
#: Wall seconds between two requests to move the heap onto huge pages.
_COLLAPSE_EVERY = 5.0


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
