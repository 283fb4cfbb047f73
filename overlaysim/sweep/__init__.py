"""Parameter sweeps: a grid of scenario overrides x seeds, resumable, with one index.

``plan_sweep`` validates every point first (schema, checks and a dry run over IPAM);
``run_sweep`` runs what is not complete yet (process pool, Dask, or one at a time for
emulation) and rebuilds ``OUT/index.csv``.
Reference: ``docs/sweeps.md``.

May import ``core``, ``errors``, ``scenario``, ``metrics``, ``world``, ``report``, ``sim``
and ``emu``.
"""

from __future__ import annotations

from overlaysim.sweep.execute import (
    RunOutcome,
    SweepResult,
    check_executor,
    run_sweep,
    run_task,
)
from overlaysim.sweep.grid import (
    Grid,
    Point,
    SweepError,
    expand_points,
    parse_grid,
    parse_seed_list,
    point_id,
    seeds_from,
)
from overlaysim.sweep.index import build_index, write_index
from overlaysim.sweep.plan import RunTask, SweepPlan, is_complete, plan_sweep, run_dir

__all__ = [
    "Grid",
    "Point",
    "RunOutcome",
    "RunTask",
    "SweepError",
    "SweepPlan",
    "SweepResult",
    "build_index",
    "check_executor",
    "expand_points",
    "is_complete",
    "parse_grid",
    "parse_seed_list",
    "plan_sweep",
    "point_id",
    "run_dir",
    "run_sweep",
    "run_task",
    "seeds_from",
    "write_index",
]
