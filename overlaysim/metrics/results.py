"""The results folder: one writer that every backend uses, one reader for everything else.

Layout (reference: ``docs/results.md``)::

    <out>/manifest.json      what ran; status running -> complete|interrupted|failed
    <out>/metrics.json       summary numbers
    <out>/<table>.csv        events, convergence, traffic, traffic_kinds, reachability, throughput
    <out>/dns.csv            service DNS rows (only runs with services)
    <out>/lb_probe.csv       load-balancing probe rows (only emulations with measure.lb_probe)
    <out>/plots/*.png        figures

Every file is written atomically. The folder exists, with ``status: "running"``, from
the moment the writer is built, so a crashed run leaves a folder that says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from overlaysim.metrics.atomic import atomic_open, json_bytes
from overlaysim.metrics.records import ALL_TABLES, OPTIONAL_TABLES, TABLES
from overlaysim.metrics.tables import Rows, frame, read_csv, schema_for, write_csv

MANIFEST = "manifest.json"
METRICS = "metrics.json"
PLOTS_DIR = "plots"
PLOT_FILES = (
    "convergence_cdf.png",
    "membership_timeline.png",
    "overhead.png",
    "membership_agreement.png",
)

FinalStatus = Literal["complete", "interrupted", "failed"]
STATUSES = ("running", "complete", "interrupted", "failed")


def _known_files() -> list[str]:
    """Every file name a writer may create, relative to the folder."""
    return [
        MANIFEST,
        METRICS,
        *(s.file_name for s in ALL_TABLES.values()),
        *(f"{PLOTS_DIR}/{p}" for p in PLOT_FILES),
    ]


class ResultsWriter:
    """Writes one run's folder.

    ``manifest`` holds the resolved scenario, seed, backend, versions, git commit and
    capabilities (see :func:`overlaysim.metrics.manifest.base_manifest`). It is written
    at once with ``status: "running"``. If the folder already holds files, pass
    ``overwrite=True`` to replace a previous run: only files this writer knows by name
    are removed first, so a stale table from an earlier run cannot linger.
    """

    def __init__(self, out_dir: Path, manifest: Mapping[str, Any], *, overwrite: bool = False):
        self.path = Path(out_dir)
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise FileExistsError(f"{self.path} is not empty (pass overwrite=True)")
            for rel in _known_files():
                (self.path / rel).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, Any] = {**manifest, "status": "running"}
        self.manifest.setdefault("error", None)
        self.tables: dict[str, int] = {}  # name -> rows written
        self._finished = False
        self._write_json(MANIFEST, self.manifest)

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS_DIR

    def write_table(self, name: str, rows: Rows, columns: Sequence[str] | None = None) -> Path:
        """Write ``<name>.csv`` from a DataFrame, mappings or sequences.

        Known tables (``records.TABLES``) use their schema; others need ``columns``.
        """
        schema = schema_for(name, columns)
        dest = self.path / schema.file_name
        with atomic_open(dest) as f:
            self.tables[name] = write_csv(f, schema, rows)
        return dest

    def write_metrics(self, metrics: Mapping[str, Any]) -> Path:
        """Write ``metrics.json`` (NaN and inf become null)."""
        return self._write_json(METRICS, metrics)

    def note(self, **facts: Any) -> Path:
        """Add ``facts`` to the manifest now (the run is still ``running``)."""
        if self._finished:
            raise RuntimeError("ResultsWriter.note() after finish()")
        self.manifest.update(facts)
        return self._write_json(MANIFEST, self.manifest)

    def finish(
        self,
        status: FinalStatus,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Mark the run ``complete``, ``interrupted`` or ``failed`` in the manifest.

        ``extra`` keys (e.g. wall-clock times on the emulation) are added to the manifest.
        """
        if status not in STATUSES[1:]:
            raise ValueError(f"bad final status {status!r}")
        if self._finished:
            raise RuntimeError("ResultsWriter.finish() was already called")
        self.manifest.update(extra or {})
        self.manifest["status"] = status
        self.manifest["error"] = error
        self._finished = True
        return self._write_json(MANIFEST, self.manifest)

    def _write_json(self, name: str, obj: Mapping[str, Any]) -> Path:
        dest = self.path / name
        with atomic_open(dest, text=False) as f:
            f.write(json_bytes(obj))
        return dest


@dataclass(frozen=True, slots=True)
class Run:
    """A results folder loaded into memory (tables absent from the folder are empty)."""

    path: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any] | None
    events: pd.DataFrame
    convergence: pd.DataFrame
    traffic: pd.DataFrame
    traffic_kinds: pd.DataFrame
    reachability: pd.DataFrame
    throughput: pd.DataFrame
    #: Service DNS rows; None when the run had no services (no ``dns.csv``).
    dns: pd.DataFrame | None = None
    #: Load-balancing probe rows; None when no probe ran (no ``lb_probe.csv``).
    lb_probe: pd.DataFrame | None = None

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "unknown"))

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    def table(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def load_run(path: Path | str) -> Run:
    """Load a results folder: the manifest, metrics (None if absent) and every table."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{path} is not a results folder (no {MANIFEST})")
    manifest = json.loads(mpath.read_text())
    metrics_path = path / METRICS
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    tables = {}
    for name, schema in TABLES.items():
        f = path / schema.file_name
        tables[name] = read_csv(f, schema) if f.is_file() else frame(schema)
    for name, schema in OPTIONAL_TABLES.items():
        f = path / schema.file_name
        tables[name] = read_csv(f, schema) if f.is_file() else None
    return Run(path=path, manifest=manifest, metrics=metrics, **tables)
