"""`overlaysim compare` and the emulator's lag: the overload warning, the lag rows, and
``--since`` (timing samples from events at or after a scenario time), on synthetic folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from overlaysim.cli import main
from overlaysim.metrics.finalize import Outcome, finalize
from overlaysim.metrics.lag import StepLag, TimerLate, lag_report
from overlaysim.metrics.manifest import base_manifest
from overlaysim.metrics.records import EventLog
from overlaysim.metrics.results import ResultsWriter, load_run
from overlaysim.report.compare import CompareError, compare_runs
from overlaysim.report.compare_output import comparison_dict, comparison_table

OVERLOADED = lag_report(
    [StepLag(1.0, "attach", 0.1), StepLag(30.0, "crash", 2.4)],
    [TimerLate(3.0, "h1", (0.01, 0.02))],
)
KEPT_UP = lag_report([StepLag(1.0, "attach", 0.1)], [TimerLate(3.0, "h1", (0.01, 0.02))])


def _folder(
    out: Path, backend: str, lag: dict[str, Any] | None, burst: float, steady: float
) -> Path:
    """10 commits at t=0 taking ``burst`` s (a boot burst), 10 from t=20 taking ``steady``
    s (plus a small spread), and two crashes."""
    rows = []
    for i in range(10):
        x = burst + 0.01 * i
        rows.append((0.0, "h1", "app", f"b{i}", "add", 3, x, x, "converged"))
    for i in range(10):
        t, x = 20.0 + i, steady + 0.01 * i
        rows.append((t, "h1", "app", f"s{i}", "add", 3, t + x, x, "converged"))
    log = EventLog()
    for h in ("h1", "h2", "h3"):
        log.add(0.0, "node_start", subject=h)
    writer = ResultsWriter(
        out, base_manifest(name="fid", backend=backend, seed=1, scenario={}, nodes=3)
    )
    finalize(
        writer,
        Outcome(
            status="complete",
            duration_s=40.0,
            tables={"events": log.rows, "convergence": rows},
            lag=lag,
        ),
    )
    return out


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    return {
        # the emulator's boot burst is slow (2 s vs 0.2 s); afterwards both agree
        "sim": _folder(tmp_path / "sim", "sim", None, burst=0.2, steady=0.5),
        "emu": _folder(tmp_path / "emu", "emu", OVERLOADED, burst=2.0, steady=0.5),
        "calm": _folder(tmp_path / "calm", "emu", KEPT_UP, burst=2.0, steady=0.5),
    }


def test_compare_warns_that_an_overloaded_emulator_makes_its_side_untrustworthy(folders):
    c = compare_runs(load_run(folders["sim"]), load_run(folders["emu"]))
    lag = [w for w in c.warnings if "overloaded" in w]
    assert len(lag) == 1 and lag[0].startswith("run B: the emulator was overloaded")
    assert "2.40 s late" in lag[0] and "not trustworthy" in lag[0]
    calm = compare_runs(load_run(folders["sim"]), load_run(folders["calm"]))
    assert not [w for w in calm.warnings if "overloaded" in w]


def test_compare_shows_each_sides_lag_and_says_the_simulator_measures_none(folders):
    c = compare_runs(load_run(folders["sim"]), load_run(folders["emu"]))
    d = comparison_dict(c)
    assert d["emulator_lag"]["a"] is None  # the simulator has no wall clock: not measured
    b = d["emulator_lag"]["b"]
    assert b["steps_max_s"] == 2.4 and b["timers_p99_s"] == pytest.approx(0.0199, abs=1e-4)
    assert b["overloaded"] is True
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(comparison_table(c))
    text = console.export_text()
    assert "step lag max" in text and "not measured / 2.4 s" in text
    assert "overloaded" in text


def test_since_keeps_only_events_from_that_time(folders):
    a, b = load_run(folders["sim"]), load_run(folders["emu"])
    whole = {d.metric: d for d in compare_runs(a, b).distributions}
    assert len(whole["convergence.add"].a) == 20
    assert whole["convergence.add"].verdict == "differ"  # the burst
    later = compare_runs(a, b, since=20.0)
    by = {d.metric: d for d in later.distributions}
    assert len(by["convergence.add"].a) == len(by["convergence.add"].b) == 10
    assert by["convergence.add"].verdict == "agree"  # same steady-state samples
    assert later.since == 20.0 and comparison_dict(later)["since_s"] == 20.0
    assert "from t = 20 s" in later.overall_line()
    with pytest.raises(CompareError, match="since"):
        compare_runs(a, b, since=-1.0)


def test_cli_since_and_lag_warning(folders, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        ["compare", str(folders["sim"]), str(folders["emu"]), "--since", "20", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "the emulator was overloaded" in printed
    saved = json.loads((out / "compare.json").read_text())
    assert saved["since_s"] == 20.0 and saved["emulator_lag"]["b"]["overloaded"] is True


def test_commits_that_never_converged_are_compared_as_a_scalar(tmp_path, folders):
    # a commit without a latency is in no KS sample: the scalar row is what shows it
    out = tmp_path / "lost"
    rows = [
        (20.0 + i, "h1", "app", f"s{i}", "add", 3, 20.5 + i, 0.5, "converged") for i in range(5)
    ]
    rows.append((30.0, "h1", "app", "x", "add", 3, None, None, "unconverged"))
    writer = ResultsWriter(out, base_manifest(name="fid", backend="sim", seed=1, scenario={}))
    finalize(writer, Outcome(status="complete", duration_s=40.0, tables={"convergence": rows}))
    c = compare_runs(load_run(out), load_run(folders["emu"]))
    scal = {s.metric: s for s in c.scalars}["endpoint_convergence_s.unconverged"]
    assert (scal.a, scal.b, scal.ratio) == (1.0, 0.0, 0.0)
