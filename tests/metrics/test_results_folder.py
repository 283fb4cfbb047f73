"""The results folder: atomic writes, status transitions, load_run, byte-identical output."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pandas as pd
import pytest

from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.metrics.finalize import finalize_run, metrics_for
from overlaysim.metrics.manifest import base_manifest
from overlaysim.metrics.records import NOT_MEASURED_BY_SIM, TABLES, EventLog
from overlaysim.metrics.results import PLOT_FILES, ResultsWriter, load_run
from overlaysim.metrics.tables import frame
from overlaysim.metrics.traffic import TrafficCounter
from overlaysim.report.plots import write_plots

HOSTS = [f"h{i}" for i in range(6)]


def fake_run(seed: int = 1) -> dict[str, list]:
    """Records of a small made-up run: a crash and restart, a partition, commits, traffic."""
    rng = random.Random(seed)
    log, tr, tc = EventLog(), ConvergenceTracker(), TrafficCounter()
    for h in HOSTS:
        log.add(0.0, "node_start", subject=h)
    for o in HOSTS:
        for x in HOSTS:
            if o != x:
                log.add(rng.uniform(0, 1), "member_join", node=o, subject=x)
    log.add(10.0, "node_crash", subject="h3")
    for o in HOSTS:
        if o != "h3":
            log.add(10 + rng.uniform(1, 2), "member_suspect", node=o, subject="h3")
            log.add(14 + rng.uniform(0, 2), "member_dead", node=o, subject="h3")
    log.add(20.0, "node_restart", subject="h3")
    for o in HOSTS:
        if o != "h3":
            log.add(20 + rng.uniform(0, 1), "member_update", node=o, subject="h3")
    log.add(22.0, "partition", detail={"groups": [["h0"], ["h1", "h2", "h3", "h4", "h5"]]})
    log.add(25.0, "member_dead", node="h0", subject="h1")
    log.add(26.0, "heal")
    for k in range(30):
        t = rng.uniform(0, 28)
        op = rng.choice(["add", "delete"])
        log.add(t, "entry_commit", node="h1", network="net1", key=f"10.0.0.{k}", op=op)
        tr.commit(t, "h1", "net1", f"10.0.0.{k}", op, HOSTS)
        for h in HOSTS:
            if rng.random() < 0.95:
                tr.seen(t + rng.expovariate(3), h, "net1", f"10.0.0.{k}", op)
    for _ in range(3000):
        t = rng.uniform(0, 30)
        tc.sent(t, rng.choice(HOSTS), rng.randint(40, 1400), rng.choice(["PING", "GOSSIP"]))
        tc.recv(t, rng.choice(HOSTS), rng.randint(40, 1400), "PING")
    log.rows.sort(key=lambda r: r[0])
    return {
        "events": log.rows,
        "convergence": tr.finish(30.0),
        "traffic": tc.rows(),
        "traffic_kinds": tc.kind_rows(),
        "reachability": [(30.0, "c1", "c2", "net1", True, True, "", None)],
        "throughput": [("c1", "c2", "tcp", None, None, None, NOT_MEASURED_BY_SIM)],
    }


def manifest(seed: int = 1) -> dict:
    return base_manifest(name="unit", backend="sim", seed=seed, scenario={"duration": 30})


def write(out: Path, seed: int = 1, plots: bool = False):
    w = ResultsWriter(out, manifest(seed))
    run = finalize_run(w, fake_run(seed), duration_s=30.0, nodes=len(HOSTS))
    if plots:  # figures are drawn on top of a finished folder, never by finalize
        write_plots(run, out / "plots")
    return run


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One complete folder with plots, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("written") / "run"
    return write(out, plots=True)


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def status(folder: Path) -> str:
    return json.loads((folder / "manifest.json").read_text())["status"]


# --- writer lifecycle --------------------------------------------------------------------


def test_folder_exists_with_running_status_from_the_start(tmp_path):
    out = tmp_path / "a" / "run"
    w = ResultsWriter(out, manifest())
    assert status(out) == "running"
    assert list(files(out)) == ["manifest.json"]
    w.finish("complete")
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "complete" and m["error"] is None
    for key in ("name", "backend", "seed", "scenario", "versions", "git_commit", "capabilities"):
        assert key in m
    assert "started" not in m and "ended" not in m
    with pytest.raises(RuntimeError):
        w.finish("complete")


def test_finish_rejects_unknown_status_and_adds_extra(tmp_path):
    w = ResultsWriter(tmp_path / "r", manifest())
    with pytest.raises(ValueError):
        w.finish("running")  # type: ignore[arg-type]
    w.finish("failed", "boom", extra={"ended": "wall clock on the emulator"})
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert (m["status"], m["error"], m["ended"]) == ("failed", "boom", "wall clock on the emulator")


def test_interrupted_run_still_writes_the_tables_it_has(tmp_path):
    rec = fake_run()
    w = ResultsWriter(tmp_path / "r", manifest())
    run = finalize_run(w, {"events": rec["events"]}, duration_s=12.5, nodes=6, status="interrupted")
    assert run.status == "interrupted" and status(tmp_path / "r") == "interrupted"
    assert run.metrics["duration_s"] == 12.5
    assert len(run.events) == len(rec["events"]) and run.convergence.empty


def test_failed_table_write_leaves_no_temp_file_and_old_file_intact(tmp_path):
    w = ResultsWriter(tmp_path / "r", manifest())
    w.write_table("reachability", [(1.0, "c1", "c2", "n", True, True, "", None)])
    before = (tmp_path / "r" / "reachability.csv").read_bytes()

    def rows():
        yield (2.0, "c1", "c2", "n", True, False, "", None)
        raise RuntimeError("collector died")

    with pytest.raises(RuntimeError):
        w.write_table("reachability", rows())
    assert (tmp_path / "r" / "reachability.csv").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "manifest.json",
        "reachability.csv",
    ]


def test_finalize_marks_failed_when_results_cannot_be_written(tmp_path):
    w = ResultsWriter(tmp_path / "r", manifest())
    with pytest.raises(ValueError):
        finalize_run(w, {"traffic": [(0, "h1", "many", 1, 1, 1)]}, duration_s=1.0, nodes=1)
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["status"] == "failed" and "ValueError" in m["error"]


def test_non_empty_folder_needs_overwrite_which_removes_only_known_files(tmp_path):
    out = tmp_path / "r"
    write(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        ResultsWriter(out, manifest())
    ResultsWriter(out, manifest(), overwrite=True)
    assert sorted(files(out)) == ["manifest.json", "notes.txt"]
    assert status(out) == "running"


def test_no_temporary_files_remain(written):
    out = written.path
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]
    expected = {"manifest.json", "metrics.json", "plots"} | {s.file_name for s in TABLES.values()}
    assert set(p.name for p in out.iterdir()) == expected
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(PLOT_FILES)


# --- reading back ------------------------------------------------------------------------


def test_load_run_round_trip(written):
    rec = fake_run()
    loaded = load_run(written.path)
    assert loaded.manifest == written.manifest and loaded.status == "complete"
    assert loaded.metrics == written.metrics
    for name, rows in rec.items():
        expected = frame(name, rows).sort_values(list(TABLES[name].sort_by), kind="stable")
        pd.testing.assert_frame_equal(
            loaded.table(name), expected.reset_index(drop=True), check_exact=True
        )


def test_metrics_recomputed_from_the_folder_are_identical(written):
    loaded = load_run(written.path)
    assert metrics_for(loaded, duration_s=30.0, nodes=len(HOSTS)) == loaded.metrics
    m = loaded.metrics
    assert m["failure_detection_s"]["count"] == 1 and m["failure_detection_s"]["undetected"] == 0
    assert m["join_visibility_s"]["count"] == 1
    assert m["false_positives"] == 0 and m["false_positives_partitioned"] == 1


def test_load_run_of_a_folder_without_tables(tmp_path):
    ResultsWriter(tmp_path / "r", manifest())
    run = load_run(tmp_path / "r")
    assert run.status == "running" and run.metrics is None
    assert run.events.empty and list(run.events.columns) == list(TABLES["events"].column_names)
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "nothing")


# --- determinism ---------------------------------------------------------------------------


def test_same_records_give_byte_identical_folders(written, tmp_path):
    write(tmp_path / "two", plots=True)
    a, b = files(written.path), files(tmp_path / "two")
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert sum(k.endswith(".png") for k in a) == len(PLOT_FILES)
    # nothing machine- or place-specific in any file
    for data in [*a.values(), *b.values()]:
        assert str(written.path).encode() not in data and str(tmp_path).encode() not in data


def test_different_seed_gives_different_results(tmp_path):
    write(tmp_path / "one", seed=1)
    write(tmp_path / "two", seed=2)
    assert files(tmp_path / "one")["events.csv"] != files(tmp_path / "two")["events.csv"]


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, i = [], 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        out.append((data[i + 4 : i + 8], data[i + 8 : i + 8 + n]))
        i += 12 + n
    return out


def test_plots_are_fixed_size_pngs_without_software_metadata(written, tmp_path):
    again = write_plots(load_run(written.path), tmp_path / "again")
    assert [p.name for p in again] == list(PLOT_FILES)
    for p in again:
        data = p.read_bytes()
        assert data == (written.path / "plots" / p.name).read_bytes()
        chunks = png_chunks(data)
        width, height = struct.unpack(">II", chunks[0][1][:8])
        assert (width, height) == (1300, 700)
        assert not [c for t, c in chunks if t in (b"tEXt", b"iTXt") and c.startswith(b"Software")]
