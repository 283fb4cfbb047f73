"""Run a scenario on Mininet with real agents and write its results folder.

The emulation plays the same :func:`~overlaysim.scenario.timeline.plan` as the
simulator, on a Mininet underlay (:mod:`overlaysim.emu.net`) with one ``overlayd`` per
host (:mod:`overlaysim.emu.testbed`), and writes the same results folder through the
same metrics code. :class:`EmuWorld` is the one :class:`~overlaysim.world.world.World`
(the simulator uses it too) over an :class:`~overlaysim.emu.backend.EmuBackend`: it
keeps the ground truth and records it in an
:class:`~overlaysim.metrics.records.EventLog`; the agents log what they saw. After the timeline come the data-plane measurements (:mod:`overlaysim.emu.probes`),
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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overlaysim.emu.backend import EmuBackend, why
from overlaysim.emu.collect import Collected, collect
from overlaysim.emu.lbprobe import lb_probe
from overlaysim.emu.net import Underlay, underlay_session
from overlaysim.emu.probes import (
    MAX_PROBE_PAIRS,
    Endpoint,
    full_size_ping,
    ip_fragment_counters,
    reachability,
    throughput,
)
from overlaysim.emu.sampler import ProbeSampler
from overlaysim.emu.setup import require_emulation
from overlaysim.emu.signals import signals_deferred
from overlaysim.emu.testbed import Testbed
from overlaysim.errors import RunFailed
from overlaysim.metrics.finalize import Outcome, finalize
from overlaysim.metrics.lag import StepLag, lag_report, step_summary
from overlaysim.metrics.results import FinalStatus, ResultsWriter
from overlaysim.scenario.schema import Scenario
from overlaysim.scenario.steps import Step
from overlaysim.scenario.timeline import plan
from overlaysim.world.manifest import run_manifest
from overlaysim.world.world import World

#: Seconds of iperf3 per direction of a throughput pair (overlay, then underlay).
THROUGHPUT_SECONDS = 5.0
#: Subfolder of the results folder that receives a copy of every agent's log.
AGENT_LOGS = "agent-logs"


class EmuWorld(World):
    """The world on a live testbed; applies plan steps as they come due.

    Control operations go to the agents first and the ground truth is recorded once
    they succeed, stamped with the time the operation started (an attach precedes the
    agent's commit) or, for detaches, ended (the delete commit precedes the detach).
    """

    def __init__(self, scenario: Scenario, seed: int, testbed: Testbed) -> None:
        backend = EmuBackend(scenario, testbed)
        super().__init__(scenario, backend)
        backend.bind(self)
        self.emu = backend
        self.seed = seed
        self.testbed = testbed
        self.underlay: Underlay = testbed.underlay

    def start_containers(self, specs: list[Any]) -> None:
        t = time.monotonic()
        super().start_containers(specs)
        #: Wall seconds the initial containers took (set-up's last phase).
        self.containers_s = time.monotonic() - t

    @property
    def t0(self) -> float | None:
        """Monotonic time of scenario start (None before boot)."""
        return self.emu.t0

    @property
    def networks(self) -> list[dict[str, Any]]:
        """The networks as the manager made them."""
        return self.emu.networks

    def endpoints(self) -> list[Endpoint]:
        """The containers as the probes see them now."""
        return [
            Endpoint(
                name=c.name,
                host=c.host,
                netns=c.sandbox if c.live else "",
                ips={n: ip for n, ip in c.networks.items() if ip},
                up=c.host in self.up and c.live,
            )
            for c in list(self.containers.values())  # hosts' lanes add and remove
        ]


# --- running the timeline ------------------------------------------------------------------


def play(
    world: EmuWorld,
    steps: list[Step],
    duration: float,
    tick: Callable[[], None] | None = None,
) -> None:
    """Apply ``steps`` at their times, then wait until ``duration``; ``tick`` refreshes
    the display while waiting."""
    for at, work in world.timeline(steps):
        if at > duration:
            break  # later pieces of the last steps: the run is over (as in the simulator)
        _sleep_until(world, at, tick)
        work()
        if tick is not None:
            tick()
    world.settle()  # the hosts' lanes: their last steps done, their errors raised here
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
    limit = data.pop("esp_seq_limit")
    args = [] if limit is None else ["--esp-seq-limit", str(limit)]
    if not data["membership"] and not data["tables"] and not data["extensions"]:
        if data["variant"] == "overlaysim":
            return args
    return ["--protocol-json", json.dumps(data, sort_keys=True), *args]


def run_emulation(
    scenario: Scenario,
    out: Path,
    *,
    seed: int | None = None,
    progress: bool = True,
    overwrite: bool = True,
    throughput_seconds: float = THROUGHPUT_SECONDS,
    agent_args: tuple[str, ...] = (),
) -> str:
    """Emulate ``scenario`` on Mininet with real agents; write its results folder.

    Returns the final status (``complete`` or ``interrupted``); a failure writes the
    folder with status ``failed`` and raises :class:`~overlaysim.errors.RunFailed`. No plots. Everything started is
    torn down in every case.
    """
    require_emulation()
    from overlaysim.emu.capabilities import probe

    seed = scenario.seed if seed is None else seed
    the_plan = plan(scenario, seed)
    topology = scenario.resolved_topology
    manifest = run_manifest(
        scenario,
        seed,
        backend="emu",
        capabilities={k: dataclasses.asdict(v) for k, v in probe().items()},
    )
    writer = ResultsWriter(out, manifest, overwrite=overwrite)
    shutil.rmtree(writer.path / AGENT_LOGS, ignore_errors=True)  # a previous run's
    started = _wallclock()
    status, error = "complete", None
    world: EmuWorld | None = None
    result: Collected | None = None
    reach_rows: list[dict[str, Any]] = []
    tp_rows: list[dict[str, Any]] = []
    lb_rows: list[dict[str, Any]] | None = None
    t_end = 0.0
    extra: dict[str, Any] = {}
    try:
        with underlay_session(topology, seed=seed, mtu=scenario.underlay_mtu or 1500) as underlay:
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
                    extra["boot_containers_s"] = getattr(world, "containers_s", 0.0)
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
                    lb_rows = _lb_probe(world, scenario, extra)
                    extra["full_size_pings"] = _full_size_pings(world, scenario)
                    extra["underlay_ip"] = ip_fragment_counters(underlay, topology.hosts)
                    reach_rows = sampled + reach_rows
                except KeyboardInterrupt:
                    status = "interrupted"
                except Exception as exc:
                    status, error = "failed", why(exc)
                if world.t0 is not None and status != "complete":
                    t_end = world.now()
                extra["agent_rss_kib"] = testbed.rss_kib()
            finally:
                with signals_deferred():  # agents stop, logs are read
                    extra["agents_killed_at_stop"] = testbed.stop()
                    # after the agents stopped (no new one can start), a host's lane
                    # still busy fails fast; its errors join the teardown's
                    lane_errors = world.close()
                    extra["teardown_errors"] = testbed.errors + lane_errors
                    extra["host_starts"] = [dataclasses.asdict(s) for s in world.starts]
                    if world.t0 is not None:
                        result = collect(world.events, testbed.logs(), t0=world.t0, t_end=t_end)
                    testbed.remove_files(keep_logs_in=writer.path / AGENT_LOGS)
            extra["delay"] = underlay.impairments.delay_report()
            extra["underlay"] = underlay.describe()
    except KeyboardInterrupt:
        status = "interrupted" if status != "failed" else status
    except Exception as exc:  # build failures, collection errors
        if status == "complete" or error is None:
            status, error = "failed", why(exc)
    extra.update(
        started=started,
        ended=_wallclock(),
        networks=world.networks if world else [],
        step_lag_s=_lag_summary(world.lags if world else []),
        mechanisms=extra.get("underlay", {}).get("mechanisms", {}),
    )
    outcome = _outcome(world, result, reach_rows, tp_rows, t_end, status, error, extra, lb_rows)
    finalize(writer, outcome)
    if status == "failed":
        raise RunFailed(f"emulation failed: {error} (partial results in {out})")
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


def _lb_probe(
    world: EmuWorld, scenario: Scenario, extra: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """``measure.lb_probe``'s rows (None when not asked for or it cannot run: the reason
    goes to the manifest's ``lb_probe``)."""
    probe = scenario.measure.lb_probe
    if probe is None:
        return None
    svc = world.services.by_name.get(probe.service)
    by_name = {e.name: e for e in world.endpoints()}
    client = by_name.get(probe.client)
    if svc is None or svc.vip is None:
        extra["lb_probe"] = f"not run: service {probe.service} has no VIP at the end"
        return None
    if client is None or not client.netns or not client.up:
        extra["lb_probe"] = f"not run: container {probe.client} is not live at the end"
        return None
    if svc.network not in client.ips:
        extra["lb_probe"] = f"not run: {probe.client} is not on network {svc.network}"
        return None
    tasks = [by_name[name] for name in sorted(world.services.live_tasks(svc))]
    rows, reason = lb_probe(
        world.underlay,
        service=svc.name,
        vip=svc.vip,
        client=client,
        tasks=tasks,
        connections=probe.connections,
        port=probe.port,
        t=world.now(),
    )
    extra["lb_probe"] = reason or "ran"
    return rows


def _full_size_pings(world: EmuWorld, scenario: Scenario) -> list[dict[str, Any]]:
    """Echoes of the container MTU's full size, one set per ``measure.throughput`` pair."""
    by_name = {e.name: e for e in world.endpoints()}
    return [
        full_size_ping(world.underlay, by_name.get(a), by_name.get(b))
        for a, b in scenario.measure.throughput
    ]


def _outcome(
    world: EmuWorld | None,
    result: Collected | None,
    reach_rows: list[dict[str, Any]],
    tp_rows: list[dict[str, Any]],
    t_end: float,
    status: FinalStatus,
    error: str | None,
    extra: dict[str, Any],
    lb_rows: list[dict[str, Any]] | None = None,
) -> Outcome:
    """The run's tables (from the collected logs), counters and skipped steps."""
    sent = result.msgs_sent if result else 0
    recv = result.msgs_recv if result else 0
    tables: dict[str, Any] = {
        "events": result.events if result else (world.events.rows if world else []),
        "convergence": result.convergence if result else [],
        "traffic": result.traffic if result else [],
        "traffic_kinds": result.traffic_kinds if result else [],
        "reachability": reach_rows,
        "throughput": tp_rows,
    }
    if result is not None and result.dns is not None:
        tables["dns"] = result.dns
    if lb_rows:
        tables["lb_probe"] = lb_rows
    if result is not None and result.dns_note:
        extra = {**extra, "dns": result.dns_note}
    return Outcome(
        status=status,
        error=error,
        duration_s=t_end,
        tables=tables,
        # Over the agents' logs in the window: "lost" includes messages still in flight
        # at either end of it and messages sent to hosts that were down.
        counters={"messages": {"sent": sent, "delivered": recv, "lost": max(0, sent - recv)}},
        skipped_steps=world.skipped if world else [],
        extra=extra,
        lag=_lag_report(world, result),
    )


def _lag_summary(lags: list[StepLag]) -> dict[str, float | int | None]:
    """The manifest's short ``step_lag_s`` (the full report is ``emulator_lag``)."""
    s = step_summary(lags)
    return {"steps": s["count"], "mean": s["mean_s"], "p99": s["p99_s"], "max": s["max_s"]}


def _lag_report(world: EmuWorld | None, result: Collected | None) -> dict[str, Any] | None:
    """Step lag and agents' timer lateness, or None when the timeline never started."""
    if world is None or world.t0 is None:
        return None
    scenario = world.scenario
    budget = scenario.timing.task_interval if scenario.has_service_steps else None
    return lag_report(
        world.lags, result.timer_late if result else [], ops=world.emu.agent_ops(), budget_s=budget
    )


def _wallclock() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
