"""The emulator's fidelity guard: how far behind its own schedule a live run fell.

An emulation runs on real time on a shared machine. When the machine cannot keep up,
two things slip, and both are measured (never assumed):

* **step lag** — each scenario step is applied at wall-clock scenario time
  ``t - t0``; its lag is how much later than its planned time it started (an earlier
  slow step, or a starved runner, delays it);
* **timer lateness** — each agent's protocol timer (probes, gossip, suspicion
  timeouts) is due at a deadline; its lateness is how long after the deadline the agent
  actually ran it (agents log it, ``timer_lag`` lines, ``docs/agent.md``).

:func:`lag_report` folds both into the ``emulator_lag`` object of ``metrics.json``
(count, mean, p50/p99/max, the per-step list, timer lateness per agent and per
second). Above :data:`OVERLOAD_THRESHOLD_S` — step lag at its maximum, timer lateness
at its 99th percentile — the run is marked ``overloaded`` and :func:`lag_warnings`
gives the plain warning that the run summary and ``overlaysim compare`` print.

The simulator writes no ``emulator_lag``: it has no wall clock, so there is nothing to
measure (its steps run at their simulated time by construction). An absent object
means "not measured", never "no lag".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overlaysim.metrics.stats import mean, pct, vmax

#: Seconds. Above this (step lag max, or timer lateness p99) the emulator could not
#: keep up with the scenario and its numbers are not trustworthy: a timer half a second
#: late is half a probe interval, enough to turn a slow node into a suspect.
OVERLOAD_THRESHOLD_S = 0.5
#: Key of the lag object in ``metrics.json`` (and in the manifest's ``outcome``).
METRIC = "emulator_lag"
#: Rounding of the seconds written (0.1 ms): stable text, far below the threshold.
_DIGITS = 4


@dataclass(frozen=True, slots=True)
class StepLag:
    """One scenario step: its planned time, what it did, and how late it started."""

    at: float
    action: str
    lag_s: float


@dataclass(frozen=True, slots=True)
class TimerLate:
    """One agent's ``timer_lag`` line: when it was written and the lateness it lists."""

    t: float  # scenario time of the line (the end of the second it covers)
    node: str
    late_s: tuple[float, ...]


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), _DIGITS)


def step_summary(steps: Sequence[StepLag]) -> dict[str, Any]:
    """Count, mean, p50, p99 and max of step lag, and every step's lag."""
    lags = [s.lag_s for s in steps]
    return {
        "count": len(lags),
        "mean_s": _r(mean(lags)),
        "p50_s": _r(pct(lags, 50)),
        "p99_s": _r(pct(lags, 99)),
        "max_s": _r(vmax(lags)),
        "per_step": [{"at": _r(s.at), "action": s.action, "lag_s": _r(s.lag_s)} for s in steps],
    }


def timer_summary(lines: Sequence[TimerLate]) -> dict[str, Any]:
    """Fires, agents, p50/p99/max of timer lateness; the worst per agent and per second."""
    values = [x for line in lines for x in line.late_s]
    per_agent: dict[str, float] = {}
    per_second: dict[int, float] = {}
    for line in lines:
        if not line.late_s:
            continue
        worst = max(line.late_s)
        per_agent[line.node] = max(per_agent.get(line.node, 0.0), worst)
        sec = max(0, math.floor(line.t))
        per_second[sec] = max(per_second.get(sec, 0.0), worst)
    return {
        "fires": len(values),
        "agents": len(per_agent),
        "mean_s": _r(mean(values)),
        "p50_s": _r(pct(values, 50)),
        "p99_s": _r(pct(values, 99)),
        "max_s": _r(vmax(values)),
        "per_agent_max_s": {n: _r(v) for n, v in sorted(per_agent.items())},
        # [second, worst lateness of any timer line written in that second]
        "per_second_max_s": [[s, _r(v)] for s, v in sorted(per_second.items())],
    }


def lag_report(
    steps: Sequence[StepLag],
    timers: Sequence[TimerLate],
    threshold_s: float = OVERLOAD_THRESHOLD_S,
) -> dict[str, Any]:
    """The ``emulator_lag`` object: both measurements and the overload verdict."""
    report: dict[str, Any] = {
        "threshold_s": threshold_s,
        "steps": step_summary(steps),
        "timers": timer_summary(timers),
    }
    report["overloaded"] = bool(overload_reasons(report))
    return report


def overload_reasons(report: Mapping[str, Any]) -> list[str]:
    """What in a lag report is above its threshold, one phrase each (empty: kept up)."""
    threshold = float(report.get("threshold_s") or OVERLOAD_THRESHOLD_S)
    steps = report.get("steps") or {}
    timers = report.get("timers") or {}
    out = []
    if (steps.get("max_s") or 0.0) > threshold:
        out.append(
            f"scenario steps started up to {steps['max_s']:.2f} s late "
            f"(p99 {steps.get('p99_s') or 0.0:.2f} s over {steps.get('count', 0)} steps)"
        )
    if (timers.get("p99_s") or 0.0) > threshold:
        out.append(
            f"agents' protocol timers fired {timers['p99_s']:.2f} s late at the 99th "
            f"percentile (max {timers.get('max_s') or 0.0:.2f} s over "
            f"{timers.get('fires', 0)} firings)"
        )
    return out


def lag_warnings(metrics: Mapping[str, Any]) -> list[str]:
    """The plain overload warning for a run's metrics (empty when it kept up or when
    lag was not measured, as in the simulator)."""
    report = metrics.get(METRIC)
    if not report:
        return []
    reasons = overload_reasons(report)
    if not reasons:
        return []
    threshold = float(report.get("threshold_s") or OVERLOAD_THRESHOLD_S)
    return [
        "the emulator was overloaded — "
        + "; ".join(reasons)
        + f", above the {threshold:g} s threshold. The machine could not keep up with the "
        "scenario; this run's numbers are not trustworthy."
    ]
