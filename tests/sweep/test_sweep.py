"""Sweeps: grid parsing, parallel runs, resume after interruption, Dask parity, index."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from overlaysim.cli import main
from overlaysim.sweep import (
    SweepError,
    build_index,
    expand_points,
    is_complete,
    parse_grid,
    plan_sweep,
    point_id,
    run_dir,
    run_sweep,
)

TINY = """\
name: tiny
seed: 1
duration: 12
profile: lan
topology: {generator: star, hosts: 4, link: {latency_ms: 0.5, bandwidth_mbps: 1000, loss_pct: 0}}
networks:
  - {name: web, subnet: 10.10.0.0/24, attachable: true}
containers:
  - {name: c1, host: h1, networks: [web]}
  - {name: c2, host: h2, networks: [web]}
events:
  - {at: 2, action: loss, percent: 5}
  - {at: 4, action: crash, host: h4}
"""
GRIDS = ("events.0.percent=0,10", "topology.hosts=4,6")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sc") / "tiny.yaml"
    path.write_text(TINY)
    return path


def _plan(scenario: Path, out: Path, seeds=SEEDS):
    return plan_sweep(scenario, [parse_grid(g) for g in GRIDS], seeds, out)


@pytest.fixture(scope="module")
def full(scenario: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh 2x2 grid x 2 seeds sweep on the process pool."""
    out = tmp_path_factory.mktemp("full")
    result = run_sweep(_plan(scenario, out), jobs=2, progress=False)
    assert (result.done, result.skipped, result.failed) == (8, 0, 0)
    return out


def _index(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "index.csv").drop(columns="path")


# ------------------------------------------------------------------------------ grids


def test_grid_values_are_yaml_and_commas_inside_brackets_stay():
    g = parse_grid("events=[],[{at: 1, action: heal}]")
    assert g.key == "events"
    assert g.values == ([], [{"at": 1, "action": "heal"}])
    g = parse_grid("profile=lan, wan")
    assert g.values == ("lan", "wan") and g.texts == ("lan", "wan")
    assert parse_grid("events.0.percent=0,2.5").values == (0, 2.5)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("topology.hosts", "expected KEY=V1,V2"),
        ("=1,2", "expected KEY=V1,V2"),
        ("topology.hosts=4,,6", "empty value"),
        ("events=[1,2", "unbalanced"),
        ("topology.hosts=4,4", "listed twice"),
        ("seed=1,2", "--seeds"),
        ("bad key=1", "not a dotted scenario path"),
    ],
)
def test_bad_grid_syntax_names_the_grid(spec: str, needle: str):
    with pytest.raises(SweepError) as err:
        parse_grid(spec)
    assert needle in str(err.value)
    assert repr(spec) in str(err.value)


def test_points_are_the_sorted_product_with_stable_readable_ids():
    points = expand_points([parse_grid("topology.hosts=20,4"), parse_grid("events.0.percent=5")])
    assert [p.id for p in points] == [
        "events.0.percent=5__topology.hosts=4",
        "events.0.percent=5__topology.hosts=20",
    ]
    assert points[0].overrides == ["events.0.percent=5", "topology.hosts=4"]
    # the spelling of a value does not change its folder; unsafe text gets a hash
    assert point_id({"a": 5}) == point_id({"a": int("05")})
    assert point_id({"p": "a/b"}) != point_id({"p": "a_b"})
    assert "/" not in point_id({"p": "a/b"})
    with pytest.raises(SweepError, match="given twice"):
        expand_points([parse_grid("a=1"), parse_grid("a=2")])


def test_a_value_the_scenario_rejects_is_reported_before_anything_runs(
    scenario: Path, tmp_path: Path
):
    out = tmp_path / "out"
    grids = [parse_grid("topology.hosts=4"), parse_grid("events.0.percent=10,150")]
    with pytest.raises(SweepError) as err:
        plan_sweep(scenario, grids, [0], out)
    text = str(err.value)
    assert "events.0.percent=150" in text and "between 0 and 100" in text
    assert not out.exists()


def test_emulation_refuses_parallel_or_dask(scenario: Path, tmp_path: Path):
    plan = plan_sweep(scenario, [], [0], tmp_path, backend="emu")
    with pytest.raises(SweepError, match="one point at a time"):
        run_sweep(plan, jobs=2, progress=False)
    with pytest.raises(SweepError, match="one point at a time"):
        run_sweep(plan, executor="dask-local", progress=False)
    with pytest.raises(SweepError, match="expected local, dask-local"):
        run_sweep(plan_sweep(scenario, [], [0], tmp_path), executor="ray", progress=False)
    assert not (tmp_path / "base").exists()


# ------------------------------------------------------------------------------ sweeps


def test_grid_by_seeds_gives_complete_runs_and_one_index_row_each(full: Path):
    runs = sorted(p.parent.name + "/" + p.name for p in full.glob("*/seed-*"))
    assert len(runs) == 8
    assert all(is_complete(full / r) for r in runs)
    df = pd.read_csv(full / "index.csv")
    assert len(df) == 8
    assert list(df.columns[:7]) == [
        "point",
        "events.0.percent",
        "topology.hosts",
        "seed",
        "status",
        "error",
        "path",
    ]
    assert (df["status"] == "complete").all()
    assert sorted(df["path"]) == runs
    assert (df["path"] == df["point"] + "/seed-" + df["seed"].astype(str)).all()
    # sorted by point (numbers numerically), then seed
    assert df[["events.0.percent", "topology.hosts", "seed"]].values.tolist() == [
        [p, h, s] for p in (0, 10) for h in (4, 6) for s in SEEDS
    ]
    for key in (
        "endpoint_convergence_s.p99",
        "failure_detection_s.first_suspect_mean",
        "false_positives",
        "overhead.bytes_per_node_per_s",
    ):
        assert key in df.columns
    # each row carries its own run's metrics and the overrides really applied
    for row in df.to_dict("records"):
        metrics = json.loads((full / row["path"] / "metrics.json").read_text())
        assert metrics["seed"] == row["seed"]
        assert metrics["nodes"] == row["nodes"] == row["topology.hosts"]
        assert metrics["overhead"]["bytes_total"] == row["overhead.bytes_total"]
        assert metrics["false_positives"] == row["false_positives"]
    assert json.loads((full / df["point"][0] / "point.json").read_text())["overrides"] == {
        "events.0.percent": 0,
        "topology.hosts": 4,
    }


def test_interrupted_sweep_resumes_only_missing_runs_and_matches_fresh(
    scenario: Path, full: Path, tmp_path: Path
):
    out = tmp_path / "resumed"
    # first attempt: only seed 0 got done
    first = run_sweep(_plan(scenario, out, seeds=(0,)), jobs=2, progress=False)
    assert first.done == 4
    # one run was interrupted mid-way, another died before writing its manifest
    interrupted = run_dir(out, "events.0.percent=10__topology.hosts=6", 0)
    manifest = json.loads((interrupted / "manifest.json").read_text())
    (interrupted / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    vanished = run_dir(out, "events.0.percent=0__topology.hosts=4", 0)
    (vanished / "manifest.json").unlink()
    kept = [p for p in out.glob("*/seed-0") if p not in (interrupted, vanished)]
    assert len(kept) == 2
    before = {p: (p / "manifest.json").stat().st_mtime_ns for p in kept}
    partial = build_index(out)
    assert sorted(partial["status"]) == ["complete", "complete", "interrupted", "missing"]

    second = run_sweep(_plan(scenario, out), jobs=2, progress=False)
    assert second.skipped == 2
    redone = sorted((o.point_id, o.seed) for o in second.ran)
    assert len(redone) == 6 and all(o.status == "complete" for o in second.ran)
    assert (interrupted.parent.name, 0) in redone and (vanished.parent.name, 0) in redone
    assert {p: (p / "manifest.json").stat().st_mtime_ns for p in kept} == before
    pd.testing.assert_frame_equal(_index(out), _index(full))

    third = run_sweep(_plan(scenario, out), jobs=2, progress=False)
    assert (third.skipped, len(third.ran)) == (8, 0)


def test_dask_cluster_gives_the_same_index_as_the_process_pool(
    scenario: Path, full: Path, tmp_path: Path
):
    distributed = pytest.importorskip("distributed")
    import logging

    out = tmp_path / "dask"
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        address = cluster.scheduler_address.removeprefix("tcp://")
        result = run_sweep(_plan(scenario, out), executor=f"dask://{address}", progress=False)
    assert (result.done, result.failed) == (8, 0)
    pd.testing.assert_frame_equal(_index(out), _index(full))


def test_cli_sweep_with_dask_local_and_resume(scenario: Path, full: Path, tmp_path: Path, capsys):
    out = tmp_path / "cli"
    args = ["sweep", str(scenario), "--seeds", "2", "--out", str(out)]
    args += [a for g in GRIDS for a in ("--grid", g)]
    assert main([*args, "-q", "--executor", "dask-local", "--jobs", "2"]) == 0
    pd.testing.assert_frame_equal(_index(out), _index(full))
    assert main([*args, "--jobs", "1"]) == 0
    assert "0 done, 8 skipped, 0 failed" in capsys.readouterr().out
    assert main(["sweep", str(scenario), "--grid", "topology.hosts", "-q"]) == 2
    assert "--grid 'topology.hosts'" in capsys.readouterr().err


def _interrupt_second(task):
    """Stands in for a run hit by Ctrl-C: the first run completes, the next is cut."""
    from overlaysim.sweep import run_task
    from overlaysim.sweep.execute import RunOutcome

    if task.seed == 1:
        return RunOutcome(task.point_id, task.seed, "interrupted")
    return run_task(task)


def test_ctrl_c_in_a_sequential_sweep_stops_it_and_keeps_the_index(scenario: Path, tmp_path: Path):
    plan = plan_sweep(scenario, [parse_grid("topology.hosts=4,6")], [0, 1], tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, jobs=1, progress=False, runner=_interrupt_second)
    df = pd.read_csv(tmp_path / "index.csv")
    assert df["status"].tolist() == ["complete", "missing", "missing", "missing"]


def test_dask_local_sweep_runs_on_two_workers_and_prints_a_line_per_run(
    scenario: Path, full: Path, tmp_path: Path, capsys
):
    """The issue's promise: ``--executor dask-local`` uses both cores (two worker
    processes, neither of them this one) and says when each run finishes."""
    import os

    pytest.importorskip("distributed")
    out = tmp_path / "dl"
    result = run_sweep(_plan(scenario, out), jobs=2, executor="dask-local", progress=True)
    assert (result.done, result.failed) == (8, 0)
    workers = {o.worker for o in result.ran}
    assert len(workers) == 2, workers
    assert all(not w.endswith(f":{os.getpid()}") for w in workers)
    assert all(o.wall_s is not None and o.wall_s > 0 for o in result.ran)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "/seed-" in ln]
    assert len(lines) == 8
    assert sorted(int(ln.split("/", 1)[0].removeprefix("[")) for ln in lines) == list(range(1, 9))
    for o in result.ran:
        assert any(
            f"{o.point_id}/seed-{o.seed}: complete in " in ln and o.worker in ln for ln in lines
        )
    pd.testing.assert_frame_equal(_index(out), _index(full))


def test_ctrl_c_on_a_dask_local_sweep_stops_it_cleanly(scenario: Path, tmp_path: Path):
    """Ctrl-C reaches the whole foreground process group: the sweep must exit with 130
    and one line, no worker may print a traceback, and no worker may be left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("distributed")
    cmd = [sys.executable, "-m", "overlaysim.cli", "sweep", str(scenario), "--seeds", "3"]
    cmd += ["--grid", "topology.hosts=4,6,8", "--executor", "dask-local", "--jobs", "2"]
    cmd += ["--out", str(tmp_path / "out")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:  # wait for the first finished run, then press Ctrl-C
        lines.append(line)
        if "/seed-" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Traceback" not in out
    assert err.strip() == "overlaysim: interrupted"
    first = lines[-1]
    assert ": complete in " in first
    pid = int(first.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"worker {pid} still running after the sweep exited")
    assert (tmp_path / "out" / "index.csv").exists()


def test_a_task_that_raises_on_a_dask_worker_becomes_a_failed_run(scenario: Path, tmp_path: Path):
    """A task error travels back from the worker as a ``failed`` outcome naming it,
    not as an exception that ends the sweep."""
    import operator

    from overlaysim.sweep.execute import _dask

    pytest.importorskip("distributed")
    tasks = list(_plan(scenario, tmp_path / "x").tasks)[:2]
    broken = operator.attrgetter("no_such_field")  # picklable, raises on every task
    with _dask(tasks, broken, None, 1) as outcomes:
        got = sorted(outcomes, key=lambda o: (o.point_id, o.seed))
    want = sorted((t.point_id, t.seed) for t in tasks)
    assert [(o.point_id, o.seed) for o in got] == want
    assert all(o.status == "failed" and "AttributeError" in (o.error or "") for o in got)
