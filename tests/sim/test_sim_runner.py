"""End-to-end simulator runs: determinism, metrics keys, interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overlaysim.metrics.atomic import json_bytes
from overlaysim.metrics.finalize import metrics_for
from overlaysim.metrics.results import load_run
from overlaysim.report.plots import write_plots
from overlaysim.scenario.loader import load_scenario
from overlaysim.sim import runner as sim_runner
from overlaysim.sim.runner import run_simulation

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"

METRIC_KEYS = {
    "backend",
    "scenario",
    "seed",
    "duration_s",
    "nodes",
    "endpoint_convergence_s",
    "failure_detection_s",
    "join_visibility_s",
    "false_positives",
    "overhead",
    "throughput",
    "reachability",
}


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_byte_identical_results(tmp_path: Path) -> None:
    sc = load_scenario(QUICKSTART)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_simulation(sc, a, progress=False) == "complete"
    assert run_simulation(load_scenario(QUICKSTART), b, progress=False) == "complete"
    for folder in (a, b):
        write_plots(load_run(folder), folder / "plots")
    fa, fb = _files(a), _files(b)
    assert set(fa) == set(fb)
    assert any(name.startswith("plots/") for name in fa), "plots were not written"
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs between two runs with the same seed"


def test_other_seed_changes_the_run(tmp_path: Path) -> None:
    sc = load_scenario(QUICKSTART)
    run_simulation(sc, tmp_path / "a", progress=False)
    run_simulation(sc, tmp_path / "b", seed=8, progress=False)
    ea = (tmp_path / "a" / "events.csv").read_bytes()
    eb = (tmp_path / "b" / "events.csv").read_bytes()
    assert ea != eb


def test_quickstart_metrics_are_measured(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    run_simulation(load_scenario(QUICKSTART), out, progress=False)
    run = load_run(out)
    m = run.metrics
    assert METRIC_KEYS <= set(m)
    assert run.manifest["status"] == "complete"
    assert m["backend"] == "sim" and m["nodes"] == 5
    # h4 crashes at 20 s: every live node must declare it dead, within Lifeguard bounds.
    fd = m["failure_detection_s"]
    assert fd["count"] == 1
    assert 0 < fd["first_suspect_mean"] < 5
    assert fd["all_dead_max"] is not None and fd["all_dead_max"] < 30
    # Endpoints converge; the final reachability matrix is complete with no leak between networks.
    ec = m["endpoint_convergence_s"]
    assert ec["count"] > 10 and ec["p99"] < 5
    r = m["reachability"]
    assert r["expected_pairs"] > 0
    assert r["reachable_pairs"] == r["expected_pairs"]
    assert r["unexpected_reachable"] == 0
    assert m["overhead"]["bytes_per_node_per_s"] > 0
    tp = m["throughput"]
    assert tp and tp[0]["overlay_bps"] is None
    events = run.events
    dead_h4 = events[(events.kind == "member_dead") & (events.subject == "h4")]
    assert set(dead_h4.node) == {"h1", "h2", "h3", "h5"}


def test_interrupted_run_is_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(env, duration, progress, name):
        env.run(until=duration / 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(sim_runner, "_run_env", boom)
    out = tmp_path / "int"
    status = run_simulation(load_scenario(QUICKSTART), out, progress=False)
    assert status == "interrupted"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    m = json.loads((out / "metrics.json").read_text())
    assert m["duration_s"] == pytest.approx(30.0)
    assert not list(out.glob("*.tmp*")), "temporary files left behind"


def test_metrics_for_the_folder_regenerates_metrics_json_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    run_simulation(load_scenario(QUICKSTART), out, progress=False)
    written = (out / "metrics.json").read_bytes()
    again = metrics_for(out)
    assert json_bytes(again) == written
    assert again["messages"]["sent"] > 0 and "skipped_steps" in again  # from the manifest


def test_frozen_heap_freezes_each_full_collections_survivors_and_gives_all_back() -> None:
    """During a run, what survives a full collection leaves the collector's generations
    (later full collections walk only newer objects); garbage is still collected; after
    the run nothing stays frozen."""
    import gc
    import weakref

    from overlaysim.sim.runner import frozen_heap

    class Cycle:
        __slots__ = ("me", "__weakref__")

    before = gc.get_threshold()
    with frozen_heap():
        frozen = gc.get_freeze_count()
        kept = [[i] for i in range(1000)]  # long-lived state made during the run
        garbage = [Cycle() for _ in range(1000)]
        for g in garbage:
            g.me = g  # a cycle: only the collector can free it
        refs = [weakref.ref(g) for g in garbage]
        del garbage, g
        gc.collect(2)
        assert all(r() is None for r in refs)
        assert gc.get_freeze_count() >= frozen + len(kept)
        # Young cycles are still collected on their own, without an explicit collect.
        more = [Cycle() for _ in range(100)]
        for g in more:
            g.me = g
        refs = [weakref.ref(g) for g in more]
        del more, g
        churn = [[i] for i in range(50_000)]  # allocations: young collections come due
        assert all(r() is None for r in refs)
        del churn
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
