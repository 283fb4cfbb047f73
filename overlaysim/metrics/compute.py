"""``metrics.json``: the summary of one run, computed from its record tables.

The same function runs for both backends and for ``overlaysim report`` on a saved
folder, so the numbers in a folder can always be recomputed from its tables. Every
key is defined in ``docs/results.md``. Undefined values are ``None`` (JSON null).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from overlaysim.metrics.atomic import jsonable
from overlaysim.metrics.convergence import Status
from overlaysim.metrics.dns import summarise as dns_summary
from overlaysim.metrics.groundtruth import Liveness
from overlaysim.metrics.lbspread import lb_spread_of
from overlaysim.metrics.membership import (
    failure_detections,
    false_positive_counts,
    join_visibilities,
    summarize_failure_detection,
    summarize_join_visibility,
)
from overlaysim.metrics.rtt import rtt_by_sites
from overlaysim.metrics.stats import pct, ratio, vmax
from overlaysim.metrics.tables import frame
from overlaysim.metrics.views import view_metrics


def endpoint_convergence(convergence: pd.DataFrame) -> dict[str, Any]:
    """Latency percentiles over converged commits, plus counts by status and by op."""
    conv = convergence[convergence["status"] == Status.CONVERGED]
    lat = conv["latency_s"]
    out: dict[str, Any] = {
        "count": len(lat),
        "p50": pct(lat, 50),
        "p95": pct(lat, 95),
        "p99": pct(lat, 99),
        "max": vmax(lat),
        "unconverged": int((convergence["status"] == Status.UNCONVERGED).sum()),
        "superseded": int((convergence["status"] == Status.SUPERSEDED).sum()),
        "commits": len(convergence),
    }
    by_op: dict[str, Any] = {}
    for op in sorted(set(convergence["op"])):
        o = conv.loc[conv["op"] == op, "latency_s"]
        by_op[op] = {
            "count": len(o),
            "p50": pct(o, 50),
            "p95": pct(o, 95),
            "max": vmax(o),
            "unconverged": int(
                ((convergence["op"] == op) & (convergence["status"] == Status.UNCONVERGED)).sum()
            ),
        }
    out["by_op"] = by_op
    return out


def overhead(
    traffic: pd.DataFrame, traffic_kinds: pd.DataFrame, *, nodes: int, duration_s: float
) -> dict[str, Any]:
    """Control-plane bytes and messages sent per node per second, averaged over the run."""
    per_node_s = nodes * duration_s
    out: dict[str, Any] = {
        "bytes_per_node_per_s": ratio(traffic["bytes_sent"].sum(), per_node_s),
        "msgs_per_node_per_s": ratio(traffic["msgs_sent"].sum(), per_node_s),
        "bytes_total": int(traffic["bytes_sent"].sum()),
        "msgs_total": int(traffic["msgs_sent"].sum()),
    }
    per_node = traffic.groupby("node")["bytes_sent"].sum()
    out["bytes_per_s_max_node"] = ratio(per_node.max(), duration_s) if len(per_node) else None
    per_second = traffic.groupby("t")["bytes_sent"].sum()
    out["bytes_per_node_per_s_peak"] = ratio(per_second.max(), nodes) if len(per_second) else None
    out["by_kind"] = {
        str(k): {
            "bytes_sent": int(b),
            "msgs_sent": int(m),
            "bytes_per_node_per_s": ratio(b, per_node_s),
        }
        for k, b, m in zip(
            traffic_kinds["kind"],
            traffic_kinds["bytes_sent"],
            traffic_kinds["msgs_sent"],
            strict=True,
        )
    }
    return out


def reachability_summary(reach: pd.DataFrame) -> dict[str, Any]:
    """Pairs counted on the final round, taken at the run's end.

    Rounds sampled during the run (``measure.probe_interval``) stay in the table for RTT
    and reachability over time; they are not the verdict: a pair whose container left
    mid-run must not count as an expected pair of the end state.
    """
    final = reach[reach["t"] == reach["t"].max()] if len(reach) else reach
    last = final.drop_duplicates(["src", "dst", "network"], keep="last")
    exp, ok = last["expected"], last["reachable"]
    return {
        "expected_pairs": int(exp.sum()),
        "reachable_pairs": int((exp & ok).sum()),
        "unexpected_reachable": int((~exp & ok).sum()),
        "unreachable_expected": int((exp & ~ok).sum()),
        "pairs": len(last),
        "samples": len(reach),
    }


def throughput_list(tp: pd.DataFrame) -> list[dict[str, Any]]:
    """One entry per measured (src, dst, proto); null values carry a ``reason``."""
    return [
        {
            "src": src,
            "dst": dst,
            "proto": proto,
            "overlay_bps": ov,
            "underlay_bps": un,
            "ratio": r,
            "reason": reason or None,
        }
        for src, dst, proto, ov, un, r, reason in zip(
            tp["src"],
            tp["dst"],
            tp["proto"],
            tp["overlay_bps"],
            tp["underlay_bps"],
            tp["ratio"],
            tp["reason"],
            strict=True,
        )
    ]


def compute_metrics(
    events: pd.DataFrame | None,
    convergence: pd.DataFrame | None,
    traffic: pd.DataFrame | None,
    reachability: pd.DataFrame | None,
    throughput: pd.DataFrame | None,
    *,
    backend: str,
    scenario: str,
    seed: int,
    duration_s: float,
    nodes: int,
    traffic_kinds: pd.DataFrame | None = None,
    dns: pd.DataFrame | None = None,
    lb_probe: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Summarise a run. Tables are typed frames (:func:`load_run` or ``tables.frame``);
    None stands for an empty table. ``duration_s`` is the simulated/emulated time the
    run covered (shorter than planned if interrupted); ``nodes`` the number of hosts.
    ``dns`` (runs with services only) adds ``dns_convergence_s`` and ``stale_dns_window_s``;
    ``lb_probe`` (emulations with ``measure.lb_probe`` only) adds ``lb_spread``."""
    events = frame("events", events)
    convergence = frame("convergence", convergence)
    traffic = frame("traffic", traffic)
    reachability = frame("reachability", reachability)
    throughput = frame("throughput", throughput)
    traffic_kinds = frame("traffic_kinds", traffic_kinds)
    live = Liveness(events)
    fp = false_positive_counts(events, live)
    metrics = {
        "backend": backend,
        "scenario": scenario,
        "seed": seed,
        "duration_s": float(duration_s),
        "nodes": int(nodes),
        "endpoint_convergence_s": endpoint_convergence(convergence),
        "failure_detection_s": summarize_failure_detection(failure_detections(events, duration_s)),
        "join_visibility_s": summarize_join_visibility(join_visibilities(events, duration_s)),
        "false_positives": fp["false_positives"],
        "false_positives_partitioned": fp["false_positives_partitioned"],
        "late_dead_after_restart": fp["late_dead_after_restart"],
        "false_suspicions": fp["false_suspicions"],
        "membership_views": view_metrics(events, duration_s)[0],
        "overhead": overhead(traffic, traffic_kinds, nodes=nodes, duration_s=duration_s),
        "throughput": throughput_list(throughput),
        "reachability": reachability_summary(reachability),
        "rtt_ms": rtt_by_sites(reachability),
    }
    if dns is not None:
        metrics.update(dns_summary(frame("dns", dns).to_dict("records")))
    if lb_probe is not None:
        metrics["lb_spread"] = lb_spread_of(frame("lb_probe", lb_probe).to_dict("records"))
    return jsonable(metrics)
