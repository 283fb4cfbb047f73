"""The emulation backend end to end: a scenario on Mininet with real agents.

The merge of agent logs with the runner's ground truth (``collect``) is checked first
on synthetic input (no root). Then, as root: the shipped quickstart scenario runs on
Mininet and writes the simulator's results folder (same metrics keys), a failing run
and an interrupted run are marked so and leave nothing behind. The quickstart plays
60 s of scenario (marked ``slow``, about 80 s); the rest takes about 10 s.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import link_names, netns_names, processes_holding, processes_mentioning

from overlaysim.emu import runner as emu_runner
from overlaysim.emu.collect import collect
from overlaysim.emu.rootns import list_nft_tables
from overlaysim.metrics.atomic import json_bytes
from overlaysim.metrics.finalize import metrics_for
from overlaysim.metrics.records import EventLog
from overlaysim.metrics.results import Run, load_run
from overlaysim.scenario.loader import load_scenario
from overlaysim.scenario.steps import Step

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"


# --- collect: logs + ground truth -> tables (no root) ---------------------------------


def _line(t: float, node: str, kind: str, **fields: Any) -> dict[str, Any]:
    return {"t": t, "node": node, "kind": kind, **fields}


def test_collect_uses_ground_truth_targets_and_ignores_cleanup_deletes() -> None:
    t0 = 1000.0
    truth = EventLog()
    for h in ("h1", "h2", "h3"):
        truth.add(0.0, "node_start", subject=h)
    for h in ("h1", "h2", "h3"):
        truth.add(0.1, "net_attach", node=h, network="web")
    truth.add(5.0, "node_crash", subject="h3")
    logs = {
        "h1": [
            _line(t0 - 1.0, "h1", "member_join", subject="h2"),  # before t=0: dropped
            _line(t0 + 0.2, "h1", "entry_commit", network="web", key="c1", op="add"),
            _line(t0 + 6.0, "h1", "entry_commit", network="web", key="c1", op="delete"),
            _line(
                t0 + 2.0,
                "h1",
                "traffic",
                bytes_sent=100,
                msgs_sent=2,
                bytes_recv=50,
                msgs_recv=1,
                by_type={"ping": [100, 2, 50, 1]},
            ),  # fmt: skip
        ],
        "h2": [
            _line(t0 + 0.5, "h2", "entry_programmed", network="web", key="c1", op="add"),
            _line(t0 + 6.4, "h2", "entry_programmed", network="web", key="c1", op="delete"),
            # dead-node cleanup of h3's endpoint: no commit, so nothing to close
            _line(t0 + 7.0, "h2", "entry_programmed", network="web", key="c3", op="delete"),
            _line(t0 + 8.0, "h2", "member_dead", subject="h3"),
            _line(t0 + 99.0, "h2", "member_alive", subject="h3"),  # after t_end: dropped
        ],
        "h3": [
            _line(t0 + 0.9, "h3", "entry_programmed", network="web", key="c1", op="add"),
        ],
    }
    out = collect(truth, logs, t0=t0, t_end=20.0)
    assert [(r["op"], r["targets"], r["status"]) for r in out.convergence] == [
        ("add", 3, "converged"),
        ("delete", 2, "converged"),  # h3 crashed before the delete: not a target
    ]
    add, delete = out.convergence
    assert add["latency_s"] == pytest.approx(0.7)  # the last target, h3 at 0.9
    assert delete["latency_s"] == pytest.approx(0.4)
    kinds = [(row[2], row[3]) for row in out.events if row[2].startswith("member_")]
    assert kinds == [("member_dead", "h3")]
    commits = [row for row in out.events if row[2] == "entry_commit"]
    assert [(r[1], r[5], r[6]) for r in commits] == [("h1", "c1", "add"), ("h1", "c1", "delete")]
    assert out.traffic == [
        {"t": 2, "node": "h1", "bytes_sent": 100, "msgs_sent": 2, "bytes_recv": 50, "msgs_recv": 1}
    ]
    assert out.traffic_kinds[0]["kind"] == "ping"


def test_collect_stops_waiting_for_a_host_that_left_the_network() -> None:
    truth = EventLog()
    for h in ("h1", "h2"):
        truth.add(0.0, "node_start", subject=h)
        truth.add(0.0, "net_attach", node=h, network="web")
    truth.add(3.0, "net_detach", node="h2", network="web")
    logs = {"h1": [_line(2.0, "h1", "entry_commit", network="web", key="c1", op="add")]}
    out = collect(truth, logs, t0=0.0, t_end=10.0)
    (row,) = out.convergence
    # h2 never programmed it, but stopped counting when it detached
    assert row["status"] == "converged" and row["targets"] == 2


# --- on Mininet (root) ----------------------------------------------------------------


def _assert_nothing_left(run: Path) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    underlay = manifest.get("underlay") or {}
    prefix, run_id = underlay.get("prefix"), underlay.get("run_id")
    assert prefix and run_id, "the manifest names the underlay it built"
    assert not [n for n in netns_names() if n.startswith(prefix)]
    assert not [n for n in link_names() if n.startswith(prefix)]
    assert not [n for _f, n in list_nft_tables() if n == f"osim_{prefix[-2:]}"]
    assert not processes_mentioning(f"/run/overlaysim/{run_id}/", "iperf3 -s")
    assert not processes_holding(Path("/run/overlaysim", run_id))  # forked agents too
    assert not Path("/run/overlaysim", run_id).exists()
    # containers' resolv.conf folders and UTS namespace files are named after their netns
    from overlaysim.agent.resolvconf import NETNS_ETC
    from overlaysim.agent.uts import UTS_DIR

    for root in (NETNS_ETC, UTS_DIR):
        left = sorted(p.name for p in root.glob(f"{prefix}-*")) if root.is_dir() else []
        assert not left, f"left in {root}: {left}"


@pytest.mark.emu
@pytest.mark.slow  # 60 s of scenario plus set-up and measurements: about 80 s
def test_quickstart_writes_the_simulators_results_folder(emu: None, tmp_path: Path) -> None:
    from overlaysim.sim.runner import run_simulation

    scenario = load_scenario(QUICKSTART)
    status = emu_runner.run_emulation(scenario, tmp_path / "emu", progress=False)
    assert status == "complete"
    run_simulation(scenario, tmp_path / "sim", progress=False)
    emu_run, sim_run = load_run(tmp_path / "emu"), load_run(tmp_path / "sim")
    em, sm = emu_run.metrics, sim_run.metrics
    assert em is not None and sm is not None
    assert em["backend"] == "emu" and emu_run.manifest["backend"] == "emu"
    assert emu_run.status == "complete" and emu_run.manifest["error"] is None
    # same metrics.json keys as the simulator (data-dependent maps excluded), plus the
    # emulator's measured lag, which the simulator has no wall clock to measure
    assert set(em) == set(sm) | {"emulator_lag"}
    assert "emulator_lag" not in sm
    for section in ("endpoint_convergence_s", "failure_detection_s", "join_visibility_s",
                    "overhead", "reachability", "messages"):  # fmt: skip
        assert set(em[section]) == set(sm[section]), section
    assert [set(r) for r in em["throughput"]] == [set(r) for r in sm["throughput"]]
    assert em["skipped_steps"] == []

    reach = em["reachability"]
    assert reach["expected_pairs"] > 0
    assert reach["reachable_pairs"] == reach["expected_pairs"]
    assert reach["unexpected_reachable"] == 0
    assert reach["pairs"] > reach["expected_pairs"]  # c1/c3 share no network: probed too
    (tp,) = em["throughput"]
    assert (tp["src"], tp["dst"]) == ("c1", "c2")
    assert tp["overlay_bps"] > 0 and tp["underlay_bps"] > 0
    assert tp["ratio"] == pytest.approx(tp["overlay_bps"] / tp["underlay_bps"])

    ev = emu_run.events
    for kind, host in (("node_crash", "h4"), ("node_restart", "h4")):
        assert ((ev["kind"] == kind) & (ev["subject"] == host)).sum() == 1, kind
    assert (ev["kind"] == "partition").sum() == 1 and (ev["kind"] == "heal").sum() == 1
    assert (ev["kind"] == "member_suspect").any()  # the crash was noticed by agents
    conv = emu_run.convergence
    assert {"c1", "c2", "c3", "c9"} <= set(conv["key"])
    assert conv["key"].str.startswith("churn").any()
    assert em["endpoint_convergence_s"]["count"] > 0
    assert em["endpoint_convergence_s"]["p50"] < 5.0
    assert len(emu_run.traffic) > 0 and em["overhead"]["msgs_total"] > 0

    m = emu_run.manifest
    assert {n["name"] for n in m["networks"]} == {"web", "db"}
    assert all(n["vni"] >= 4096 for n in m["networks"])
    assert "loss" in m["mechanisms"] and "delay" in m["mechanisms"]
    assert m["capabilities"]["vxlan"]["ok"] is True
    assert m["started"] <= m["ended"]
    assert sorted(p.name for p in (tmp_path / "emu" / "agent-logs").iterdir()) == [
        f"h{i}.jsonl" for i in range(1, 6)
    ]
    # the runner writes no plots (the CLI draws them after): the folder alone is enough
    from overlaysim.report.plots import write_plots

    assert not (tmp_path / "emu" / "plots").exists()
    drawn = {p.name for p in write_plots(load_run(tmp_path / "emu"), tmp_path / "emu" / "plots")}
    assert "overhead.png" in drawn
    _assert_nothing_left(tmp_path / "emu")


def _interrupted_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    events: str,
    at: str,
    before: Callable[[emu_runner.EmuWorld], None] | None = None,
) -> Run:
    """A 10 s quickstart with ``events`` (a YAML list), Ctrl-C'd when the world comes to
    the first ``at`` step (``before`` runs there first); the run must say so."""
    scenario = load_scenario(
        QUICKSTART, ["duration=10", "measure.throughput=[]", f"events={events}"]
    )
    real_apply = emu_runner.EmuWorld.apply

    def apply(self: emu_runner.EmuWorld, step: Step) -> None:
        if step.action == at:
            if before is not None:
                before(self)
            raise KeyboardInterrupt
        real_apply(self, step)

    monkeypatch.setattr(emu_runner.EmuWorld, "apply", apply)
    status = emu_runner.run_emulation(scenario, tmp_path / "run", progress=False)
    assert status == "interrupted"
    run = load_run(tmp_path / "run")
    assert run.status == "interrupted"
    return run


@pytest.mark.emu
def test_interrupted_run_is_marked_and_leaves_nothing_behind(
    emu: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _interrupted_run(
        tmp_path,
        monkeypatch,
        "[{at: 1, action: attach, container: c9, host: h5, network: web},"
        " {at: 3, action: crash, host: h4}, {at: 6, action: heal}]",
        at="crash",
    )
    assert run.metrics is not None and run.metrics["duration_s"] < 6
    ev = run.events
    assert not (ev["kind"] == "node_crash").any()
    assert ((ev["kind"] == "container_attach") & (ev["subject"] == "c9")).any()
    assert "c9" in set(run.convergence["key"])  # logs up to the interruption were collected
    assert len(run.reachability) == 0  # no measurements after an interruption
    _assert_nothing_left(tmp_path / "run")


@pytest.mark.emu
def test_ctrl_c_between_an_agents_fork_and_its_record_leaves_nothing_behind(
    emu: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fork server has forked h3's agent, but the Ctrl-C lands before the testbed
    entered it: no handle, yet neither the process nor its files may stay."""
    from overlaysim.emu.forkserver import ForkServer

    real_spawn = ForkServer.spawn
    forked: list[int] = []

    def spawn(self: ForkServer, ns_pid: int, argv: Any, stderr: Path, **kw: Any) -> Any:
        child = real_spawn(self, ns_pid, argv, stderr, **kw)
        forked.append(child.pid)
        if len(forked) == 3:
            raise KeyboardInterrupt
        return child

    monkeypatch.setattr(ForkServer, "spawn", spawn)
    scenario = load_scenario(QUICKSTART, ["duration=10", "measure.throughput=[]", "events=[]"])
    status = emu_runner.run_emulation(scenario, tmp_path / "run", progress=False)
    assert status == "interrupted" and len(forked) == 3
    assert not [pid for pid in forked if Path(f"/proc/{pid}").exists()]
    _assert_nothing_left(tmp_path / "run")


@pytest.mark.emu
def test_ctrl_c_while_a_restart_runs_on_its_lane_leaves_nothing_behind(
    emu: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = emu_runner.EmuBackend.start
    lanes_busy: list[bool] = []
    # On an idle machine the new agent can be up before the next step; hold the start
    # on its lane until the interruption so it is always under way when Ctrl-C comes
    # (it then runs on while the run tears down, as a real late restart would).
    gate = threading.Event()

    def start(self: emu_runner.EmuBackend, host: str, seeds: list[str]) -> float:
        gate.wait(10)
        return real_start(self, host, seeds)

    def at_heal(world: emu_runner.EmuWorld) -> None:  # the new agent on h4 is still starting
        lanes_busy.append(world.lanes.busy("h4"))
        gate.set()

    monkeypatch.setattr(emu_runner.EmuBackend, "start", start)
    _interrupted_run(
        tmp_path,
        monkeypatch,
        "[{at: 1, action: crash, host: h4}, {at: 2, action: restart, host: h4},"
        " {at: 2.05, action: attach, container: c9, host: h5, network: web},"
        " {at: 2.1, action: heal}]",
        at="heal",
        before=at_heal,
    )
    assert lanes_busy == [True]  # the interruption came while the restart was under way
    _assert_nothing_left(tmp_path / "run")  # no agent, namespace or record left


@pytest.mark.emu
def test_a_refused_network_fails_the_run_and_tears_down(emu: None, tmp_path: Path) -> None:
    scenario = load_scenario(
        QUICKSTART,
        # an encrypted network on a cluster whose control plane is not sealed: its keys
        # would have to travel in clear, so the manager refuses it
        [
            "duration=5",
            "events=[]",
            "measure.throughput=[]",
            "networks.1.encrypted=true",
            "gossip_encryption=false",
        ],
    )
    with pytest.raises(RuntimeError, match="EncryptionUnsupported"):
        emu_runner.run_emulation(scenario, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.status == "failed"
    assert "encrypted networks need an authenticated cluster" in run.manifest["error"]
    _assert_nothing_left(tmp_path / "run")


@pytest.mark.emu
def test_a_macvlan_attached_network_carries_the_probes_and_stays_isolated(
    emu: None, tmp_path: Path
) -> None:
    """One network plugged in as macvlans of its VXLAN device, the other as veth pairs:
    every expected pair reaches, no pair across the two networks does."""
    scenario = load_scenario(
        QUICKSTART,
        ["duration=6", "events=[]", "measure.throughput=[]", "networks.0.attachment=macvlan"],
    )
    status = emu_runner.run_emulation(scenario, tmp_path / "run", progress=False)
    assert status == "complete"
    run = load_run(tmp_path / "run")
    made = {n["name"]: n.get("attachment", "veth") for n in run.manifest["networks"]}
    assert sorted(made.values()) == ["macvlan", "veth"]
    assert run.metrics is not None
    reach = run.metrics["reachability"]
    assert reach["expected_pairs"] > 0 and reach["reachable_pairs"] == reach["expected_pairs"]
    assert reach["unexpected_reachable"] == 0
    _assert_nothing_left(tmp_path / "run")


@pytest.mark.emu
def test_join_boot_starts_the_clock_before_the_agents(emu: None, tmp_path: Path) -> None:
    scenario = load_scenario(
        QUICKSTART, ["boot=join", "duration=6", "events=[]", "measure.throughput=[]"]
    )
    status = emu_runner.run_emulation(scenario, tmp_path / "run", progress=False)
    assert status == "complete"
    run = load_run(tmp_path / "run")
    ev = run.events
    starts = ev[ev["kind"] == "node_start"]
    assert sorted(starts["subject"]) == [f"h{i}" for i in range(1, 6)]
    assert (starts["t"] > 0).all()  # each stamped with its agent's own start
    joins = ev[ev["kind"] == "member_join"]
    hosts = [f"h{i}" for i in range(1, 6)]
    # every agent saw every other one join, after t=0 (they all started after it)
    assert set(zip(joins["node"], joins["subject"], strict=True)) == {
        (a, b) for a in hosts for b in hosts if a != b
    }
    assert (joins["t"] > 0).all()
    assert run.metrics is not None
    reach = run.metrics["reachability"]
    assert reach["expected_pairs"] > 0 and reach["reachable_pairs"] == reach["expected_pairs"]
    _assert_nothing_left(tmp_path / "run")


@pytest.mark.emu
def test_timed_rate_ends_without_clearing_the_loss_and_metrics_regenerate(
    emu: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (both backends play one world): an untimed loss, then a timed rate on
    the same link; when the rate ends the loss stays. The folder's metrics.json is what
    ``metrics_for(folder)`` computes from its files, byte for byte."""
    scenario = load_scenario(
        QUICKSTART,
        [
            "duration=6",
            "measure.throughput=[]",
            "events=[{at: 1, action: loss, percent: 30, link: [h2, s1]},"
            " {at: 2, action: rate, mbps: 50, link: [h2, s1], duration: 2}]",
        ],
    )
    seen: list[tuple[str, int, int]] = []
    real_apply = emu_runner.EmuWorld.apply

    def apply(self: emu_runner.EmuWorld, step: Step) -> None:
        real_apply(self, step)
        imp = self.underlay.impairments
        seen.append((step.action, len(imp._extra_loss), len(imp._extra_rate)))

    monkeypatch.setattr(emu_runner.EmuWorld, "apply", apply)
    status = emu_runner.run_emulation(scenario, tmp_path / "run", progress=False)
    assert status == "complete"
    # the link's loss rule outlives the rate (one planned link, both of its ends)
    assert seen == [("loss", 1, 0), ("rate", 1, 1), ("clear", 1, 0)]
    run = load_run(tmp_path / "run")
    assert run.metrics is not None and run.metrics["skipped_steps"] == []
    assert (
        json_bytes(metrics_for(tmp_path / "run"))
        == (tmp_path / "run" / "metrics.json").read_bytes()
    )
    _assert_nothing_left(tmp_path / "run")


@pytest.mark.emu
def test_the_runner_measures_its_own_lag(emu: None, tmp_path: Path) -> None:
    """Step lag and the agents' timer lateness are measured, in metrics.json and the
    manifest, and metrics_for(folder) still regenerates metrics.json byte for byte."""
    scenario = load_scenario(
        QUICKSTART,
        [
            "duration=8",
            "measure.throughput=[]",
            "measure.probes=false",
            "events=[{at: 1, action: attach, container: c9, host: h5, network: web},"
            " {at: 3, action: crash, host: h4}, {at: 5, action: loss, percent: 5}]",
        ],
    )
    assert emu_runner.run_emulation(scenario, tmp_path / "run", progress=False) == "complete"
    run = load_run(tmp_path / "run")
    assert run.metrics is not None
    lag = run.metrics["emulator_lag"]
    assert lag == run.manifest["outcome"]["emulator_lag"]
    steps, timers = lag["steps"], lag["timers"]
    assert [(r["at"], r["action"]) for r in steps["per_step"]] == [
        (1.0, "attach"),
        (3.0, "crash"),
        (5.0, "loss"),
    ]
    assert steps["count"] == 3 and steps["max_s"] == max(r["lag_s"] for r in steps["per_step"])
    assert all(r["lag_s"] >= 0 for r in steps["per_step"])
    # five agents, gossip every 0.2 s for ~8 s: many firings, each measured
    assert timers["agents"] == 5 and timers["fires"] > 5 * 8
    assert 0 <= timers["p50_s"] <= timers["p99_s"] <= timers["max_s"]
    assert set(timers["per_agent_max_s"]) == {f"h{i}" for i in range(1, 6)}
    # the logs hold what the fold read: every listed lateness came from a timer_lag line
    logged = [
        json.loads(line)
        for f in sorted((tmp_path / "run" / "agent-logs").iterdir())
        for line in f.read_text().splitlines()
    ]
    late = [x for r in logged if r["kind"] == "timer_lag" for x in r["late_ms"]]
    assert len(late) >= timers["fires"]  # the window drops lines before t0 / after t_end
    assert max(late) / 1e3 >= timers["max_s"] - 1e-4
    assert lag["overloaded"] == (
        steps["max_s"] > lag["threshold_s"] or timers["p99_s"] > lag["threshold_s"]
    )
    assert run.manifest["step_lag_s"]["max"] == steps["max_s"]
    assert (
        json_bytes(metrics_for(tmp_path / "run"))
        == (tmp_path / "run" / "metrics.json").read_bytes()
    )
    _assert_nothing_left(tmp_path / "run")


@pytest.mark.emu
def test_lb_probe_counts_connections_per_task_through_the_vip(emu: None, tmp_path: Path) -> None:
    """``measure.lb_probe``: a client container opens 30 new TCP connections to a
    3-task service's VIP; each is answered by a task's hostname (its own UTS namespace),
    the counts per task land in metrics.json ``lb_spread`` and regenerate byte for byte,
    and the responders are gone afterwards."""
    scenario = load_scenario(
        QUICKSTART,
        [
            "duration=8",
            "events=[{at: 1, action: service_create, name: api, network: web, replicas: 3}]",
            "measure={probes: false, lb_probe: {service: api, client: c1, connections: 30}}",
        ],
    )
    status = emu_runner.run_emulation(scenario, tmp_path / "run", progress=False)
    assert status == "complete"
    run = load_run(tmp_path / "run")
    assert run.manifest.get("lb_probe") == "ran", run.manifest.get("lb_probe")
    spread = run.metrics["lb_spread"]
    assert spread["service"] == "api" and spread["connections"] == 30
    assert set(spread["per_task"]) == {"api.1", "api.2", "api.3"}
    assert spread["failed"] == 0 and spread["stray"] == {}
    assert sum(n > 0 for n in spread["per_task"].values()) >= 2  # per-connection balancing
    assert spread["p_uniform"] is not None
    assert (
        json_bytes(metrics_for(tmp_path / "run"))
        == (tmp_path / "run" / "metrics.json").read_bytes()
    )
    _assert_nothing_left(tmp_path / "run")
    assert not processes_mentioning("s.bind(('0.0.0.0', int(sys.argv[1])))")


@pytest.mark.emu
def test_a_boot_burst_has_the_same_commit_targets_on_both_backends(
    emu: None, tmp_path: Path
) -> None:
    """Five hosts, a container each on one network at t=0: every commit must reach all
    five hosts, simulated (attaches one after another at t=0) as emulated (attaches
    take wall time); docs/results.md, convergence.csv."""
    from overlaysim.sim.runner import run_simulation

    scenario = load_scenario(Path(__file__).parents[1] / "metrics" / "boot-burst.yaml")
    assert emu_runner.run_emulation(scenario, tmp_path / "emu", progress=False) == "complete"
    assert run_simulation(scenario, tmp_path / "sim", progress=False) == "complete"
    targets = {}
    for backend in ("sim", "emu"):
        conv = load_run(tmp_path / backend).convergence
        adds = conv[conv["op"] == "add"]
        targets[backend] = dict(zip(adds["key"], adds["targets"], strict=True))
    assert targets["sim"] == targets["emu"] == {f"c{i}": 5 for i in range(1, 6)}
    _assert_nothing_left(tmp_path / "emu")
