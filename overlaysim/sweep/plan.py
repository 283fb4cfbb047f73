"""Plan a sweep: validate every point against the scenario, then list the runs.

Nothing runs before every point has loaded, so a value the scenario rejects is
reported at once instead of after hours of earlier points.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from overlaysim.metrics.atomic import atomic_write_bytes, json_bytes
from overlaysim.scenario.problems import ScenarioError
from overlaysim.scenario.schema import Scenario
from overlaysim.sweep.grid import Grid, Point, SweepError, expand_points

Backend = Literal["sim", "emu"]
#: Per point folder: the point's overrides, so an index can be rebuilt from disk alone.
POINT_FILE = "point.json"
MANIFEST = "manifest.json"


@dataclass(frozen=True, slots=True)
class RunTask:
    """One run: a validated scenario, a seed and the folder it writes.

    Picklable, so it can travel to a worker process or a Dask worker (which must see
    ``out`` on a shared filesystem).
    """

    point_id: str
    seed: int
    out: Path
    scenario: Scenario
    backend: Backend = "sim"
    plots: bool = False


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """Every run of a sweep, in index order (point, then seed)."""

    out: Path
    points: tuple[Point, ...]
    seeds: tuple[int, ...]
    tasks: tuple[RunTask, ...]
    backend: Backend


def run_dir(out: Path, point_id: str, seed: int) -> Path:
    """``OUT/<point-id>/seed-<s>``."""
    return Path(out) / point_id / f"seed-{seed}"


def is_complete(path: Path) -> bool:
    """True when ``path/manifest.json`` says the run completed."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("status") == "complete"


def plan_sweep(
    scenario: Path,
    grids: Sequence[Grid],
    seeds: Sequence[int],
    out: Path,
    *,
    base_overrides: Sequence[str] = (),
    backend: Backend = "sim",
    plots: bool = False,
) -> SweepPlan:
    """Load the scenario once per point (``base_overrides`` first, then the point's).

    Raises ``SweepError`` naming the point's grid values and every problem the scenario
    loader found, for the first rejected point; runs nothing and writes nothing.
    """
    from overlaysim.scenario.loader import load_scenario
    from overlaysim.world.dryrun import dry_run

    if not seeds:
        raise SweepError("no seeds to run")
    points = expand_points(grids)
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):  # pragma: no cover - point_id hashes unsafe spellings
        raise SweepError("two grid points map to the same folder name")
    tasks: list[RunTask] = []
    for point in points:
        try:
            sc = load_scenario(scenario, [*base_overrides, *point.overrides])
            dry_run(sc, source=str(scenario))  # what the run would refuse (IPAM)
        except ScenarioError as exc:
            raise SweepError(
                f"grid point {point.describe()} is rejected by {scenario}:\n{exc}"
            ) from None
        for seed in seeds:
            tasks.append(
                RunTask(
                    point_id=point.id,
                    seed=seed,
                    out=run_dir(out, point.id, seed),
                    scenario=sc,
                    backend=backend,
                    plots=plots,
                )
            )
    return SweepPlan(
        out=Path(out),
        points=tuple(points),
        seeds=tuple(seeds),
        tasks=tuple(tasks),
        backend=backend,
    )


def write_point_files(plan: SweepPlan) -> None:
    """Record each point's overrides in ``OUT/<point-id>/point.json``."""
    for point in plan.points:
        folder = plan.out / point.id
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"id": point.id, "overrides": point.mapping, "set": point.overrides}
        atomic_write_bytes(folder / POINT_FILE, json_bytes(doc))
