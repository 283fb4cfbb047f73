"""``OUT/index.csv``: one row per run of a sweep folder, rebuilt from disk.

Columns: ``point``, the grid keys (one column each), ``seed``, ``status``, ``error``,
``path`` (relative to the sweep folder), then every scalar of ``metrics.json``
flattened with dots (``endpoint_convergence_s.p99``, ``overhead.by_kind.ack.msgs_sent``).
Lists (``throughput``, ``skipped_steps``) are left out. Rows are sorted by point (grid
values, numbers numerically) then seed, so the same runs always give the same file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from overlaysim.metrics.atomic import atomic_open
from overlaysim.sweep.grid import canonical, point_sort_key
from overlaysim.sweep.plan import MANIFEST, POINT_FILE

INDEX = "index.csv"
#: metrics.json keys already in the leading columns (or not scalars worth a column).
_SKIP_METRICS = frozenset({"seed"})


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars of nested dicts as ``a.b.c`` keys; lists are dropped."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif not isinstance(value, list | tuple):
            flat[name] = value
    return flat


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cell(value: Any) -> Any:
    """Grid values as index cells: scalars as they are, lists and dicts as JSON."""
    if isinstance(value, list | dict):
        return canonical(value)
    return value


def _runs(out: Path) -> Iterable[tuple[dict[str, Any], str, int, Path]]:
    """(point overrides, point id, seed, run folder) for every run folder under ``out``."""
    for point_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        doc = _read_json(point_dir / POINT_FILE)
        if not isinstance(doc, dict):
            continue  # not a sweep point folder
        overrides = doc.get("overrides") or {}
        for run in point_dir.glob("seed-*"):
            try:
                seed = int(run.name.removeprefix("seed-"))
            except ValueError:
                continue
            if run.is_dir():
                yield overrides, point_dir.name, seed, run


def build_index(
    out: Path, expected: Iterable[tuple[Mapping[str, Any], str, int]] = ()
) -> pd.DataFrame:
    """The index of every run folder under ``out``.

    ``expected`` lists (overrides, point id, seed) of runs that should exist; those
    without a folder get a row with status ``missing``.
    """
    out = Path(out)
    found: dict[tuple[str, int], dict[str, Any]] = {}
    keys: set[str] = set()
    for overrides, pid, seed, run in _runs(out):
        manifest = _read_json(run / MANIFEST)
        manifest = manifest if isinstance(manifest, dict) else {}
        metrics = _read_json(run / "metrics.json") if manifest.get("status") else None
        row = {
            "_overrides": dict(overrides),
            "point": pid,
            "seed": seed,
            "status": manifest.get("status", "missing"),
            "error": manifest.get("error"),
            "path": run.relative_to(out).as_posix(),
        }
        if isinstance(metrics, dict):
            for k, v in flatten(metrics).items():
                if k not in _SKIP_METRICS:
                    row[f"m:{k}"] = v
        found[(pid, seed)] = row
        keys.update(overrides)
    for overrides, pid, seed in expected:
        if (pid, seed) not in found:
            found[(pid, seed)] = {
                "_overrides": dict(overrides),
                "point": pid,
                "seed": seed,
                "status": "missing",
                "error": None,
                "path": f"{pid}/seed-{seed}",
            }
            keys.update(overrides)
    rows = sorted(
        found.values(),
        key=lambda r: (point_sort_key(r["_overrides"]), r["point"], r["seed"]),
    )
    grid_cols = sorted(keys)
    metric_cols: list[str] = []
    seen: set[str] = set()
    for r in rows:  # first-appearance order over sorted rows: deterministic
        for k in r:
            if k.startswith("m:") and k not in seen:
                seen.add(k)
                metric_cols.append(k)
    records = []
    for r in rows:
        rec: dict[str, Any] = {"point": r["point"]}
        for k in grid_cols:
            rec[k] = _cell(r["_overrides"].get(k))
        rec.update(seed=r["seed"], status=r["status"], error=r["error"], path=r["path"])
        for k in metric_cols:
            # a metric named like a grid key keeps a prefix so no column is lost
            name = k[2:] if k[2:] not in rec else f"metrics.{k[2:]}"
            rec[name] = r.get(k)
        records.append(rec)
    lead = ["point", *grid_cols, "seed", "status", "error", "path"]
    return pd.DataFrame.from_records(records, columns=lead + _metric_names(metric_cols, lead))


def _metric_names(metric_cols: list[str], lead: list[str]) -> list[str]:
    return [k[2:] if k[2:] not in lead else f"metrics.{k[2:]}" for k in metric_cols]


def write_index(out: Path, expected: Iterable[tuple[Mapping[str, Any], str, int]] = ()) -> Path:
    """Rebuild ``OUT/index.csv`` atomically from the run folders; return its path."""
    out = Path(out)
    df = build_index(out, expected)
    dest = out / INDEX
    with atomic_open(dest) as f:
        df.to_csv(f, index=False, lineterminator="\n")
    return dest
