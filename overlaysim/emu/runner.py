"""Run a scenario on Mininet with real agents and write its results folder.

The emulation plays the same :func:`~overlaysim.scenario.timeline.plan` as the
simulator, on a Mininet underlay (:mod:`overlaysim.emu.net`) with one ``overlayd`` per
host (:mod:`overlaysim.emu.testbed`), and writes the same results folder through the
same metrics code. :class:`EmuWorld` keeps the ground truth exactly as the simulator's
``SimWorld`` does (hosts up, containers and where they live, networks per host) and
records it in an :class:`~overlaysim.metrics.records.EventLog`; the agents log what they
saw. After the timeline come the data-plane measurements (:mod:`overlaysim.emu.probes`),
then the agents stop and :func:`~overlaysim.emu.collect.collect` merges logs and ground
truth into the tables.

Time: ``t0 = time.monotonic()`` at scenario start. Agents log ``time.monotonic()``
too; every namespace shares the kernel's clock, so ``t - t0`` is scenario time for
everybody. Steps run at their planned time or, when an earlier step took longer, as
soon as possible after it; the ground truth carries the real times.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overlaysim.agent.control import ControlError
from overlaysim.agent.manager import ManagerUnavailable
from overlaysim.core.cluster import ClusterError
from overlaysim.core.config import configs
from overlaysim.emu.collect import Collected, collect
from overlaysim.emu.impair import UnsupportedImpairment
from overlaysim.emu.net import Underlay, signals_deferred, underlay_session
from overlaysim.emu.probes import MAX_PROBE_PAIRS, Endpoint, reachability, throughput
from overlaysim.emu.sampler import ProbeSampler
from overlaysim.emu.setup import require_emulation
from overlaysim.emu.testbed import Testbed, TestbedError
from overlaysim.metrics.manifest import base_manifest
from overlaysim.metrics.records import EventLog
from overlaysim.metrics.results import ResultsWriter
from overlaysim.scenario.expand import ContainerSpec
from overlaysim.scenario.schema import Scenario
from overlaysim.scenario.timeline import Plan, Step, plan

#: Seconds of iperf3 per direction of a throughput pair (overlay, then underlay).
THROUGHPUT_SECONDS = 5.0
#: How long ``boot: formed`` waits for every agent to see every other alive.
FORM_TIMEOUT_S = 60.0
#: Subfolder of the results folder that receives a copy of every agent's log.
AGENT_LOGS = "agent-logs"

#: Errors of one step that skip the step (recorded with the reason) instead of
#: failing the run: the cluster refused, an agent or the manager was unreachable.
_STEP_ERRORS = (ClusterError, ControlError, ManagerUnavailable, OSError, TestbedError)


@dataclass(slots=True)
class _Container:
    name: str
    host: str
    networks: dict[str, str] = field(default_factory=dict)  # network -> ip ("" until known)
    #: Whether the container exists in its host's agent now (False while the host is down).
    live: bool = False
    netns: str = ""


class EmuWorld:
    """Ground truth plus the live testbed; applies plan steps as they come due.

    Control operations go to the agents first and the ground truth is recorded once
    they succeed, stamped with the time the operation started (an attach precedes the
    agent's commit) or, for detaches, ended (the delete commit precedes the detach).
    """

    def __init__(self, scenario: Scenario, seed: int, testbed: Testbed) -> None:
        self.scenario = scenario
        self.seed = seed
        self.testbed = testbed
        self.underlay: Underlay = testbed.underlay
        self.topology = scenario.resolved_topology
        self.managers = list(scenario.managers or self.topology.hosts[:1])
        self.events = EventLog()
        self.t0: float | None = None
        self.up: set[str] = set()
        self.containers: dict[str, _Container] = {}
        self.attached: dict[str, dict[str, int]] = {}  # host -> network -> live containers
        self.net_hosts: dict[str, set[str]] = {n.name: set() for n in scenario.networks}
        self.networks: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.done = 0
        self.last = ""
        #: How late each step started (s): an earlier slow step delays the next ones.
        self.lags: list[float] = []
        self._lock = threading.RLock()  # containers start in parallel at t=0
        self._impaired_loss: dict[tuple[str, str] | None, float] = {}

    def now(self) -> float:
        """Seconds since scenario start (0 before it)."""
        return 0.0 if self.t0 is None else time.monotonic() - self.t0

    def _event(self, t: float, kind: str, **fields: Any) -> None:
        with self._lock:
            self.events.add(t, kind, **fields)

    def _skip(self, action: str, **info: Any) -> None:
        with self._lock:
            self.skipped.append({"t": self.now(), "action": action, **info})

    # -- set-up -------------------------------------------------------------------------

    def _seeds(self, host: str) -> list[str]:
        seeds = [m for m in self.managers if m != host and (m in self.up or self.t0 is None)]
        if not seeds:
            seeds = [h for h in sorted(self.up) if h != host][:3]
        return seeds

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
            )

    def boot(self, the_plan: Plan) -> None:
        """Start the initial agents (``boot`` decides when t=0 is) and the containers."""
        order = [m for m in self.managers if m in the_plan.initial_hosts]
        order += [h for h in the_plan.initial_hosts if h not in order]
        tb = self.testbed
        if self.scenario.boot == "formed":
            for h in order:
                tb.start_agent(h, self._seeds(h))
            tb.wait_ready(order)
            tb.wait_formed(order, timeout=FORM_TIMEOUT_S + 0.5 * len(order))
            self.create_networks()
            self.t0 = time.monotonic()
            for h in order:
                self.up.add(h)
                self._event(0.0, "node_start", subject=h)
        else:
            self.t0 = time.monotonic()
            for h in order:
                tb.start_agent(h, self._seeds(h))
                self.up.add(h)  # as in the simulator: later hosts join through it
            starts = tb.wait_ready(order)
            for h in order:
                self._event(max(0.0, starts[h] - self.t0), "node_start", subject=h)
            self.create_networks()
        self.start_containers(the_plan.containers)

    def start_containers(self, specs: list[ContainerSpec]) -> None:
        """Start the initial containers: hosts in parallel, each host's in order."""
        by_host: dict[str, list[ContainerSpec]] = defaultdict(list)
        for spec in specs:
            c = self.containers.setdefault(spec.name, _Container(spec.name, spec.host))
            if spec.host in self.up:
                by_host[spec.host].append(spec)
                continue
            # the host starts later and announces the container then
            for net in spec.networks:
                c.networks[net] = ""
                self._event(
                    self.now(), "container_attach", node=spec.host, subject=spec.name, network=net
                )

        def start(host: str) -> None:
            for spec in by_host[host]:
                try:
                    self._announce_new(self.containers[spec.name], list(spec.networks))
                except _STEP_ERRORS as exc:
                    self._skip("start", container=spec.name, reason=_why(exc))

        if by_host:
            with ThreadPoolExecutor(max_workers=min(16, len(by_host))) as pool:
                list(pool.map(start, list(by_host)))

    # -- containers ---------------------------------------------------------------------

    def _announce_new(self, c: _Container, networks: list[str]) -> None:
        """Create ``c`` in its host's agent on ``networks`` (a service task)."""
        self._start_task(c, networks, self.now(), announce=True)

    def _reannounce(self, c: _Container, t: float) -> None:
        """A restarted host's container comes back on all of its networks."""
        self._start_task(c, list(c.networks), t, announce=False)

    def _start_task(self, c: _Container, networks: list[str], t: float, *, announce: bool) -> None:
        answer = self.testbed.call(c.host, "task", container=c.name, networks=networks)
        with self._lock:
            c.live = True
            c.netns = answer.get("netns", "")
            for att in answer.get("networks", []):
                c.networks[att["network"]] = att["ip"]
            for net in networks:
                self._attached(c.host, net, t)
                if announce:
                    self._event(t, "container_attach", node=c.host, subject=c.name, network=net)

    def _attached(self, host: str, network: str, t: float) -> None:
        per_host = self.attached.setdefault(host, {})
        if host not in self.net_hosts.setdefault(network, set()):
            self.net_hosts[network].add(host)
            self.events.add(t, "net_attach", node=host, network=network)
        per_host[network] = per_host.get(network, 0) + 1

    def attach(self, name: str, host: str, network: str) -> None:
        c = self.containers.get(name)
        if c is not None and c.host != host:
            return self._skip("attach", container=name, reason=f"container lives on {c.host}")
        if c is not None and network in c.networks:
            return self._skip("attach", container=name, reason=f"already on {network}")
        if host not in self.up:
            c = self.containers.setdefault(name, _Container(name, host))
            c.networks[network] = ""
            self._event(self.now(), "container_attach", node=host, subject=name, network=network)
            return None
        if c is None or not c.live:
            c = c or _Container(name, host)
            self._announce_new(c, [network])
            self.containers[name] = c
            return None
        t = self.now()
        att = self.testbed.call(host, "connect", container=name, network=network)
        c.networks[network] = att["ip"]
        self._attached(host, network, t)
        self._event(t, "container_attach", node=host, subject=name, network=network)
        return None

    def detach(self, name: str, network: str | None) -> None:
        c = self.containers.get(name)
        if c is None:
            return self._skip("detach", container=name, reason="no such container")
        for net in [network] if network else list(c.networks):
            if net not in c.networks:
                self._skip("detach", container=name, reason=f"not on {net}")
                continue
            if c.host in self.up and c.live:
                self.testbed.call(c.host, "disconnect", container=name, network=net)
            del c.networks[net]
            t = self.now()
            self._event(t, "container_detach", node=c.host, subject=name, network=net)
            if c.host not in self.up or not c.live:
                continue  # nothing to tell; the host's entries died with it
            per_host = self.attached[c.host]
            per_host[net] -= 1
            if per_host[net] == 0:
                self.net_hosts[net].discard(c.host)
                self._event(t, "net_detach", node=c.host, network=net)
        if not c.networks:
            del self.containers[name]
        return None

    def rotate_keys(self) -> None:
        """Rotate the network keys at the manager, then have every running agent fetch
        the new ring at once, so each rotation finishes everywhere before the next."""
        if not any(n["encrypted"] for n in self.networks):
            return self._skip("rotate_keys", reason="no encrypted network")
        tb = self.testbed
        t = self.now()
        ring, answers = tb.rotate_keys(sorted(h for h in self.up if h in tb.running()))
        late = [h for h, a in answers.items() if a["generation"] != ring["generation"]]
        self._event(
            t,
            "rotate_keys",
            detail={
                "generation": ring["generation"],
                "primary": ring["primary"],
                "hosts": len(answers),
                "took_s": round(self.now() - t, 3),
                "late": late,
            },
        )
        return None

    # -- hosts ----------------------------------------------------------------------------

    def start_host(self, host: str, kind: str) -> None:
        """Start (join) or restart ``host``'s agent, then bring its containers back."""
        tb = self.testbed
        tb.underlay.impairments.restore_links(host)
        if host in tb.agents:
            tb.wait_exit(host, timeout=5.0)  # a leaving agent may still be finishing
        tb.start_agent(host, self._seeds(host))
        started = tb.wait_ready([host])[host]
        assert self.t0 is not None
        t = max(0.0, started - self.t0)
        self.up.add(host)
        self._event(t, kind, subject=host)
        if host == tb.manager_host:
            self._restore_manager()
        for c in list(self.containers.values()):
            if c.host == host and c.networks:
                try:
                    self._reannounce(c, self.now())
                except _STEP_ERRORS as exc:
                    self._skip(kind, container=c.name, reason=_why(exc))

    def _restore_manager(self) -> None:
        """A restarted manager starts empty: re-create the networks and re-register the
        addresses that containers on running hosts still hold, so none is handed out
        twice. (Managers are not replicated yet; see docs/agent.md, Limits.)"""
        self.create_networks()
        for c in self.containers.values():
            if not c.live or c.host not in self.up:
                continue
            for net, ip in c.networks.items():
                if ip:
                    self.testbed.manager_call(
                        "allocate", network=net, endpoint=c.name, ip=ip, standalone=False,
                        host=c.host,
                    )  # fmt: skip

    def crash(self, host: str) -> None:
        if host not in self.up:
            return self._skip("crash", host=host, reason="host is not running")
        t = self.now()
        self.testbed.kill_agent(host)
        self.underlay.impairments.crash_links(host)
        self._host_gone(host, "node_crash", t)
        return None

    def leave(self, host: str) -> None:
        if host not in self.up:
            return self._skip("leave", host=host, reason="host is not running")
        t = self.now()
        self.testbed.call(host, "leave")
        self._host_gone(host, "node_leave", t)
        return None

    def _host_gone(self, host: str, kind: str, t: float) -> None:
        self.up.discard(host)
        self.attached.pop(host, None)
        for hosts in self.net_hosts.values():
            hosts.discard(host)
        for c in self.containers.values():
            if c.host == host:
                c.live, c.netns = False, ""
        self._event(t, kind, subject=host)

    # -- the timeline ---------------------------------------------------------------------

    def apply(self, step: Step) -> None:
        """Apply one step; refusals and unreachable agents skip it with the reason."""
        self.last = f"{step.at:.1f}s {step.action}"
        self.lags.append(max(0.0, self.now() - step.at))
        self._event(self.now(), "scenario", op=step.action, detail=step.describe())
        try:
            self._apply(step)
        except UnsupportedImpairment as exc:
            self._skip(step.action, reason=str(exc))
        except _STEP_ERRORS as exc:
            self._skip(step.action, **_step_subject(step), reason=_why(exc))
        self.done += 1

    def _apply(self, step: Step) -> None:
        p = step.params
        a = step.action
        imp = self.underlay.impairments
        link = tuple(p["link"]) if p.get("link") else None
        if a == "loss":
            imp.loss(p["percent"], link)
            self._impaired_loss[link] = p["percent"]
        elif a == "delay":
            imp.delay(p["ms"], p.get("jitter_ms", 0.0), link)
        elif a == "rate":
            imp.rate(p["mbps"], link)
        elif a == "clear":
            self._clear(p.get("only"), link)
        elif a == "partition":
            groups = [list(g) for g in p["groups"]]
            if p.get("rest"):
                listed = {h for g in groups for h in g}
                groups.append([h for h in self.topology.hosts if h not in listed])
            t = self.now()
            imp.partition(groups)
            self._event(t, "partition", detail={"groups": groups})
        elif a == "heal":
            t = self.now()
            imp.heal()
            self._event(t, "heal")
        elif a == "crash":
            self.crash(p["host"])
        elif a in ("restart", "join"):
            if p["host"] in self.up:
                self._skip(a, host=p["host"], reason="host is running")
            else:
                self.start_host(p["host"], f"node_{a}")
        elif a == "leave":
            self.leave(p["host"])
        elif a == "attach":
            self.attach(p["container"], p["host"], p["network"])
        elif a == "detach":
            self.detach(p["container"], p.get("network"))
        elif a == "rotate_keys":
            self.rotate_keys()
        else:  # pragma: no cover - the schema admits no other action
            raise ValueError(f"unknown action {a!r}")

    def _clear(self, only: str | None, link: tuple[str, str] | None) -> None:
        imp = self.underlay.impairments
        if only == "loss":
            imp.loss(0.0, link)
            self._impaired_loss.pop(link, None)
        elif only == "delay":
            imp.clear_delay(link)
        else:
            imp.clear(link)
            kept = {k: v for k, v in self._impaired_loss.items() if link is not None and k != link}
            self._impaired_loss = kept
            if only == "rate":  # clear() also removed loss: put back what still applies
                for where, percent in list(self._impaired_loss.items()):
                    imp.loss(percent, where)

    # -- measurement ----------------------------------------------------------------------

    def endpoints(self) -> list[Endpoint]:
        """The containers as the probes see them now."""
        return [
            Endpoint(
                name=c.name,
                host=c.host,
                netns=c.netns if c.live else "",
                ips={n: ip for n, ip in c.networks.items() if ip},
                up=c.host in self.up and c.live,
            )
            for c in self.containers.values()
        ]


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _step_subject(step: Step) -> dict[str, Any]:
    return {k: step.params[k] for k in ("host", "container") if k in step.params}


# --- running the timeline ------------------------------------------------------------------


def play(
    world: EmuWorld,
    steps: list[Step],
    duration: float,
    tick: Callable[[], None] | None = None,
) -> None:
    """Apply ``steps`` at their times, then wait until ``duration``; ``tick`` refreshes
    the display while waiting."""
    for step in steps:
        _sleep_until(world, step.at, tick)
        world.apply(step)
        if tick is not None:
            tick()
    _sleep_until(world, duration, tick)


def _sleep_until(world: EmuWorld, t: float, tick: Callable[[], None] | None) -> None:
    while True:
        left = t - world.now()
        if left <= 0:
            return
        time.sleep(min(left, 0.2))
        if tick is not None:
            tick()


@contextmanager
def _display(world: EmuWorld, name: str, duration: float, total: int, on: bool) -> Iterator[Any]:
    """A live progress bar: scenario time, steps done, last step, skips."""
    if not on:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.1f}/{task.total:.0f} s"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task(f"emu {name}", total=duration, info="")

        def tick() -> None:
            info = f"steps {world.done}/{total}  skipped {len(world.skipped)}  up {len(world.up)}"
            if world.last:
                info += f"  last: {world.last}"
            bar.update(task, completed=min(duration, world.now()), info=info)

        yield tick


# --- the entry point --------------------------------------------------------------------


def sealed_control_plane(scenario: Scenario) -> bool:
    """Whether the run seals gossip and the manager channel (see ``gossip_encryption``)."""
    if scenario.gossip_encryption is not None:
        return scenario.gossip_encryption
    return any(n.encrypted for n in scenario.networks)


def _protocol_args(scenario: Scenario) -> list[str]:
    """The scenario's protocol overrides, passed to every agent."""
    data = scenario.protocol.model_dump()
    if not data["membership"] and not data["tables"]:
        return []
    return ["--protocol-json", json.dumps(data, sort_keys=True)]


def run_emulation(
    scenario: Scenario,
    out: Path,
    *,
    seed: int | None = None,
    progress: bool = True,
    overwrite: bool = True,
    plots: bool = True,
    throughput_seconds: float = THROUGHPUT_SECONDS,
    agent_args: tuple[str, ...] = (),
) -> str:
    """Emulate ``scenario`` on Mininet with real agents; write its results folder.

    Returns the final status (``complete`` or ``interrupted``); a failure writes the
    folder with status ``failed`` and raises ``RuntimeError``. Everything started is
    torn down in every case.
    """
    require_emulation()
    from overlaysim.emu.capabilities import probe

    seed = scenario.seed if seed is None else seed
    the_plan = plan(scenario, seed)
    mconf, tconf = configs(scenario.profile, **scenario.protocol.model_dump())
    topology = scenario.resolved_topology
    manifest = base_manifest(
        name=scenario.name,
        backend="emu",
        seed=seed,
        scenario=scenario.resolved(),
        capabilities={k: dataclasses.asdict(v) for k, v in probe().items()},
        nodes=len(topology.hosts),
        protocol={"membership": dataclasses.asdict(mconf), "tables": dataclasses.asdict(tconf)},
    )
    writer = ResultsWriter(out, manifest, overwrite=overwrite)
    shutil.rmtree(writer.path / AGENT_LOGS, ignore_errors=True)  # a previous run's
    started = _wallclock()
    status, error = "complete", None
    world: EmuWorld | None = None
    result: Collected | None = None
    reach_rows: list[dict[str, Any]] = []
    tp_rows: list[dict[str, Any]] = []
    t_end = 0.0
    extra: dict[str, Any] = {}
    try:
        with underlay_session(topology, seed=seed) as underlay:
            testbed = Testbed(
                underlay,
                managers=list(scenario.managers or topology.hosts[:1]),
                profile=scenario.profile,
                seed=seed,
                agent_args=[*agent_args, *_protocol_args(scenario)],
                cluster_key=os.urandom(32) if sealed_control_plane(scenario) else None,
            )
            extra["encryption"] = {
                "control_plane": "sealed (AES-256-GCM, key made for the run)"
                if testbed.cluster_key
                else "clear",
                "data_path": "user-space ESP-in-UDP (AES-GCM-128, rfc4106), UDP 4500"
                if any(n.encrypted for n in scenario.networks)
                else "none",
            }
            world = EmuWorld(scenario, seed, testbed)
            extra["managers"] = {"serving": testbed.manager_host, "seeds": world.managers}
            try:
                try:
                    t_boot = time.monotonic()
                    world.boot(the_plan)
                    extra["boot_s"] = time.monotonic() - t_boot
                    total = len(the_plan.steps)
                    sampler = _sampler(world, scenario, seed)
                    try:
                        with _display(
                            world, scenario.name, scenario.duration, total, progress
                        ) as tick:
                            play(world, the_plan.steps, float(scenario.duration), tick)
                    finally:
                        sampled = sampler.stop() if sampler is not None else []
                    t_end = world.now()
                    reach_rows, tp_rows = _measure(world, scenario, seed, throughput_seconds)
                    reach_rows = sampled + reach_rows
                except KeyboardInterrupt:
                    status = "interrupted"
                except Exception as exc:
                    status, error = "failed", _why(exc)
                if world.t0 is not None and status != "complete":
                    t_end = world.now()
                extra["agent_rss_kib"] = testbed.rss_kib()
            finally:
                with signals_deferred():  # agents stop, logs are read
                    extra["agents_killed_at_stop"] = testbed.stop()
                    extra["teardown_errors"] = testbed.errors
                    if world.t0 is not None:
                        result = collect(world.events, testbed.logs(), t0=world.t0, t_end=t_end)
                    testbed.remove_files(keep_logs_in=writer.path / AGENT_LOGS)
            extra["delay"] = underlay.impairments.delay_report()
            extra["underlay"] = underlay.describe()
    except KeyboardInterrupt:
        status = "interrupted" if status != "failed" else status
    except Exception as exc:  # build failures, collection errors
        if status == "complete" or error is None:
            status, error = "failed", _why(exc)
    extra.update(
        started=started,
        ended=_wallclock(),
        networks=world.networks if world else [],
        step_lag_s=_lag_summary(world.lags if world else []),
        mechanisms=extra.get("underlay", {}).get("mechanisms", {}),
    )
    _write(writer, scenario, seed, world, result, reach_rows, tp_rows, t_end, status, error, extra,
           plots)  # fmt: skip
    if status == "failed":
        raise RuntimeError(f"emulation failed: {error} (partial results in {out})")
    return status


def _sampler(world: EmuWorld, scenario: Scenario, seed: int) -> ProbeSampler | None:
    """Reachability and RTT every ``measure.probe_interval`` while the timeline plays."""
    if not scenario.measure.probes:
        return None
    sampler = ProbeSampler(
        world.underlay, world.endpoints, world.now, scenario.measure.probe_interval, seed
    )
    sampler.start()
    return sampler


def _measure(
    world: EmuWorld, scenario: Scenario, seed: int, seconds: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Reachability matrix and throughput pairs, measured now."""
    endpoints = world.endpoints()
    t = world.now()
    reach = (
        reachability(world.underlay, endpoints, t, max_pairs=MAX_PROBE_PAIRS, seed=seed)
        if scenario.measure.probes
        else []
    )
    by_name = {e.name: e for e in endpoints}
    tp = [
        throughput(world.underlay, by_name.get(a), by_name.get(b), seconds)
        for a, b in scenario.measure.throughput
    ]
    for row, (a, b) in zip(tp, scenario.measure.throughput, strict=True):
        row["src"], row["dst"] = a, b
    return reach, tp


def _write(
    writer: ResultsWriter,
    scenario: Scenario,
    seed: int,
    world: EmuWorld | None,
    result: Collected | None,
    reach_rows: list[dict[str, Any]],
    tp_rows: list[dict[str, Any]],
    t_end: float,
    status: str,
    error: str | None,
    extra: dict[str, Any],
    plots: bool,
) -> None:
    """Tables, metrics.json (the simulator's keys), plots, then the final manifest."""
    from overlaysim.metrics.finalize import metrics_for
    from overlaysim.metrics.results import load_run

    events = result.events if result else (world.events.rows if world else [])
    writer.write_table("events", events)
    writer.write_table("convergence", result.convergence if result else [])
    writer.write_table("traffic", result.traffic if result else [])
    writer.write_table("traffic_kinds", result.traffic_kinds if result else [])
    writer.write_table("reachability", reach_rows)
    writer.write_table("throughput", tp_rows)
    nodes = len(scenario.resolved_topology.hosts)
    metrics = metrics_for(load_run(writer.path), duration_s=t_end, nodes=nodes)
    sent = result.msgs_sent if result else 0
    recv = result.msgs_recv if result else 0
    # Over the agents' logs in the window: "lost" includes messages still in flight
    # at either end of it and messages sent to hosts that were down.
    metrics["messages"] = {"sent": sent, "delivered": recv, "lost": max(0, sent - recv)}
    metrics["skipped_steps"] = world.skipped if world else []
    writer.write_metrics(metrics)
    if plots and status != "failed":
        from overlaysim.report.plots import write_plots

        write_plots(load_run(writer.path), writer.plots_dir)
    writer.finish(status, error, extra)  # type: ignore[arg-type]


def _lag_summary(lags: list[float]) -> dict[str, float | int | None]:
    if not lags:
        return {"steps": 0, "mean": None, "max": None}
    return {"steps": len(lags), "mean": sum(lags) / len(lags), "max": max(lags)}


def _wallclock() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
