"""Figures' content choices and the text summary."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from rich.console import Console

from overlaysim.metrics.finalize import finalize_run
from overlaysim.metrics.manifest import base_manifest
from overlaysim.metrics.records import NOT_MEASURED_BY_SIM, EventLog
from overlaysim.metrics.results import PLOT_FILES, ResultsWriter, Run, load_run
from overlaysim.metrics.tables import frame
from overlaysim.report.plots import (
    MAX_SUBJECT_LINES,
    draw_convergence_cdf,
    draw_membership_timeline,
    draw_overhead,
    write_plots,
)
from overlaysim.report.summary import print_summary, summary_rows, summary_table


def make_run(metrics=None, status="complete", **tables) -> Run:
    names = ("events", "convergence", "traffic", "traffic_kinds", "reachability", "throughput")
    return Run(
        path=Path("run"),
        manifest={"name": "unit", "backend": "sim", "seed": 3, "status": status, "error": None},
        metrics=metrics,
        **{n: frame(n, tables.get(n)) for n in names},
    )


def conv(latencies, op):
    return [(0.0, "a", "n", f"{op}{i}", op, 2, x, x, "converged") for i, x in enumerate(latencies)]


def test_convergence_cdf_one_line_per_op_and_log_scale_when_wide():
    fig = Figure()
    run = make_run(convergence=conv([0.001, 0.01, 2.0], "add") + conv([0.5], "delete"))
    draw_convergence_cdf(run, fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 2 and labels[0].startswith("add: n=3") and labels[1].startswith("delete")
    assert "(s" in ax.get_xlabel()


def test_convergence_cdf_linear_when_narrow():
    fig = Figure()
    draw_convergence_cdf(make_run(convergence=conv([0.2, 0.3, 0.5], "add")), fig)
    assert fig.axes[0].get_xscale() == "linear"


def test_membership_timeline_per_subject_or_summed():
    def run_with(subjects):
        log = EventLog()
        for i, x in enumerate(subjects):
            log.add(1.0 + i, "node_crash", subject=x)
            log.add(2.0 + i, "member_dead", node="obs", subject=x)
        log.rows.sort(key=lambda r: r[0])
        return make_run(events=log.rows)

    fig = Figure()
    draw_membership_timeline(run_with(["x1", "x2"]), fig)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["x1 dead", "x1 suspect", "x2 dead", "x2 suspect"]
    # crash markers are labelled
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "crash x1" in texts and "crash x2" in texts

    fig = Figure()
    many = [f"x{i}" for i in range(MAX_SUBJECT_LINES + 1)]
    draw_membership_timeline(run_with(many), fig)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["dead (all subjects)", "suspect (all subjects)"]
    dead_line = fig.axes[0].get_lines()[0]
    assert max(dead_line.get_ydata()) == len(many)  # one observer holds each subject dead


def test_overhead_mean_uses_all_nodes_including_silent_ones():
    traffic = [(0, "h1", 3000, 3, 0, 0), (1, "h1", 3000, 3, 0, 0)]
    fig = Figure()
    draw_overhead(make_run(metrics={"nodes": 3, "duration_s": 2.0}, traffic=traffic), fig)
    ax = fig.axes[0]
    mean, busiest = ax.patches[:2]  # stairs artists
    assert list(mean.get_data().values) == [1.0, 1.0]  # 3000 B / 3 nodes, in kB/s
    assert list(busiest.get_data().values) == [3.0, 3.0]
    assert "kB/s" in ax.get_ylabel()


def test_empty_run_still_draws_every_figure(tmp_path):
    paths = write_plots(make_run(), tmp_path)
    assert len(paths) == len(PLOT_FILES)
    assert all(p.stat().st_size > 1000 for p in paths)


METRICS = {
    "backend": "sim",
    "scenario": "unit",
    "seed": 3,
    "duration_s": 60.0,
    "nodes": 10,
    "endpoint_convergence_s": {"count": 5, "p50": 0.25, "p95": 1.5, "p99": 2.0, "max": 2.5, "unconverged": 1},
    "failure_detection_s": {"count": 1, "first_suspect_mean": 1.2, "all_dead_p50": 6.5, "all_dead_max": 6.5, "undetected": 0},
    "join_visibility_s": {"count": 0, "p50": None, "max": None},
    "false_positives": 2,
    "false_positives_partitioned": 7,
    "overhead": {"bytes_per_node_per_s": 2500.0, "msgs_per_node_per_s": 12.0},
    "throughput": [
        {"src": "c1", "dst": "c2", "proto": "tcp", "overlay_bps": None, "underlay_bps": None, "ratio": None, "reason": NOT_MEASURED_BY_SIM},
        {"src": "c1", "dst": "c3", "proto": "udp", "overlay_bps": 9e8, "underlay_bps": 1e9, "ratio": 0.9, "reason": None},
    ],
    "reachability": {"expected_pairs": 4, "reachable_pairs": 3, "unexpected_reachable": 0},
}  # fmt: skip


def render(obj) -> str:
    console = Console(record=True, width=120)
    console.print(obj)
    return console.export_text()


def test_summary_shows_the_key_numbers():
    rows = {(sec, what): value for sec, what, value in summary_rows(METRICS)}
    assert rows[("endpoints", "convergence p50 / p95 / p99")] == "250 ms / 1.5 s / 2 s"
    assert rows[("endpoints", "commits converged / never")] == "5 / 1"
    assert rows[("membership", "crashes: all dead p50 / max")] == "6.5 s / 6.5 s"
    assert rows[("membership", "join visibility p50 / max")] == "— / —"
    assert rows[("membership", "false positives (in partitions)")] == "2 (7)"
    assert rows[("overhead", "sent per node per second")] == "2.5 kB, 12 msg"
    assert rows[("throughput", "tcp c1→c2")] == NOT_MEASURED_BY_SIM
    assert rows[("throughput", "udp c1→c3")] == "900 Mbit/s overlay, 1 Gbit/s underlay (90%)"
    text = render(summary_table(METRICS))
    assert "250 ms / 1.5 s / 2 s" in text and "3 / 4" in text


def test_print_summary_flags_incomplete_runs():
    console = Console(record=True, width=120)
    print_summary(make_run(metrics=METRICS, status="interrupted"), console)
    text = console.export_text()
    assert "status interrupted" in text and "run status: interrupted" in text
    console = Console(record=True, width=120)
    print_summary(make_run(metrics=None), console)
    assert "no metrics.json" in console.export_text()


def test_summary_of_a_loaded_folder(tmp_path):
    w = ResultsWriter(tmp_path / "r", base_manifest(name="t", backend="sim", seed=1, scenario={}))
    finalize_run(w, {"convergence": conv([0.5, 1.5], "add")}, duration_s=5, nodes=2)
    text = render(summary_table(load_run(tmp_path / "r")))
    assert "t — status complete" in text and "2 / 0" in text
