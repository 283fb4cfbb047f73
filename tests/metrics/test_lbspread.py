"""lb_spread: counts per task, chi-square against uniform, failures and strays apart."""

from __future__ import annotations

import random

import pytest

from overlaysim.metrics.lbspread import lb_spread


def test_uniform_random_choices_pass_and_a_skew_fails():
    rng = random.Random(4)
    tasks = ["web.1", "web.2", "web.3"]
    even = lb_spread([rng.choice(tasks) for _ in range(300)], tasks)
    assert sum(even["per_task"].values()) == 300 and even["p_uniform"] > 0.01
    skew = lb_spread(["web.1"] * 80 + ["web.2"] * 10 + ["web.3"] * 10, tasks)
    assert skew["p_uniform"] < 1e-6


def test_missing_tasks_count_zero_failures_and_strays_apart():
    out = lb_spread(["a", "a", "", "old", "b"], ["a", "b", "c"])
    assert out["per_task"] == {"a": 2, "b": 1, "c": 0}
    assert out["failed"] == 1 and out["stray"] == {"old": 1} and out["connections"] == 5
    assert out["chi2"] == pytest.approx(2.0)  # expected 1 each: (1 + 0 + 1) / 1


def test_one_task_or_no_answers_has_no_test():
    assert lb_spread(["a"] * 5, ["a"])["p_uniform"] is None
    assert lb_spread([], ["a", "b"])["p_uniform"] is None


def test_probe_rows_round_trip_through_the_results_folder(tmp_path) -> None:
    """lb_probe rows written by the one writer give the same lb_spread when recomputed."""
    from overlaysim.metrics.finalize import Outcome, finalize, metrics_for
    from overlaysim.metrics.results import ResultsWriter

    base = {"t": 119.5, "service": "db", "client": "client1", "vip": "10.30.0.9", "port": 8080}
    rows = [{**base, "kind": "task", "seq": i, "answer": f"db.{i + 1}"} for i in range(3)]
    answers = ["db.1", "db.2", "", "db.1", "old.1", "db.1"]
    rows += [{**base, "kind": "connection", "seq": i, "answer": a} for i, a in enumerate(answers)]
    manifest = {"name": "t", "backend": "emu", "seed": 1, "nodes": 2}
    writer = ResultsWriter(tmp_path / "r", manifest)
    run = finalize(writer, Outcome(status="complete", duration_s=120.0, tables={"lb_probe": rows}))
    spread = run.metrics["lb_spread"]
    assert spread["service"] == "db" and spread["vip"] == "10.30.0.9"
    assert spread["per_task"] == {"db.1": 3, "db.2": 1, "db.3": 0}
    assert spread["failed"] == 1 and spread["stray"] == {"old.1": 1}
    assert spread["connections"] == 6 and 0 < spread["p_uniform"] < 1
    assert metrics_for(tmp_path / "r") == run.metrics
    assert (tmp_path / "r" / "lb_probe.csv").is_file()
    from overlaysim.report.summary import summary_rows

    rows_out = {(sec, what): v for sec, what, v in summary_rows(run.metrics)}
    line = rows_out[("services", "LB spread client1→db VIP")]
    assert line.startswith("db.1 3, db.2 1, db.3 0; failed 1, stray 1; p uniform ")
