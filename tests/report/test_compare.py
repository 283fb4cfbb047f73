"""`overlaysim compare`: KS verdicts per metric, scalar ratios, files written, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from overlaysim.cli import main
from overlaysim.metrics.results import load_run
from overlaysim.report.compare import (
    MIN_SAMPLES,
    CompareError,
    compare_runs,
    ks_verdict,
    load_comparable,
)
from overlaysim.report.compare_output import default_out_dir, write_comparison
from overlaysim.scenario.loader import load_scenario
from overlaysim.sim.runner import run_simulation

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"


def _sim(out: Path, *overrides: str) -> Path:
    sc = load_scenario(QUICKSTART, list(overrides))
    assert run_simulation(sc, out, progress=False) == "complete"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    return {
        "a": _sim(root / "lan-a"),
        "a2": _sim(root / "lan-b"),  # same scenario and seed: identical distributions
        "wan": _sim(root / "wan", "profile=wan"),
    }


def test_same_seed_runs_agree_on_every_tested_metric(runs):
    c = compare_runs(load_run(runs["a"]), load_run(runs["a2"]))
    by = {d.metric: d for d in c.distributions}
    assert set(by) >= {
        "convergence.all",
        "convergence.add",
        "convergence.delete",
        "detection.first_suspect",
        "detection.all_dead",
        "join.visibility",
    }
    tested = [d for d in c.distributions if d.tested]
    assert by["convergence.all"] in tested  # quickstart has 20+ converged commits
    for d in tested:
        assert d.verdict == "agree" and d.statistic == 0.0 and d.p_value == 1.0, d
    # Quickstart crashes one host: one detection time per side, too few for a test.
    assert by["detection.first_suspect"].verdict == "too few samples"
    assert c.overall == "agree"
    assert c.overall_line().startswith("overall: agree")
    assert all(s.ratio == 1.0 for s in c.scalars if s.a is not None)
    assert c.warnings == ()


def test_samples_match_the_runs_metrics(runs):
    run = load_run(runs["a"])
    c = compare_runs(run, run)
    by = {d.metric: d for d in c.distributions}
    ec, fd = run.metrics["endpoint_convergence_s"], run.metrics["failure_detection_s"]
    assert len(by["convergence.all"].a) == ec["count"]
    assert np.median(by["convergence.all"].a) == pytest.approx(ec["p50"])
    assert len(by["convergence.add"].a) == ec["by_op"]["add"]["count"]
    assert by["detection.first_suspect"].a == pytest.approx((fd["first_suspect_p50"],))
    assert by["detection.all_dead"].a == pytest.approx((fd["all_dead_p50"],))
    scal = {s.metric: s for s in c.scalars}
    bpn = run.metrics["overhead"]["bytes_per_node_per_s"]
    assert scal["overhead.bytes_per_node_per_s"].a == pytest.approx(bpn)
    assert scal["false_positives"].a == run.metrics["false_positives"]


def test_wan_profile_makes_convergence_differ(runs):
    a, b = load_run(runs["a"]), load_run(runs["wan"])
    c = compare_runs(a, b, alpha=0.05)
    conv = next(d for d in c.distributions if d.metric == "convergence.all")
    assert conv.verdict == "differ" and conv.p_value < 0.05
    assert np.median(conv.b) > np.median(conv.a)  # WAN gossips less often
    assert c.overall == "differ"
    assert "convergence, all ops" in c.differing
    scal = {s.metric: s for s in c.scalars}
    s = scal["overhead.bytes_per_node_per_s"]
    assert s.ratio == pytest.approx(s.b / s.a)
    # A stricter level can turn the same evidence into agreement.
    strict = compare_runs(a, b, alpha=conv.p_value / 2)
    assert next(d for d in strict.distributions if d.metric == "convergence.all").verdict == (
        "agree"
    )


def test_ks_verdict_thresholds():
    rng = np.random.default_rng(1)
    few = np.arange(MIN_SAMPLES - 1, dtype=float)
    assert ks_verdict(few, np.arange(50.0), 0.05) == (None, None, "too few samples")
    x, y = rng.normal(0, 1, 200), rng.normal(0, 1, 200)
    assert ks_verdict(x, y, 0.05)[2] == "agree"
    assert ks_verdict(x, y + 3, 0.05)[2] == "differ"


def test_writes_json_and_figure(runs, tmp_path):
    c = compare_runs(load_run(runs["a"]), load_run(runs["wan"]))
    paths = write_comparison(c, tmp_path / "out")
    assert [p.name for p in paths] == ["compare.json", "compare.png"]
    data = json.loads(paths[0].read_text())
    assert data["overall"]["verdict"] == "differ"
    assert data["alpha"] == 0.05
    conv = next(d for d in data["distributions"] if d["metric"] == "convergence.all")
    assert conv["verdict"] == "differ"
    assert conv["a"]["n"] == len(conv["a"]["samples"]) >= MIN_SAMPLES
    assert conv["a"]["median"] == pytest.approx(np.median(conv["a"]["samples"]))
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].stat().st_size > 10_000  # a drawn figure, not an empty canvas


def test_default_out_is_inside_run_b():
    assert default_out_dir("results/sim-run", "results/emu-run") == Path(
        "results/emu-run/compare-with-sim-run"
    )


def test_missing_and_incomplete_folders_are_clear_errors(runs, tmp_path):
    with pytest.raises(CompareError, match="no such folder"):
        load_comparable(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="not a results folder"):
        load_comparable(tmp_path / "empty")
    partial = tmp_path / "partial"
    partial.mkdir()
    manifest = json.loads((runs["a"] / "manifest.json").read_text())
    manifest["status"] = "running"
    (partial / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CompareError, match=r"incomplete.*status running.*events\.csv"):
        load_comparable(partial)
    with pytest.raises(CompareError, match="alpha"):
        compare_runs(load_run(runs["a"]), load_run(runs["a"]), alpha=1.5)


def test_interrupted_run_is_compared_with_a_warning(runs, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(runs["a"], b)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["status"] = "interrupted"
    (b / "manifest.json").write_text(json.dumps(manifest))
    c = compare_runs(load_comparable(runs["a"]), load_comparable(b))
    assert any("interrupted" in w for w in c.warnings)


def test_cli_compare(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(runs["a"]), str(runs["wan"]), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "overall: differ" in text and "too few" in text
    assert (out / "compare.json").is_file() and (out / "compare.png").is_file()
    assert main(["compare", str(runs["a"]), str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
