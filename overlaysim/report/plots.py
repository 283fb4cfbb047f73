"""Figures of a results folder, made to be read projected on a wall.

Large fonts, units on every axis, a title and a legend on each figure. Figures are
drawn with the Agg canvas directly (no pyplot, no global backend switch) and saved
with a fixed dpi and no "Software" metadata, so the same run gives byte-identical PNGs.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from overlaysim.metrics.atomic import atomic_write_bytes
from overlaysim.metrics.membership import view_counts
from overlaysim.metrics.records import EventKind
from overlaysim.metrics.results import PLOT_FILES, Run
from overlaysim.metrics.views import view_metrics

DPI = 100
FIGSIZE = (13.0, 7.0)  # inches: 1300x700 px at DPI
#: More subjects than this in the membership timeline are summed into one line per state.
MAX_SUBJECT_LINES = 6
#: More scenario markers than this are drawn without labels.
MAX_LABELLED_MARKERS = 14

STYLE = {
    "font.size": 18,
    "axes.titlesize": 22,
    "axes.labelsize": 20,
    "xtick.labelsize": 16,
    "ytick.labelsize": 16,
    "legend.fontsize": 16,
    "lines.linewidth": 2.8,
    "axes.grid": True,
    "grid.alpha": 0.35,
}

_MARKER_LABEL = {
    EventKind.NODE_CRASH: "crash",
    EventKind.NODE_RESTART: "restart",
    EventKind.NODE_LEAVE: "leave",
    EventKind.NODE_JOIN: "join",
    EventKind.PARTITION: "partition",
    EventKind.HEAL: "heal",
}


def _png(draw: Callable[[Figure], None]) -> bytes:
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=20)


def _title(run: Run, what: str) -> str:
    m = run.manifest
    return f"{what} — {m.get('name', '')} ({m.get('backend', '')}, seed {m.get('seed', '')})"


# --- convergence CDF -----------------------------------------------------------------


def draw_convergence_cdf(run: Run, fig: Figure) -> None:
    """CDF of endpoint convergence latency, one line per op."""
    ax = fig.add_subplot()
    conv = run.convergence
    ok = conv[conv["status"] == "converged"]
    ax.set_title(_title(run, "Endpoint convergence"))
    ax.set_xlabel("time from commit until every target holds the entry (s)")
    ax.set_ylabel("fraction of converged commits")
    if ok.empty:
        _empty(ax, "no converged commits")
        return
    positive = ok.loc[ok["latency_s"] > 0, "latency_s"]
    wide = len(positive) > 0 and positive.max() / positive.min() > 100
    for op in sorted(set(ok["op"])):
        lat = np.sort(ok.loc[ok["op"] == op, "latency_s"].to_numpy())
        unconv = int(((conv["op"] == op) & (conv["status"] == "unconverged")).sum())
        label = f"{op or '(no op)'}: n={len(lat)}, p50={np.median(lat):.3g} s"
        if unconv:
            label += f", {unconv} never converged"
        # Start from 0 so the first step is drawn as a rise, like the others.
        xs = np.concatenate([lat[:1], lat])
        ax.step(xs, np.arange(len(lat) + 1) / len(lat), where="post", label=label)
    if wide:
        ax.set_xscale("log")
        ax.set_xlabel(ax.get_xlabel() + ", log scale")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left")


# --- membership timeline ---------------------------------------------------------------


def _markers(run: Run) -> list[tuple[float, str]]:
    ev = run.events
    rows = ev[ev["kind"].isin([str(k) for k in _MARKER_LABEL])]
    return [
        (float(t), f"{_MARKER_LABEL[EventKind(k)]} {s}".strip())
        for t, k, s in zip(rows["t"], rows["kind"], rows["subject"], strict=True)
    ]


def _draw_markers(ax: Axes, markers: list[tuple[float, str]]) -> None:
    label = len(markers) <= MAX_LABELLED_MARKERS
    for t, text in markers:
        ax.axvline(t, color="0.35", linestyle=":", linewidth=1.6, zorder=0)
        if label:
            ax.annotate(
                text,
                xy=(t, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(4, -6),
                textcoords="offset points",
                rotation=90,
                va="top",
                fontsize=14,
                color="0.2",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            )


def _step(ax: Axes, t: pd.Series, y: pd.Series, t_end: float, **kw: object) -> None:
    ts = np.concatenate([[0.0], t.to_numpy(float), [t_end]])
    ys = np.concatenate([[0], y.to_numpy(), [y.iloc[-1] if len(y) else 0]])
    ax.step(ts, ys, where="post", **kw)


def draw_membership_timeline(run: Run, fig: Figure) -> None:
    """Observers holding each subject suspect/dead over time, with scenario markers."""
    ax = fig.add_subplot()
    counts = view_counts(run.events)
    t_end = _t_end(run)
    ax.set_title(_title(run, "Membership views"))
    ax.set_xlabel("time since scenario start (s)")
    ax.set_ylabel("observers holding the view")
    ax.set_xlim(0, t_end)
    if counts.empty:
        _empty(ax, "no host was suspected or declared dead")
    else:
        subjects = list(dict.fromkeys(counts["subject"]))
        if len(subjects) <= MAX_SUBJECT_LINES:
            colors = mpl.colormaps["tab10"].colors
            for i, s in enumerate(subjects):
                c = counts[counts["subject"] == s]
                col = colors[i % len(colors)]
                _step(ax, c["t"], c["dead"], t_end, color=col, label=f"{s} dead")
                _step(ax, c["t"], c["suspect"], t_end, color=col, ls="--", label=f"{s} suspect")
        else:
            total = _summed(counts)
            _step(
                ax, total["t"], total["dead"], t_end, color="tab:red", label="dead (all subjects)"
            )
            _step(
                ax,
                total["t"],
                total["suspect"],
                t_end,
                color="tab:orange",
                ls="--",
                label="suspect (all subjects)",
            )
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _draw_markers(ax, _markers(run))


def _summed(counts: pd.DataFrame) -> pd.DataFrame:
    """Sum of per-subject step functions: the count of (observer, subject) pairs."""
    wide = (
        counts.pivot_table(
            index="t", columns="subject", values=["suspect", "dead"], aggfunc="last", sort=True
        )
        .ffill()
        .fillna(0)
    )
    return pd.DataFrame(
        {
            "t": wide.index.to_numpy(float),
            "suspect": wide["suspect"].sum(axis=1).to_numpy(),
            "dead": wide["dead"].sum(axis=1).to_numpy(),
        }
    )


# --- overhead --------------------------------------------------------------------------


def _unit(peak: float) -> tuple[float, str]:
    for scale, name in ((1e6, "MB/s"), (1e3, "kB/s")):
        if peak >= scale:
            return scale, name
    return 1.0, "B/s"


def draw_overhead(run: Run, fig: Figure) -> None:
    """Control-plane bytes sent per node per second: mean and max across nodes."""
    ax = fig.add_subplot()
    tr = run.traffic
    ax.set_title(_title(run, "Control-plane overhead"))
    ax.set_xlabel("time since scenario start (s)")
    if tr.empty:
        ax.set_ylabel("bytes sent per node (B/s)")
        _empty(ax, "no traffic recorded")
        return
    nodes = int((run.metrics or {}).get("nodes") or tr["node"].nunique())
    per_s = tr.groupby("t")["bytes_sent"].agg(["sum", "max"])
    seconds = np.arange(0, int(max(per_s.index.max() + 1, _t_end(run))))
    per_s = per_s.reindex(seconds, fill_value=0)
    scale, unit = _unit(float(per_s["max"].max()))
    edges = np.arange(len(seconds) + 1, dtype=float)  # bin i covers [i, i+1) s
    mean = (per_s["sum"] / nodes / scale).to_numpy()
    ax.stairs(
        mean, edges, baseline=None, lw=STYLE["lines.linewidth"], label=f"mean over {nodes} nodes"
    )
    ax.stairs(
        per_s["max"].to_numpy() / scale,
        edges,
        baseline=None,
        ls="--",
        lw=STYLE["lines.linewidth"],
        label="busiest node",
    )
    ax.set_ylabel(f"bytes sent per node ({unit})")
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, edges[-1])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _draw_markers(ax, _markers(run))


def _t_end(run: Run) -> float:
    d = (run.metrics or {}).get("duration_s")
    if d:
        return float(d)
    times = [run.events["t"].max(), run.traffic["t"].max()]
    finite = [float(t) for t in times if pd.notna(t)]
    return max(finite + [1.0])


def draw_view_agreement(run: Run, fig: Figure) -> None:
    """Distinct membership views among up nodes over time (1: they all agree)."""
    ax = fig.add_subplot()
    t_end = _t_end(run)
    stats, series = view_metrics(run.events, t_end)
    ax.set_title(
        _title(run, "Membership view agreement")
        + f"\nall agree {100 * (stats['agreement_fraction'] or 0):.0f}% of the time, "
        f"{stats['distinct_views']} distinct views, {stats['flaps']} flaps",
        fontsize=10,
    )
    ax.set_xlabel("time since scenario start (s)")
    ax.set_ylabel("distinct views among up nodes")
    ax.set_xlim(0, t_end)
    if not series.t:
        _empty(ax, "no membership views recorded")
        return
    t = pd.Series(series.t)
    _step(ax, t, pd.Series(series.distinct), t_end, color="tab:blue", label="distinct views")
    wrong = [
        (a, b)
        for a, b, ok in zip(series.t, (*series.t[1:], t_end), series.correct, strict=True)
        if not ok
    ]
    for a, b in wrong:
        ax.axvspan(a, b, color="tab:red", alpha=0.08, lw=0)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.plot([], [], color="tab:red", alpha=0.3, lw=6, label="views differ from the up hosts")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _draw_markers(ax, _markers(run))


DRAWERS: dict[str, Callable[[Run, Figure], None]] = dict(
    zip(
        PLOT_FILES,
        (draw_convergence_cdf, draw_membership_timeline, draw_overhead, draw_view_agreement),
        strict=True,
    )
)


def write_plots(run: Run, plots_dir: Path | None = None) -> list[Path]:
    """Draw every figure of ``run`` into ``plots_dir`` (default ``<run>/plots``)."""
    plots_dir = Path(plots_dir) if plots_dir is not None else run.path / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, draw in DRAWERS.items():
        dest = plots_dir / name
        atomic_write_bytes(dest, _png(lambda fig, d=draw: d(run, fig)))
        out.append(dest)
    return out
