"""The emulator's fidelity guard: how far behind its own schedule a live run fell.

An emulation runs on real time on a shared machine. When the machine cannot keep up,
two things slip, and both are measured (never assumed):

* **step lag** — each scenario step is applied at wall-clock scenario time
  ``t - t0``; its lag is how much later than its planned time it started (an earlier
  slow step, or a starved runner, delays it);
* **timer lateness** — each agent's protocol timer (probes, gossip, suspicion
  timeouts) is due at a deadline; its lateness is how long after the deadline the agent
  actually ran it (agents log it, ``timer_lag`` lines, ``docs/agent.md``).

A third measurement names the cause of step lag when it is one slow operation rather
than a busy machine: **agent operations** — how long each container call the runner
made to an agent (start a task, detach it) took. A service step's next task change
waits for the previous one, so one operation longer than the scenario's
``service_timing.task_interval`` makes the steps after it late while every agent's
timers stay on time.

:func:`lag_report` folds them into the ``emulator_lag`` object of ``metrics.json``
(count, mean, p50/p99/max, the per-step list, timer lateness per agent and per
second, the slow operations and the one that held the latest step). Above
:data:`OVERLOAD_THRESHOLD_S` — step lag at its maximum, timer lateness at its 99th
percentile — the run is marked ``overloaded`` and :func:`lag_warnings` gives the plain
warning that the run summary and ``overlaysim compare`` print, naming the slow
operation when one held the steps up.

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


@dataclass(frozen=True, slots=True)
class AgentOp:
    """One container call the runner made to a host's agent, and how long it took."""

    at: float  # scenario time the call began
    host: str
    op: str  # the control verb: task, connect, disconnect, leave_network
    container: str  # "" for a host's own call (leave_network)
    network: str
    took_s: float

    @property
    def end(self) -> float:
        return self.at + self.took_s


#: The words of a control verb in a warning.
_VERB = {"task": "start", "connect": "attach", "disconnect": "detach", "leave_network": "leave"}
#: How many slow operations the report lists (the slowest first).
_SLOW_LISTED = 10


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


def _op_dict(op: AgentOp) -> dict[str, Any]:
    return {
        "at": _r(op.at),
        "host": op.host,
        "op": op.op,
        "container": op.container,
        "network": op.network,
        "took_s": _r(op.took_s),
    }


def held_by(steps: Sequence[StepLag], ops: Sequence[AgentOp]) -> dict[str, Any] | None:
    """The slowest agent operation the latest step waited for, or None.

    The step was due at ``at`` and began ``lag_s`` later; the operations running in
    that window (begun before it began, ended after it was due) are what it waited
    for, directly or through the steps before it, which wait for each other.
    """
    if not steps:
        return None
    worst = max(steps, key=lambda s: s.lag_s)
    if worst.lag_s <= 0.0:
        return None
    began = worst.at + worst.lag_s
    waited = [o for o in ops if o.at < began and o.end > worst.at]
    if not waited:
        return None
    op = max(waited, key=lambda o: (o.took_s, -o.at))
    return {**_op_dict(op), "step_at": _r(worst.at), "step_lag_s": _r(worst.lag_s)}


def ops_summary(
    ops: Sequence[AgentOp], budget_s: float | None, threshold_s: float
) -> dict[str, Any]:
    """Count, p50/max of agent operations and the slowest of those above the budget
    (``service_timing.task_interval`` when the scenario has service steps, else the
    overload threshold)."""
    took = [o.took_s for o in ops]
    limit = threshold_s if budget_s is None else budget_s
    slow = sorted((o for o in ops if o.took_s > limit), key=lambda o: (-o.took_s, o.at))
    return {
        "count": len(took),
        "p50_s": _r(pct(took, 50)),
        "max_s": _r(vmax(took)),
        "budget_s": budget_s,
        "slow_count": len(slow),
        "slow": [_op_dict(o) for o in slow[:_SLOW_LISTED]],
    }


def lag_report(
    steps: Sequence[StepLag],
    timers: Sequence[TimerLate],
    threshold_s: float = OVERLOAD_THRESHOLD_S,
    *,
    ops: Sequence[AgentOp] | None = None,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """The ``emulator_lag`` object: the measurements and the overload verdict.

    ``ops``: the agent operations timed by the runner (None: not timed, no ``ops``
    object); ``budget_s``: the time an operation has before the next step is due
    (``service_timing.task_interval``; None when the scenario has no service steps).
    """
    report: dict[str, Any] = {
        "threshold_s": threshold_s,
        "steps": step_summary(steps),
        "timers": timer_summary(timers),
    }
    if ops is not None:
        report["ops"] = ops_summary(ops, budget_s, threshold_s)
        report["steps"]["held_by"] = held_by(steps, ops)
    report["overloaded"] = bool(overload_reasons(report))
    return report


def _held_phrase(held: Mapping[str, Any], budget: float | None) -> str:
    verb = _VERB.get(str(held.get("op")), str(held.get("op")))
    if held.get("container"):
        what = f"{verb} {held['container']}" + (
            f" ({held['network']})" if held.get("network") else ""
        )
    else:
        what = f"{verb} network {held.get('network')}"
    than = (
        f"longer than service_timing.task_interval ({budget:g} s)"
        if budget is not None
        else "and the timeline waited for it"
    )
    return (
        f"the agent on {held.get('host')} took {held.get('took_s') or 0.0:.2f} s to {what} "
        f"at {held.get('at') or 0.0:.2f} s, {than}"
    )


def slow_op_cause(report: Mapping[str, Any]) -> str | None:
    """The phrase naming the slow agent operation that held the latest step, if it
    explains that step's lag (the step waited for it); None otherwise."""
    held = (report.get("steps") or {}).get("held_by")
    if not held:
        return None
    budget = (report.get("ops") or {}).get("budget_s")
    return _held_phrase(held, budget)


def overload_reasons(report: Mapping[str, Any]) -> list[str]:
    """What in a lag report is above its threshold, one phrase each (empty: kept up)."""
    threshold = float(report.get("threshold_s") or OVERLOAD_THRESHOLD_S)
    steps = report.get("steps") or {}
    timers = report.get("timers") or {}
    out = []
    if (steps.get("max_s") or 0.0) > threshold:
        late = (
            f"scenario steps started up to {steps['max_s']:.2f} s late "
            f"(p99 {steps.get('p99_s') or 0.0:.2f} s over {steps.get('count', 0)} steps)"
        )
        cause = slow_op_cause(report)
        out.append(late if cause is None else f"{late}: {cause}")
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
    timers = report.get("timers") or {}
    timers_on_time = (timers.get("p99_s") or 0.0) <= threshold
    if slow_op_cause(report) is not None and timers_on_time:
        # the machine kept up (timers on time): one agent operation was the slow part
        return [
            "the emulator fell behind the scenario — "
            + "; ".join(reasons)
            + f"; above the {threshold:g} s threshold. The agents' protocol timers were on "
            f"time (p99 {timers.get('p99_s') or 0.0:.2f} s late), so the machine kept up: "
            "the slow agent operation held up the steps after it, and the times measured "
            "from them are shifted; this run's numbers are not trustworthy."
        ]
    return [
        "the emulator was overloaded — "
        + "; ".join(reasons)
        + f", above the {threshold:g} s threshold. The machine could not keep up with the "
        "scenario; this run's numbers are not trustworthy."
    ]
