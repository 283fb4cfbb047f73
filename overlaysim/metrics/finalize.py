"""Completing a results folder in one call, so a backend's runner stays thin.

A runner builds a :class:`ResultsWriter` before starting (the folder then says
``running``), collects records while it runs (:class:`EventLog`,
:class:`ConvergenceTracker`, :class:`TrafficCounter`, reachability and throughput rows)
and ends with :func:`finalize_run` — also when interrupted or failing, with the
matching status::

    writer = ResultsWriter(out, base_manifest(name=..., backend="sim", seed=..., scenario=...))
    try:
        ...  # run, feeding the collectors
        status, error = "complete", None
    except KeyboardInterrupt:
        status, error = "interrupted", None
    finalize_run(writer, {"events": log.rows, "convergence": tracker.finish(now), ...},
                 duration_s=now, nodes=len(hosts), status=status, error=error)

Metrics are computed from the files just written (read back), so ``overlaysim report``
on the folder later gives exactly the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from overlaysim.metrics.compute import compute_metrics
from overlaysim.metrics.results import FinalStatus, ResultsWriter, Run, load_run
from overlaysim.metrics.tables import Rows


def metrics_for(run: Run, *, duration_s: float, nodes: int) -> dict[str, Any]:
    """Compute metrics.json for a loaded run (identity fields from its manifest)."""
    m = run.manifest
    return compute_metrics(
        run.events,
        run.convergence,
        run.traffic,
        run.reachability,
        run.throughput,
        traffic_kinds=run.traffic_kinds,
        backend=str(m.get("backend", "")),
        scenario=run.name,
        seed=m.get("seed"),  # type: ignore[arg-type]
        duration_s=duration_s,
        nodes=nodes,
    )


def finalize_run(
    writer: ResultsWriter,
    tables: Mapping[str, Rows],
    *,
    duration_s: float,
    nodes: int,
    status: FinalStatus = "complete",
    error: str | None = None,
    plots: bool = True,
    extra_manifest: Mapping[str, Any] | None = None,
) -> Run:
    """Write ``tables``, then metrics.json, then plots, then the final manifest status.

    If writing fails the manifest is marked ``failed`` (``interrupted`` on Ctrl-C) with
    the error and the exception propagates. Returns the loaded run.
    """
    # Imported here so that computing metrics alone never loads matplotlib.
    from overlaysim.report.plots import write_plots

    try:
        for name, rows in tables.items():
            writer.write_table(name, rows)
        run = load_run(writer.path)
        metrics = metrics_for(run, duration_s=duration_s, nodes=nodes)
        writer.write_metrics(metrics)
        run = dataclasses.replace(run, metrics=metrics)
        if plots:
            write_plots(run, writer.plots_dir)
    except KeyboardInterrupt:
        writer.finish("interrupted", error or "interrupted while writing results", extra_manifest)
        raise
    except Exception as exc:
        what = f"writing results failed: {type(exc).__name__}: {exc}"
        writer.finish("failed", f"{error}; {what}" if error else what, extra_manifest)
        raise
    writer.finish(status, error, extra_manifest)
    return dataclasses.replace(run, manifest=dict(writer.manifest))
