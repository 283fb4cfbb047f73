"""Fidelity check: do two runs of a scenario (e.g. simulator vs emulation) agree?

Each timing metric is a sample of per-event values (one latency per converged commit,
one detection time per crash, one visibility time per join). Two runs are compared
metric by metric with a two-sample Kolmogorov–Smirnov test: ``agree`` when the test
cannot tell the samples apart at level ``alpha`` (p ≥ alpha), ``differ`` otherwise.
Below :data:`MIN_SAMPLES` values on either side the test is not run. Scalar metrics
(overhead, false positives) are shown side by side with their ratio B / A.

Writing a comparison out (table, ``compare.json``, ``compare.png``) is
:mod:`overlaysim.report.compare_output`. Reference: ``docs/compare.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.stats import ks_2samp

from overlaysim.errors import UserError
from overlaysim.metrics.finalize import metrics_for
from overlaysim.metrics.lag import METRIC as LAG
from overlaysim.metrics.lag import lag_warnings, overload_reasons
from overlaysim.metrics.membership import failure_detections, join_visibilities
from overlaysim.metrics.results import MANIFEST, Run, load_run
from overlaysim.metrics.tables import frame

#: Fewer values than this on either side: no KS test (its p-value means little).
MIN_SAMPLES = 5
#: Tables a run must hold to be compared (the timing samples come from them).
REQUIRED_FILES = ("events.csv", "convergence.csv")

Verdict = Literal["agree", "differ", "too few samples"]
#: Round-trip times per site pair agree when B's median is within this of A's ...
RTT_TOLERANCE = 0.15
#: ... or within this many ms: the emulated host stack (veth, bridge, VXLAN, ping's own
#: timing) adds a round trip of its own that the simulator's model has not: 0.16-0.17 ms
#: median on two-site-wan with no delay line (load 27-47, 2 vCPUs), more than 15 % of a
#: sub-2 ms LAN round trip. The delay line's own overhead is calibrated out
#: (``overlaysim.emu.delaycal``), so this floor covers the stack only; it was 1 ms before.
RTT_FLOOR_MS = 0.3


class CompareError(UserError):
    """A folder cannot be compared (missing, not a results folder, or incomplete)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DistributionComparison:
    """One timing metric in both runs, with the KS test result."""

    metric: str  # stable key, e.g. "convergence.add"
    label: str  # human text, e.g. "endpoint convergence (add)"
    a: tuple[float, ...]
    b: tuple[float, ...]
    statistic: float | None  # KS D, None when not tested
    p_value: float | None
    verdict: Verdict

    @property
    def tested(self) -> bool:
        return self.verdict != "too few samples"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalarComparison:
    """One summary number in both runs; ``ratio`` is B / A (None when A is 0 and B is not)."""

    metric: str
    label: str
    unit: str
    a: float | None
    b: float | None
    ratio: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RttComparison:
    """Median round trip between two sites in both runs (``reachability.csv``'s ``rtt_ms``).

    ``agree`` when B's median is within :data:`RTT_TOLERANCE` of A's (or within
    :data:`RTT_FLOOR_MS`); one side without samples is ``too few samples``.
    """

    sites: str
    a: float | None
    b: float | None
    samples_a: int
    samples_b: int

    @property
    def ratio(self) -> float | None:
        return _ratio(self.a, self.b)

    @property
    def verdict(self) -> Verdict:
        if self.a is None or self.b is None:
            return "too few samples"
        close = abs(self.b - self.a) <= max(RTT_TOLERANCE * self.a, RTT_FLOOR_MS)
        return "agree" if close else "differ"

    @property
    def within_tolerance(self) -> bool | None:
        """Whether the medians agree by :data:`RTT_TOLERANCE` alone (no floor needed)."""
        if self.a is None or self.b is None:
            return None
        return abs(self.b - self.a) <= RTT_TOLERANCE * self.a

    @property
    def label(self) -> str:
        return f"RTT {self.sites}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInfo:
    """What identifies a side of the comparison."""

    path: str
    folder: str
    name: str
    backend: str
    seed: Any
    status: str

    @property
    def label(self) -> str:
        return f"{self.folder} ({self.backend}, seed {self.seed})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """The result of :func:`compare_runs`."""

    a: RunInfo
    b: RunInfo
    alpha: float
    distributions: tuple[DistributionComparison, ...]
    scalars: tuple[ScalarComparison, ...]
    warnings: tuple[str, ...] = field(default=())
    rtts: tuple[RttComparison, ...] = field(default=())
    #: Timing samples count only events at or after this scenario time (s).
    since: float = 0.0
    #: Each side's measured emulator lag (:func:`lag_side`), None when not measured.
    lag_a: Mapping[str, Any] | None = None
    lag_b: Mapping[str, Any] | None = None

    @property
    def differing(self) -> list[str]:
        dists = [d.label for d in self.distributions if d.verdict == "differ"]
        return dists + [r.label for r in self.rtts if r.verdict == "differ"]

    @property
    def overall(self) -> str:
        """``agree``, ``differ``, or ``too few samples`` when nothing could be tested."""
        tested = [d for d in self.distributions if d.tested]
        tested += [r for r in self.rtts if r.verdict != "too few samples"]  # type: ignore[misc]
        if not tested:
            return "too few samples"
        return "differ" if self.differing else "agree"

    def overall_line(self) -> str:
        """One sentence with the overall verdict."""
        checks = [*self.distributions, *self.rtts]
        tested = sum(d.verdict != "too few samples" for d in checks)
        untested = len(checks) - tested
        skipped = f"; {untested} not tested (fewer than {MIN_SAMPLES} samples)" if untested else ""
        window = f" (events from t = {self.since:g} s)" if self.since else ""
        if self.overall == "too few samples":
            return (
                f"overall: too few samples — no metric has {MIN_SAMPLES}+ values on both "
                f"sides{window}"
            )
        if self.overall == "differ":
            return (
                f"overall: differ — {len(self.differing)} of {tested} tested metrics differ at "
                f"alpha={self.alpha:g}{window} ({'; '.join(self.differing)}){skipped}"
            )
        return (
            f"overall: agree — all {tested} tested metrics agree at alpha={self.alpha:g}"
            f"{window}{skipped}"
        )


# --- loading ---------------------------------------------------------------------------


def load_comparable(path: Path | str) -> Run:
    """Load a results folder, or raise :class:`CompareError` saying what is missing."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: no such folder")
    if not path.is_dir():
        raise CompareError(f"{path}: not a folder")
    if not (path / MANIFEST).is_file():
        raise CompareError(f"{path}: not a results folder (no {MANIFEST})")
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        try:
            status = load_run(path).status
        except ValueError:  # unreadable manifest: report the missing tables anyway
            status = "unknown"
        raise CompareError(
            f"{path}: incomplete results folder (status {status}; missing {', '.join(missing)})"
        )
    try:
        return load_run(path)
    except ValueError as exc:  # malformed JSON or CSV
        raise CompareError(f"{path}: unreadable results folder: {exc}") from exc


def _duration(run: Run) -> float:
    m = run.metrics or {}
    if m.get("duration_s") is not None:
        return float(m["duration_s"])
    return float((run.manifest.get("scenario") or {}).get("duration") or 0.0)


def _metrics(run: Run) -> Mapping[str, Any]:
    """metrics.json, or the same numbers recomputed from the tables when it is absent."""
    if run.metrics is not None:
        return run.metrics
    m = run.manifest
    nodes = m.get("nodes") or len(set(run.events["subject"][run.events["kind"] == "node_start"]))
    return metrics_for(run, duration_s=_duration(run), nodes=int(nodes or 1))


# --- samples ---------------------------------------------------------------------------


def _finite(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def samples(
    run: Run, ops: list[str] | None = None, *, dns: bool | None = None, since: float = 0.0
) -> dict[str, tuple[str, np.ndarray]]:
    """Per-event timing samples of a run, in seconds: ``{metric: (label, values)}``.

    ``ops`` lists the commit ops to break convergence down by (default: those present).
    ``dns`` adds the service-DNS samples (default: when the run has a ``dns`` table).
    ``since`` keeps only events at or after that scenario time (a commit's ``t_commit``,
    a crash's or join's ``t``, a DNS change's ``t``): e.g. past a boot burst that the
    backends play differently.
    """
    conv = run.convergence
    ok = conv[(conv["status"] == "converged") & (conv["t_commit"] >= since)]
    ops = sorted(set(ok["op"])) if ops is None else ops
    out: dict[str, tuple[str, np.ndarray]] = {
        "convergence.all": ("convergence, all ops", _finite(ok["latency_s"]))
    }
    for op in ops:
        out[f"convergence.{op}"] = (
            f"convergence, {op}",
            _finite(ok.loc[ok["op"] == op, "latency_s"]),
        )
    duration = _duration(run)
    fd = failure_detections(run.events, duration)
    fd = fd[fd["t"] >= since]
    out["detection.first_suspect"] = ("crash: first suspicion", _finite(fd["first_suspect_s"]))
    out["detection.all_dead"] = ("crash: all dead", _finite(fd["all_dead_s"]))
    jv = join_visibilities(run.events, duration)
    jv = jv[jv["t"] >= since]
    out["join.visibility"] = ("join visibility", _finite(jv["visibility_s"]))
    if dns if dns is not None else run.dns is not None:
        d = run.dns if run.dns is not None else frame("dns")
        d = d[(d["status"] == "converged") & (d["t"] >= since)]
        for metric, label in (
            ("dns_convergence_s", "service DNS convergence"),
            ("stale_dns_window_s", "stale DNS window"),
        ):
            out[f"dns.{metric}"] = (label, _finite(d.loc[d["metric"] == metric, "value_s"]))
    return out


def ks_verdict(
    a: np.ndarray, b: np.ndarray, alpha: float
) -> tuple[float | None, float | None, Verdict]:
    """KS statistic, p-value and verdict for two samples (no test below MIN_SAMPLES)."""
    if len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES:
        return None, None, "too few samples"
    res = ks_2samp(a, b)
    p = float(res.pvalue)
    return float(res.statistic), p, "agree" if p >= alpha else "differ"


# --- comparing -------------------------------------------------------------------------

_SCALARS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("overhead.bytes_per_node_per_s", "bytes sent per node", "B/s",
     ("overhead", "bytes_per_node_per_s")),
    ("overhead.msgs_per_node_per_s", "messages sent per node", "msg/s",
     ("overhead", "msgs_per_node_per_s")),
    # not in any timing sample (a commit that never converged has no latency): a backend
    # that leaves commits unconverged shows here, not in the KS rows
    ("endpoint_convergence_s.unconverged", "commits never converged", "",
     ("endpoint_convergence_s", "unconverged")),
    ("false_positives", "false positives", "", ("false_positives",)),
    ("false_positives_partitioned", "false pos. partitioned", "",
     ("false_positives_partitioned",)),
    ("false_suspicions", "false suspicions", "", ("false_suspicions",)),
)  # fmt: skip


def _dig(m: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    cur: Any = m
    for k in keys:
        if not isinstance(cur, Mapping) or cur.get(k) is None:
            return None
        cur = cur[k]
    return float(cur)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if a == b:
        return 1.0  # includes 0 vs 0: the runs agree
    return b / a if a else None


def _info(run: Run) -> RunInfo:
    m = run.manifest
    return RunInfo(
        path=str(run.path),
        folder=run.path.resolve().name,
        name=run.name,
        backend=str(m.get("backend", "?")),
        seed=m.get("seed"),
        status=run.status,
    )


def _warnings(a: Run, b: Run) -> list[str]:
    out = []
    for side, run in (("A", a), ("B", b)):
        if run.status != "complete":
            out.append(f"run {side} ({run.path}) has status {run.status}")
    if a.name != b.name:
        out.append(f"different scenarios: {a.name!r} vs {b.name!r}")
    da, db = _duration(a), _duration(b)
    if da != db:
        out.append(f"different durations: {da:g} s vs {db:g} s")
    from overlaysim.report.summary import delay_warnings

    for side, run in (("A", a), ("B", b)):
        m = _metrics(run)
        out += [f"run {side}: {w}" for w in lag_warnings(m) + delay_warnings(run.manifest, m)]
    return out


def lag_side(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """One side's measured emulator lag in a few numbers (None: not measured, as on
    the simulator, which has no wall clock)."""
    lag = metrics.get(LAG)
    if not lag:
        return None
    steps, timers = lag.get("steps") or {}, lag.get("timers") or {}
    return {
        "steps_max_s": steps.get("max_s"),
        "steps_p99_s": steps.get("p99_s"),
        "timers_p99_s": timers.get("p99_s"),
        "timers_max_s": timers.get("max_s"),
        "threshold_s": lag.get("threshold_s"),
        "overloaded": bool(overload_reasons(lag)),
    }


def compare_runs(a: Run, b: Run, alpha: float = 0.05, *, since: float = 0.0) -> Comparison:
    """Compare run ``b`` with run ``a`` (the reference) metric by metric; timing samples
    count only events at or after ``since`` s (scalars are over the whole run)."""
    if not 0.0 < alpha < 1.0:
        raise CompareError(f"alpha must be between 0 and 1, got {alpha}")
    if not since >= 0.0:
        raise CompareError(f"since must be a scenario time of 0 s or more, got {since}")
    conv_ops = set()
    for run in (a, b):
        c = run.convergence
        conv_ops |= set(c.loc[c["status"] == "converged", "op"])
    ops = sorted(conv_ops)
    dns = a.dns is not None or b.dns is not None  # one side without services: no samples
    sa, sb = samples(a, ops, dns=dns, since=since), samples(b, ops, dns=dns, since=since)
    dists = []
    for key, (label, va) in sa.items():
        vb = sb[key][1]
        stat, p, verdict = ks_verdict(va, vb, alpha)
        dists.append(
            DistributionComparison(
                metric=key,
                label=label,
                a=tuple(map(float, va)),
                b=tuple(map(float, vb)),
                statistic=stat,
                p_value=p,
                verdict=verdict,
            )
        )
    ma, mb = _metrics(a), _metrics(b)
    scalars = []
    for key, label, unit, path in _SCALARS:
        xa, xb = _dig(ma, path), _dig(mb, path)
        scalars.append(
            ScalarComparison(metric=key, label=label, unit=unit, a=xa, b=xb, ratio=_ratio(xa, xb))
        )
    return Comparison(
        a=_info(a),
        b=_info(b),
        alpha=alpha,
        distributions=tuple(dists),
        scalars=tuple(scalars),
        warnings=tuple(_warnings(a, b)),
        rtts=_rtts(ma, mb),
        since=float(since),
        lag_a=lag_side(ma),
        lag_b=lag_side(mb),
    )


def _rtts(ma: Mapping[str, Any], mb: Mapping[str, Any]) -> tuple[RttComparison, ...]:
    ra, rb = ma.get("rtt_ms") or {}, mb.get("rtt_ms") or {}
    out = []
    for sites in sorted(set(ra) | set(rb)):
        a, b = ra.get(sites) or {}, rb.get(sites) or {}
        out.append(
            RttComparison(
                sites=sites,
                a=a.get("median"),
                b=b.get("median"),
                samples_a=int(a.get("samples", 0)),
                samples_b=int(b.get("samples", 0)),
            )
        )
    return tuple(out)
