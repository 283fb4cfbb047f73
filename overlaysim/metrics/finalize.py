"""The one results writer: a runner's :class:`Outcome` becomes a complete folder.

A runner builds a :class:`ResultsWriter` before starting (the folder then says
``running``), collects records while it runs, and ends by handing an :class:`Outcome`
to :func:`finalize` — also when interrupted or failing, with the matching status::

    writer = ResultsWriter(out, base_manifest(name=..., backend="sim", seed=..., scenario=...))
    ...  # run, feeding the collectors
    finalize(writer, Outcome(status="complete", duration_s=now,
                             tables={"events": log.rows, "convergence": tracker.finish(now)},
                             counters={"messages": {...}}, skipped_steps=world.skipped))

:func:`finalize` writes the tables, records the outcome's facts in the manifest
(``outcome``: duration, counters, skipped steps, the emulator's
measured lag), computes ``metrics.json`` from the
folder itself with :func:`metrics_for`, and sets the final status. It never plots:
figures are the caller's choice, on top (``overlaysim.report.plots``). Because every
input of the metrics is in the folder, ``metrics_for(folder)`` later gives the same
``metrics.json`` byte for byte.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overlaysim.metrics.compute import compute_metrics
from overlaysim.metrics.lag import METRIC as LAG
from overlaysim.metrics.results import FinalStatus, ResultsWriter, Run, load_run
from overlaysim.metrics.tables import Rows

#: Manifest key holding the facts of an outcome that the tables do not carry.
OUTCOME = "outcome"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What a run produced, before anything is written."""

    status: FinalStatus
    #: Seconds of scenario time the run covered (the metrics' window).
    duration_s: float
    tables: Mapping[str, Rows] = field(default_factory=dict)
    error: str | None = None
    #: Totals the tables do not hold (e.g. ``messages``: sent, delivered, lost); each
    #: becomes a top-level key of metrics.json.
    counters: Mapping[str, Any] = field(default_factory=dict)
    #: Steps the backend could not play, with the reason.
    skipped_steps: Sequence[Mapping[str, Any]] = ()
    #: More manifest keys (wall-clock times, mechanisms, teardown facts...).
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The emulator's measured lag (:func:`overlaysim.metrics.lag.lag_report`); None
    #: when nothing was measured (the simulator has no wall clock to fall behind).
    lag: Mapping[str, Any] | None = None


def metrics_for(
    run: Run | Path | str, *, duration_s: float | None = None, nodes: int | None = None
) -> dict[str, Any]:
    """metrics.json for a results folder (or a loaded run), from its files alone.

    Identity fields, the duration, node count, counters, skipped steps and the
    emulator's lag (``emulator_lag``, when measured) come from the manifest; ``duration_s``/``nodes`` override them (folders written before the
    manifest kept an ``outcome``).
    """
    if not isinstance(run, Run):
        run = load_run(run)
    m = run.manifest
    facts = m.get(OUTCOME) or {}
    if duration_s is None:
        duration_s = float(facts.get("duration_s", 0.0))
    if nodes is None:
        nodes = int(m.get("nodes") or 0)
    metrics = compute_metrics(
        run.events,
        run.convergence,
        run.traffic,
        run.reachability,
        run.throughput,
        traffic_kinds=run.traffic_kinds,
        dns=run.dns,
        lb_probe=run.lb_probe,
        backend=str(m.get("backend", "")),
        scenario=run.name,
        seed=m.get("seed"),  # type: ignore[arg-type]
        duration_s=duration_s,
        nodes=nodes,
    )
    if facts:
        metrics.update(facts.get("counters") or {})
        metrics["skipped_steps"] = list(facts.get("skipped_steps") or [])
        if facts.get(LAG) is not None:
            metrics[LAG] = facts[LAG]
    return metrics


def finalize(writer: ResultsWriter, outcome: Outcome) -> Run:
    """Write ``outcome``'s tables, its facts, metrics.json, then the final status.

    If writing fails the manifest is marked ``failed`` (``interrupted`` on Ctrl-C) with
    the error and the exception propagates. Returns the loaded run.
    """
    error = outcome.error
    try:
        for name, rows in outcome.tables.items():
            writer.write_table(name, rows)
        facts: dict[str, Any] = {
            "duration_s": float(outcome.duration_s),
            "counters": dict(outcome.counters),
            "skipped_steps": list(outcome.skipped_steps),
        }
        if outcome.lag is not None:
            facts[LAG] = dict(outcome.lag)
        writer.note(**{OUTCOME: facts})
        run = load_run(writer.path)
        metrics = metrics_for(run)
        writer.write_metrics(metrics)
    except KeyboardInterrupt:
        writer.finish("interrupted", error or "interrupted while writing results", outcome.extra)
        raise
    except Exception as exc:
        what = f"writing results failed: {type(exc).__name__}: {exc}"
        writer.finish("failed", f"{error}; {what}" if error else what, outcome.extra)
        raise
    writer.finish(outcome.status, error, outcome.extra)
    return dataclasses.replace(run, manifest=dict(writer.manifest), metrics=metrics)


def finalize_run(
    writer: ResultsWriter,
    tables: Mapping[str, Rows],
    *,
    duration_s: float,
    nodes: int | None = None,
    status: FinalStatus = "complete",
    error: str | None = None,
    extra_manifest: Mapping[str, Any] | None = None,
) -> Run:
    """:func:`finalize` for callers holding only tables (``nodes`` overrides the manifest's)."""
    if nodes is not None:
        writer.note(nodes=nodes)
    return finalize(
        writer,
        Outcome(
            status=status,
            duration_s=duration_s,
            tables=tables,
            error=error,
            extra=extra_manifest or {},
        ),
    )
