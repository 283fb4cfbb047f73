"""A one-screen text summary of a run's metrics (a rich table for the console)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from overlaysim.metrics.lag import METRIC as LAG
from overlaysim.metrics.lag import lag_warnings
from overlaysim.metrics.results import Run


def _s(x: Any) -> str:
    """Seconds, compact: 3 significant digits, or an em dash when undefined."""
    if x is None:
        return "—"
    x = float(x)
    if x >= 1:
        return f"{x:.3g} s" if x < 1000 else f"{x:.0f} s"
    return f"{x * 1000:.3g} ms"


def _n(x: Any, unit: str = "") -> str:
    if x is None:
        return "—"
    x = float(x)
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}".strip()
    return f"{x:.3g} {unit}".strip()


def summary_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(section, measure, value) rows; the table and plain-text output both use them."""
    ec = metrics.get("endpoint_convergence_s") or {}
    fd = metrics.get("failure_detection_s") or {}
    jv = metrics.get("join_visibility_s") or {}
    ov = metrics.get("overhead") or {}
    re = metrics.get("reachability") or {}
    rows = [
        ("run", "backend / scenario / seed",
         f"{metrics.get('backend')} / {metrics.get('scenario')} / {metrics.get('seed')}"),
        ("run", "duration, nodes", f"{_s(metrics.get('duration_s'))}, {metrics.get('nodes')}"),
        ("endpoints", "convergence p50 / p95 / p99",
         f"{_s(ec.get('p50'))} / {_s(ec.get('p95'))} / {_s(ec.get('p99'))}"),
        ("endpoints", "convergence max", _s(ec.get("max"))),
        ("endpoints", "commits converged / never",
         f"{ec.get('count', 0)} / {ec.get('unconverged', 0)}"),
        ("membership", "crashes: first suspicion (mean)", _s(fd.get("first_suspect_mean"))),
        ("membership", "crashes: all dead p50 / max",
         f"{_s(fd.get('all_dead_p50'))} / {_s(fd.get('all_dead_max'))}"),
        ("membership", "crashes measured / undetected",
         f"{fd.get('count', 0)} / {fd.get('undetected', 0)}"),
        ("membership", "join visibility p50 / max",
         f"{_s(jv.get('p50'))} / {_s(jv.get('max'))}"),
        ("membership", "false positives (in partitions)",
         f"{metrics.get('false_positives', 0)} ({metrics.get('false_positives_partitioned', 0)})"),
        ("overhead", "sent per node per second",
         f"{_n(ov.get('bytes_per_node_per_s'), 'B')}, {_n(ov.get('msgs_per_node_per_s'), 'msg')}"),
        ("data plane", "reachable / expected pairs",
         f"{re.get('reachable_pairs', 0)} / {re.get('expected_pairs', 0)}"),
        ("data plane", "unexpectedly reachable", str(re.get("unexpected_reachable", 0))),
    ]  # fmt: skip
    for key, label in (("dns_convergence_s", "DNS convergence"),
                       ("stale_dns_window_s", "stale DNS window")):  # fmt: skip
        d = metrics.get(key)
        if d is None:
            continue  # a run without services
        rows.append(
            ("services", f"{label} p50 / p95 / max",
             f"{_s(d.get('p50'))} / {_s(d.get('p95'))} / {_s(d.get('max'))}")
        )  # fmt: skip
        rows.append(
            ("services", f"{label} measured / never",
             f"{d.get('n', 0) - d.get('unconverged', 0) - d.get('superseded', 0)}"
             f" / {d.get('unconverged', 0)}")
        )  # fmt: skip
    lb = metrics.get("lb_spread")
    if lb:  # an emulation's measure.lb_probe
        counts = ", ".join(f"{t} {n}" for t, n in (lb.get("per_task") or {}).items())
        p = lb.get("p_uniform")
        rows.append(
            ("services", f"LB spread {lb.get('client')}→{lb.get('service')} VIP",
             f"{counts}; failed {lb.get('failed', 0)}, stray {sum((lb.get('stray') or {}).values())}"
             f"; p uniform {'n/a' if p is None else f'{p:.3g}'}")
        )  # fmt: skip
    for sites, r in sorted((metrics.get("rtt_ms") or {}).items()):
        rows.append(
            ("round trips", f"RTT {sites} median (p10–p90)",
             f"{r['median']:.3g} ms ({r['p10']:.3g}–{r['p90']:.3g}), {r['samples']} samples")
        )  # fmt: skip
    for tp in metrics.get("throughput") or []:
        what = f"{tp.get('proto')} {tp.get('src')}→{tp.get('dst')}"
        if tp.get("overlay_bps") is None:
            value = tp.get("reason") or "not measured"
        else:
            r = tp.get("ratio")
            value = (
                f"{_n(tp['overlay_bps'], 'bit/s')} overlay, "
                f"{_n(tp.get('underlay_bps'), 'bit/s')} underlay"
                + (f" ({r:.0%})" if r is not None else "")
            )
        rows.append(("throughput", what, value))
    lag = metrics.get(LAG)
    if lag:  # measured by the emulator only (absent: not measured, not zero)
        st, tm = lag.get("steps") or {}, lag.get("timers") or {}
        rows += [
            ("fidelity", "step lag max / p99", f"{_s(st.get('max_s'))} / {_s(st.get('p99_s'))}"),
            ("fidelity", "timer lateness p99 / max",
             f"{_s(tm.get('p99_s'))} / {_s(tm.get('max_s'))}"),
        ]  # fmt: skip
    return rows


def summary_table(source: Run | Mapping[str, Any]) -> Table:
    """A rich table of the key numbers of a run (or of a metrics dict)."""
    if isinstance(source, Run):
        metrics = source.metrics or {}
        title = f"{source.name} — status {source.status}"
    else:
        metrics, title = source, str(source.get("scenario", "run"))
    table = Table(title=title, title_style="bold")
    table.add_column("", style="dim")
    table.add_column("measure")
    table.add_column("value", justify="right", style="bold")
    last = None
    for section, measure, value in summary_rows(metrics):
        table.add_row(section if section != last else "", measure, value)
        last = section
    return table


def print_summary(run: Run, console: Console | None = None) -> None:
    """Print the summary table, and a warning line when the run did not complete."""
    console = console or Console()
    console.print(summary_table(run))
    if run.status != "complete":
        err = run.manifest.get("error")
        console.print(f"[bold yellow]run status: {run.status}[/]" + (f" — {err}" if err else ""))
    if run.metrics is None:
        console.print("[yellow]no metrics.json in this folder[/]")
    for warning in run_warnings(run):
        console.print(f"[bold yellow]warning:[/] {warning}")


def run_warnings(run: Run) -> list[str]:
    """Everything that makes a run's numbers doubtful: an overloaded emulator, throughput
    at the delay line's ceiling."""
    metrics = run.metrics or {}
    return lag_warnings(metrics) + delay_warnings(run.manifest, metrics)


def delay_warnings(manifest: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[str]:
    """Throughput probes that reached 80 % of the delay line's measured ceiling: the
    user-space delay line, not the scenario's links, may have set those numbers."""
    ceiling = (manifest.get("delay") or {}).get("ceiling")
    if not ceiling:
        return []
    cap_bps = float(ceiling["mbps"]) * 1e6
    out = []
    for tp in metrics.get("throughput") or []:
        for side in ("overlay_bps", "underlay_bps"):
            bps = tp.get(side)
            if bps is not None and bps >= 0.8 * cap_bps:
                out.append(
                    f"{tp.get('src')}→{tp.get('dst')} {side[:-4]} throughput "
                    f"{bps / 1e6:.0f} Mbit/s is at or above 80 % of the NFQUEUE delay line's "
                    f"ceiling ({ceiling['mbps']:.0f} Mbit/s, {ceiling['pps']:,.0f} packets/s): "
                    "the delay line may be what limits it"
                )
    return out
