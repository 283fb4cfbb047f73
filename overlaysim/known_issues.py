"""The known-issues library: Docker's documented overlay failures, each a scenario under
``scenarios/known-issues/`` plus one symptom check, run under both protocol variants.

A case passes when its symptom shows under ``docker`` (value above ``reproduced_above``:
"reproduced") and does not under our default variant (value at most ``absent_at_most``:
"absent"). ``overlaysim known-issues`` runs them and prints the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where the case scenarios live (a source checkout, or the current directory).
SCENARIO_DIRS = (
    Path(__file__).resolve().parents[1] / "scenarios" / "known-issues",
    Path("scenarios") / "known-issues",
)


@dataclass(frozen=True, slots=True)
class Case:
    """One documented failure, and how to tell whether a run shows it."""

    id: str
    source: str  # the issue that documents it
    backend: str  # "sim" (control-plane cause) or "emu" (data-plane cause)
    scenario: str  # file name under scenarios/known-issues/
    symptom: str  # what ``value`` measures
    value: Callable[[dict[str, Any]], float]
    reproduced_above: float
    absent_at_most: float


def _unconverged(m: dict[str, Any]) -> float:
    return float(m["endpoint_convergence_s"]["unconverged"])


CASES: tuple[Case, ...] = (
    Case(
        id="heal-flapping",
        source="issue 12",
        backend="sim",
        scenario="heal-flapping.yaml",
        symptom="false positives outside partitions",
        value=lambda m: float(m["false_positives"]),
        reproduced_above=100,
        absent_at_most=25,
    ),
    Case(
        id="quick-restart",
        source="moby#47728",
        backend="sim",
        scenario="quick-restart.yaml",
        symptom="endpoint commits never seen by every peer",
        value=_unconverged,
        reproduced_above=0,
        absent_at_most=0,
    ),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One case run under both variants."""

    case: Case
    docker: float | None
    default: float | None
    error: str = ""

    @property
    def reproduced(self) -> bool:
        return self.docker is not None and self.docker > self.case.reproduced_above

    @property
    def absent(self) -> bool:
        return self.default is not None and self.default <= self.case.absent_at_most

    @property
    def ok(self) -> bool:
        return not self.error and self.reproduced and self.absent


def scenario_path(case: Case) -> Path:
    for d in SCENARIO_DIRS:
        p = d / case.scenario
        if p.is_file():
            return p
    raise FileNotFoundError(f"{case.scenario}: not found in {', '.join(map(str, SCENARIO_DIRS))}")


def run_case(case: Case, out: Path) -> Outcome:
    """Run ``case`` under ``docker`` and ``overlaysim``; results in ``out/<id>/<variant>``."""
    from overlaysim.scenario.loader import load_scenario

    values: dict[str, float] = {}
    for variant in ("docker", "overlaysim"):
        sc = load_scenario(scenario_path(case), [f"protocol.variant={variant}"])
        dest = out / case.id / variant
        if case.backend == "sim":
            from overlaysim.sim.runner import run_simulation as run
        else:
            from overlaysim.emu.runner import run_emulation as run
        status = run(sc, dest, seed=sc.seed, progress=False)
        if status != "complete":
            return Outcome(case, values.get("docker"), None, f"{variant} run {status}")
        metrics = json.loads((dest / "metrics.json").read_text())
        values[variant] = case.value(metrics)
    return Outcome(case, values["docker"], values["overlaysim"])


def table(outcomes: list[Outcome]) -> str:
    """The printed report: one row per case."""
    rows = [("case", "source", "symptom", "docker", "default", "")]
    for o in outcomes:
        d = "-" if o.docker is None else f"{o.docker:g}"
        f = "-" if o.default is None else f"{o.default:g}"
        rows.append(
            (
                o.case.id,
                o.case.source,
                o.case.symptom,
                f"{d} ({'reproduced' if o.reproduced else 'NOT reproduced'})",
                f"{f} ({'absent' if o.absent else 'PRESENT'})",
                o.error or ("ok" if o.ok else "FAIL"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
