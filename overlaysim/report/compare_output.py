"""A comparison written out: the terminal table, ``compare.json`` and ``compare.png``
(the timing distributions as CDFs, one panel per side's sample).

The comparison itself (samples, KS verdicts, ratios) is :mod:`overlaysim.report.compare`;
this module only presents it. Reference: ``docs/compare.md``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from rich.table import Table

from overlaysim.metrics.atomic import atomic_write_bytes, json_bytes
from overlaysim.metrics.stats import pct
from overlaysim.report.compare import (
    MIN_SAMPLES,
    RTT_FLOOR_MS,
    RTT_TOLERANCE,
    Comparison,
    RunInfo,
)
from overlaysim.report.plots import DPI, STYLE

COMPARE_JSON = "compare.json"
COMPARE_PNG = "compare.png"
FIGSIZE = (16.0, 7.0)  # inches: two panels side by side, 1600x700 px at DPI


def _s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3g} s" if x >= 1 else f"{x * 1000:.3g} ms"


def _stat(values: tuple[float, ...]) -> tuple[float | None, float | None]:
    return pct(values, 50), pct(values, 95)


def _num(x: float | None, unit: str) -> str:
    if x is None:
        return "—"
    text = f"{x:.3g}" if x != int(x) or abs(x) >= 1e4 else f"{int(x)}"
    return f"{text} {unit}".strip()


_VERDICT_STYLE = {"agree": "green", "differ": "bold red", "too few samples": "yellow"}


def comparison_table(c: Comparison) -> Table:
    """A rich table: one row per timing metric (n, median, p95, KS) and per scalar.

    Each cell holds ``A / B`` so the table fits an 80-column terminal.
    """
    table = Table(title=f"A: {c.a.label}  vs  B: {c.b.label}", title_style="bold")
    table.add_column("metric", no_wrap=True)
    for col in ("n A / B", "median A / B", "p95 A / B", "KS p"):
        table.add_column(col, justify="right")
    table.add_column("verdict")
    for d in c.distributions:
        med_a, p95_a = _stat(d.a)
        med_b, p95_b = _stat(d.b)
        table.add_row(
            d.label,
            f"{len(d.a)} / {len(d.b)}",
            f"{_s(med_a)} / {_s(med_b)}",
            f"{_s(p95_a)} / {_s(p95_b)}",
            "—" if d.p_value is None else f"{d.p_value:.2g}",
            f"[{_VERDICT_STYLE[d.verdict]}]{d.verdict}[/]",
        )
    if c.rtts:
        table.add_section()
    for r in c.rtts:
        table.add_row(
            r.label,
            f"{r.samples_a} / {r.samples_b}",
            f"{_num(r.a, 'ms')} / {_num(r.b, 'ms')}",
            "",
            "" if r.ratio is None else f"B/A {r.ratio:.2f}",
            f"[{_VERDICT_STYLE[r.verdict]}]{r.verdict}[/]"
            + (" (floor)" if r.verdict == "agree" and not r.within_tolerance else ""),
        )
    table.add_section()
    for s in c.scalars:
        ratio = "—" if s.ratio is None else f"B/A {s.ratio:.2f}"
        table.add_row(s.label, "", f"{_num(s.a, s.unit)} / {_num(s.b, s.unit)}", "", "", ratio)
    if c.lag_a is not None or c.lag_b is not None:  # an emulation on either side
        table.add_section()
        for label, key in (("step lag max", "steps_max_s"), ("timer lateness p99", "timers_p99_s")):
            table.add_row(label, "", f"{_lag(c.lag_a, key)} / {_lag(c.lag_b, key)}", "", "", "")
        table.add_row("emulator", "", f"{_load(c.lag_a)} / {_load(c.lag_b)}", "", "", "")
    return table


def _lag(side: Any, key: str) -> str:
    """One side's lag number; the simulator measures none (it has no wall clock)."""
    return "not measured" if side is None else _s(side.get(key))


def _load(side: Any) -> str:
    if side is None:
        return "—"
    return "[bold red]overloaded[/]" if side["overloaded"] else "kept up"


def comparison_dict(c: Comparison) -> dict[str, Any]:
    """Everything in the comparison as plain JSON-able data (``compare.json``)."""

    def side(values: tuple[float, ...]) -> dict[str, Any]:
        med, p95 = _stat(values)
        return {"n": len(values), "median": med, "p95": p95, "samples": list(values)}

    def info(r: RunInfo) -> dict[str, Any]:
        return {
            "path": r.path,
            "name": r.name,
            "backend": r.backend,
            "seed": r.seed,
            "status": r.status,
        }

    return {
        "a": info(c.a),
        "b": info(c.b),
        "alpha": c.alpha,
        "min_samples": MIN_SAMPLES,
        "distributions": [
            {
                "metric": d.metric,
                "label": d.label,
                "unit": "s",
                "a": side(d.a),
                "b": side(d.b),
                "ks_statistic": d.statistic,
                "p_value": d.p_value,
                "verdict": d.verdict,
            }
            for d in c.distributions
        ],
        "scalars": [
            {
                "metric": s.metric,
                "label": s.label,
                "unit": s.unit,
                "a": s.a,
                "b": s.b,
                "ratio_b_over_a": s.ratio,
            }
            for s in c.scalars
        ],
        "rtt_ms": [
            {
                "sites": r.sites,
                "a_median": r.a,
                "b_median": r.b,
                "samples_a": r.samples_a,
                "samples_b": r.samples_b,
                "ratio_b_over_a": r.ratio,
                "tolerance": RTT_TOLERANCE,
                "floor_ms": RTT_FLOOR_MS,
                "within_tolerance": r.within_tolerance,
                "verdict": r.verdict,
            }
            for r in c.rtts
        ],
        "overall": {"verdict": c.overall, "differ": c.differing, "summary": c.overall_line()},
        "warnings": list(c.warnings),
        "since_s": c.since,
        # each side's measured emulator lag (null: not measured, e.g. the simulator)
        "emulator_lag": {"a": c.lag_a, "b": c.lag_b},
    }


# --- output: figure --------------------------------------------------------------------


def _cdf(ax: Axes, values: tuple[float, ...], label: str, **kw: Any) -> None:
    xs = np.sort(np.asarray(values, dtype=float))
    ys = np.arange(1, len(xs) + 1) / len(xs)
    # Start at 0 so the first step rises like the others; markers keep tiny samples visible.
    ax.step(
        np.concatenate([xs[:1], xs]), np.concatenate([[0.0], ys]), where="post", label=label, **kw
    )
    if len(xs) <= 30:
        ax.plot(xs, ys, ls="none", marker="o", ms=7, color=kw.get("color"))


def _legend_label(side: str, what: str, values: tuple[float, ...]) -> str:
    head = f"{side} {what}".strip()
    if not values:
        return f"{head}: none"
    return f"{head}: n={len(values)}, median={_s(float(np.median(values)))}"


def _panel(
    ax: Axes, c: Comparison, metrics: list[str], title: str, xlabel: str, empty: str
) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of events")
    by_key = {d.metric: d for d in c.distributions}
    colors = mpl.colormaps["tab10"].colors
    drawn = []
    for i, key in enumerate(metrics):
        d = by_key[key]
        what = d.label.split(": ")[-1] if len(metrics) > 1 else ""
        for side, values, ls in (("A", d.a, "-"), ("B", d.b, "--")):
            label = _legend_label(side, what, values)
            if values:
                _cdf(ax, values, label, color=colors[i], ls=ls)
                drawn.extend(values)
            else:  # keep the side in the legend so its absence is visible
                ax.plot([], [], color=colors[i], ls=ls, label=label)
    if not drawn:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, fontsize=20)
        return
    positive = [v for v in drawn if v > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_xscale("log")
        ax.set_xlabel(xlabel + ", log scale")
    else:
        ax.set_xlim(0, max(drawn) * 1.05 or 1.0)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="best", fontsize=13)


def draw_comparison(c: Comparison, fig: Figure) -> None:
    """Two panels: CDF of endpoint convergence latency; CDF of crash detection times."""
    left, right = fig.subplots(1, 2)
    window = f"   (events from t = {c.since:g} s)" if c.since else ""
    fig.suptitle(f"A (solid): {c.a.label}   vs   B (dashed): {c.b.label}{window}", fontsize=18)
    _panel(
        left,
        c,
        ["convergence.all"],
        f"Endpoint convergence — {_verdict_of(c, 'convergence.all')}",
        "time until every target holds the entry (s)",
        "no converged commits",
    )
    _panel(
        right,
        c,
        ["detection.first_suspect", "detection.all_dead"],
        "Crash detection",
        "time from crash (s)",
        "no crash detected",
    )


def _verdict_of(c: Comparison, key: str) -> str:
    d = next(d for d in c.distributions if d.metric == key)
    return d.verdict if d.p_value is None else f"{d.verdict} (KS p={d.p_value:.2g})"


def comparison_png(c: Comparison) -> bytes:
    """The comparison figure as PNG bytes (fixed size and dpi, no Software metadata)."""
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw_comparison(c, fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def default_out_dir(run_a: Path | str, run_b: Path | str) -> Path:
    """``RUN_B/compare-with-<folder name of RUN_A>``."""
    return Path(run_b) / f"compare-with-{Path(run_a).resolve().name}"


def write_comparison(c: Comparison, out_dir: Path | str) -> list[Path]:
    """Write ``compare.json`` and ``compare.png`` into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, png = out / COMPARE_JSON, out / COMPARE_PNG
    atomic_write_bytes(js, json_bytes(comparison_dict(c)))
    atomic_write_bytes(png, comparison_png(c))
    return [js, png]
