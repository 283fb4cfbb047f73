"""The fidelity guard: folding measured lag, recording it, and warning when overloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from overlaysim.emu.collect import collect
from overlaysim.metrics.atomic import json_bytes
from overlaysim.metrics.finalize import Outcome, finalize, metrics_for
from overlaysim.metrics.lag import (
    METRIC,
    OVERLOAD_THRESHOLD_S,
    AgentOp,
    StepLag,
    TimerLate,
    lag_report,
    lag_warnings,
    step_summary,
    timer_summary,
)
from overlaysim.metrics.manifest import base_manifest
from overlaysim.metrics.records import EventLog
from overlaysim.metrics.results import ResultsWriter, load_run
from overlaysim.report.summary import print_summary, summary_rows

# --- the fold ------------------------------------------------------------------------------


def test_step_summary_keeps_every_step_and_its_percentiles() -> None:
    steps = [StepLag(float(i), "attach", 0.01 * i) for i in range(100)]
    steps.append(StepLag(100.0, "crash", 2.0))
    s = step_summary(steps)
    assert s["count"] == 101
    assert s["max_s"] == 2.0
    assert s["p50_s"] == pytest.approx(0.5)
    assert s["p99_s"] == pytest.approx(0.99)  # one outlier in 101 moves the max, not the p99
    assert s["per_step"][-1] == {"at": 100.0, "action": "crash", "lag_s": 2.0}
    assert [r["action"] for r in s["per_step"]].count("attach") == 100


def test_step_summary_of_no_steps_is_null_not_zero() -> None:
    s = step_summary([])
    assert s["count"] == 0 and s["max_s"] is None and s["p99_s"] is None and s["per_step"] == []


def test_timer_summary_worst_per_agent_and_per_second() -> None:
    lines = [
        TimerLate(1.0, "h1", (0.001, 0.002)),
        TimerLate(1.4, "h2", (0.3,)),
        TimerLate(2.0, "h1", (0.05, 0.0)),
        TimerLate(2.5, "h2", ()),  # a line with nothing listed counts no fire
    ]
    s = timer_summary(lines)
    assert s["fires"] == 5 and s["agents"] == 2
    assert s["max_s"] == 0.3 and s["p50_s"] == 0.002
    assert s["per_agent_max_s"] == {"h1": 0.05, "h2": 0.3}
    assert s["per_second_max_s"] == [[1, 0.3], [2, 0.05]]


def test_overload_is_step_lag_max_or_timer_p99_above_the_threshold() -> None:
    ok_steps = [StepLag(1.0, "crash", 0.1)]
    late_steps = [StepLag(1.0, "crash", 0.1), StepLag(2.0, "attach", OVERLOAD_THRESHOLD_S + 0.2)]
    # one timer in 200 very late: the max is high but the 99th percentile is not
    blip = [TimerLate(1.0, "h1", (0.001,) * 199 + (3.0,))]
    starved = [TimerLate(1.0, "h1", (0.9,) * 10)]
    assert lag_report(ok_steps, blip)["overloaded"] is False
    assert lag_report(late_steps, blip)["overloaded"] is True
    assert lag_report(ok_steps, starved)["overloaded"] is True
    assert lag_report(ok_steps, [])["timers"]["fires"] == 0  # no lines: nothing measured


# A service scale-down paced 0.5 s apart: h6's detach of web.6 took 1.05 s, so the two
# pieces after it started late while the agents' timers kept their time.
_PIECES = [
    StepLag(35.0, "service_scale", 0.0003),
    StepLag(35.5, "service_scale", 0.005),
    StepLag(36.0, "service_scale", 0.66),
    StepLag(36.5, "service_scale", 0.95),
]
_OPS = [
    AgentOp(35.0, "h7", "disconnect", "web.7", "app", 0.15),
    AgentOp(35.505, "h6", "disconnect", "web.6", "app", 1.05),
    AgentOp(36.66, "h5", "disconnect", "web.5", "app", 0.79),
    AgentOp(37.45, "h4", "disconnect", "web.4", "app", 0.26),
    AgentOp(10.0, "h1", "task", "web.1", "app", 0.9),  # slow, but long before: no step waited
]
_ON_TIME = [TimerLate(36.0, "h6", (0.004, 0.012))]


def test_a_slow_agent_operation_is_named_as_the_cause_of_step_lag() -> None:
    report = lag_report(_PIECES, _ON_TIME, ops=_OPS, budget_s=0.5)
    assert report["overloaded"] is True  # the steps were late: the numbers are shifted
    held = report["steps"]["held_by"]
    assert (held["host"], held["container"], held["took_s"]) == ("h6", "web.6", 1.05)
    assert (held["step_at"], held["step_lag_s"]) == (36.5, 0.95)
    ops = report["ops"]
    assert ops["count"] == 5 and ops["budget_s"] == 0.5 and ops["slow_count"] == 3
    assert [o["container"] for o in ops["slow"]] == ["web.6", "web.1", "web.5"]
    (warning,) = lag_warnings({METRIC: report})
    assert "the agent on h6 took 1.05 s to detach web.6 (app) at 35.51 s" in warning
    assert "longer than service_timing.task_interval (0.5 s)" in warning
    assert "timers were on time" in warning and "could not keep up" not in warning


def test_a_busy_machine_is_still_called_overloaded() -> None:
    # the same late steps with the agents' timers late too: the machine did not keep up
    starved = [TimerLate(36.0, "h6", (0.9,) * 10)]
    (warning,) = lag_warnings({METRIC: lag_report(_PIECES, starved, ops=_OPS, budget_s=0.5)})
    assert "could not keep up" in warning and "web.6" in warning
    # late steps that waited for no timed operation: the old sentence, no operation named
    (plain,) = lag_warnings({METRIC: lag_report(_PIECES, _ON_TIME, ops=[], budget_s=0.5)})
    assert "could not keep up" in plain and "agent on" not in plain
    # runs written before operations were timed read as before
    old = lag_report(_PIECES, _ON_TIME)
    assert "ops" not in old and "held_by" not in old["steps"]
    assert "could not keep up" in lag_warnings({METRIC: old})[0]


def test_operations_within_the_interval_are_not_slow_and_steps_on_time_name_none() -> None:
    ok = [StepLag(35.0, "service_scale", 0.001), StepLag(35.5, "service_scale", 0.002)]
    fast = [AgentOp(35.0, "h7", "disconnect", "web.7", "app", 0.12)]
    report = lag_report(ok, _ON_TIME, ops=fast, budget_s=0.5)
    assert report["overloaded"] is False and report["ops"]["slow"] == []
    assert report["steps"]["held_by"] is None  # the late-most step waited for nothing
    assert lag_warnings({METRIC: report}) == []


def test_collect_keeps_timer_lines_in_the_window_in_seconds() -> None:
    t0 = 500.0
    logs = {
        "h1": [
            {"t": t0 - 1, "node": "h1", "kind": "timer_lag", "fires": 1, "late_ms": [9.0]},
            {"t": t0 + 2, "node": "h1", "kind": "timer_lag", "fires": 2, "late_ms": [1.5, 700.0]},
        ],
        "h2": [{"t": t0 + 1, "node": "h2", "kind": "timer_lag", "fires": 1, "late_ms": [0.0]}],
    }
    out = collect(EventLog(), logs, t0=t0, t_end=10.0)
    assert out.timer_late == [
        TimerLate(1.0, "h2", (0.0,)),
        TimerLate(2.0, "h1", (0.0015, 0.7)),
    ]
    assert out.events == []  # not an event, not traffic


# --- recorded through the one results writer ----------------------------------------------


def _folder(tmp_path: Path, lag: dict | None, backend: str = "emu") -> Path:
    out = tmp_path / backend
    writer = ResultsWriter(out, base_manifest(name="fid", backend=backend, seed=1, scenario={}))
    rows = [(0.0, "h1", "web", "c1", "add", 2, 0.4, 0.4, "converged")]
    finalize(
        writer,
        Outcome(status="complete", duration_s=10.0, tables={"convergence": rows}, lag=lag),
    )
    return out


OVERLOADED = lag_report(
    [StepLag(1.0, "attach", 0.02), StepLag(5.0, "crash", 1.7)],
    [TimerLate(3.0, "h1", (0.004, 0.8, 0.9)), TimerLate(6.0, "h2", (0.6,))],
)
KEPT_UP = lag_report([StepLag(1.0, "attach", 0.02)], [TimerLate(3.0, "h1", (0.004, 0.01))])


def test_lag_is_in_metrics_and_manifest_and_regenerates_byte_for_byte(tmp_path: Path) -> None:
    out = _folder(tmp_path, OVERLOADED)
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert metrics[METRIC] == manifest["outcome"][METRIC]
    assert metrics[METRIC]["steps"]["max_s"] == 1.7
    assert metrics[METRIC]["timers"]["max_s"] == 0.9
    assert metrics[METRIC]["overloaded"] is True
    assert json_bytes(metrics_for(out)) == (out / "metrics.json").read_bytes()


def test_a_run_without_measured_lag_writes_none(tmp_path: Path) -> None:
    out = _folder(tmp_path, None, backend="sim")
    assert METRIC not in json.loads((out / "metrics.json").read_text())
    assert METRIC not in json.loads((out / "manifest.json").read_text())["outcome"]
    assert json_bytes(metrics_for(out)) == (out / "metrics.json").read_bytes()


# --- the warning --------------------------------------------------------------------------


def _summary_text(folder: Path) -> str:
    console = Console(record=True, width=200)
    print_summary(load_run(folder), console)
    return console.export_text()


def test_summary_warns_when_the_emulator_was_overloaded(tmp_path: Path) -> None:
    text = _summary_text(_folder(tmp_path, OVERLOADED))
    assert "warning:" in text and "the emulator was overloaded" in text
    assert "not trustworthy" in text
    assert "1.70 s late" in text  # the step that was late
    assert "0.5 s threshold" in text


def test_summary_shows_lag_but_no_warning_when_it_kept_up(tmp_path: Path) -> None:
    folder = _folder(tmp_path, KEPT_UP)
    text = _summary_text(folder)
    assert "overloaded" not in text and "warning" not in text
    rows = {(s, m): v for s, m, v in summary_rows(load_run(folder).metrics or {})}
    assert rows[("fidelity", "step lag max / p99")] == "20 ms / 20 ms"
    assert rows[("fidelity", "timer lateness p99 / max")] == "9.9 ms / 10 ms"


def test_simulator_summary_has_no_lag_row_and_no_warning(tmp_path: Path) -> None:
    folder = _folder(tmp_path, None, backend="sim")
    assert "lag" not in _summary_text(folder)
    assert lag_warnings(load_run(folder).metrics or {}) == []


def test_html_report_carries_the_overload_warning(tmp_path: Path) -> None:
    from overlaysim.report.html import render_html

    page = render_html(load_run(_folder(tmp_path, OVERLOADED)), plots={})
    assert 'class="warning"' in page and "the emulator was overloaded" in page
    calm = render_html(load_run(_folder(tmp_path / "calm", KEPT_UP)), plots={})
    assert 'class="warning"' not in calm
