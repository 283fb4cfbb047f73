"""metrics.json blocks on small tables with known answers; the traffic counter."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from overlaysim.metrics.atomic import json_bytes
from overlaysim.metrics.compute import (
    compute_metrics,
    endpoint_convergence,
    overhead,
    reachability_summary,
    throughput_list,
)
from overlaysim.metrics.records import NOT_MEASURED_BY_SIM
from overlaysim.metrics.tables import frame
from overlaysim.metrics.traffic import TrafficCounter

REQUIRED_KEYS = {
    "backend": None,
    "scenario": None,
    "seed": None,
    "duration_s": None,
    "nodes": None,
    "endpoint_convergence_s": {"count", "p50", "p95", "p99", "max", "unconverged"},
    "failure_detection_s": {"count", "first_suspect_mean", "all_dead_p50", "all_dead_max"},
    "join_visibility_s": {"count", "p50", "max"},
    "false_positives": None,
    "overhead": {"bytes_per_node_per_s", "msgs_per_node_per_s"},
    "throughput": None,
    "reachability": {"expected_pairs", "reachable_pairs", "unexpected_reachable"},
}


def conv_rows(latencies, unconverged=0, superseded=0, op="add"):
    rows = [
        (1.0, "a", "n", f"k{i}", op, 3, 1.0 + x, x, "converged") for i, x in enumerate(latencies)
    ]
    rows += [(2.0, "a", "n", f"u{i}", op, 3, None, None, "unconverged") for i in range(unconverged)]
    rows += [(3.0, "a", "n", f"s{i}", op, 3, None, None, "superseded") for i in range(superseded)]
    return rows


def test_endpoint_convergence_percentiles_and_counts():
    rows = conv_rows([0.1 * i for i in range(1, 101)], unconverged=2, superseded=1)
    rows += conv_rows([5.0], op="delete")
    ec = endpoint_convergence(frame("convergence", rows))
    lat = [0.1 * i for i in range(1, 101)] + [5.0]
    s = pd.Series(lat)
    assert ec["count"] == 101
    assert ec["p50"] == pytest.approx(s.quantile(0.5))
    assert ec["p95"] == pytest.approx(s.quantile(0.95))
    assert ec["p99"] == pytest.approx(s.quantile(0.99))
    assert ec["max"] == 10.0
    assert ec["unconverged"] == 2 and ec["superseded"] == 1 and ec["commits"] == 104
    assert ec["by_op"]["delete"] == {
        "count": 1,
        "p50": 5.0,
        "p95": 5.0,
        "max": 5.0,
        "unconverged": 0,
    }
    assert ec["by_op"]["add"]["unconverged"] == 2


def test_endpoint_convergence_small_sample_interpolates():
    ec = endpoint_convergence(frame("convergence", conv_rows([1.0, 2.0, 3.0, 4.0])))
    assert ec["p50"] == 2.5 and ec["max"] == 4.0 and ec["unconverged"] == 0


def test_endpoint_convergence_empty_is_null_not_nan():
    ec = endpoint_convergence(frame("convergence", conv_rows([], unconverged=3)))
    assert ec["count"] == 0 and ec["p50"] is None and ec["max"] is None
    assert ec["unconverged"] == 3


def test_traffic_counter_bins_by_second_and_kind():
    tc = TrafficCounter()
    tc.sent(0.2, "h1", 100, "PING")
    tc.sent(0.9, "h1", 50, "GOSSIP")
    tc.sent(1.0, "h1", 10, "PING")  # next bin
    tc.recv(0.5, "h2", 100, "PING")
    tc.sent(0.3, "h2", 7)  # no kind: counted per node only
    assert tc.rows() == [
        {"t": 0, "node": "h1", "bytes_sent": 150, "msgs_sent": 2, "bytes_recv": 0, "msgs_recv": 0},
        {"t": 0, "node": "h2", "bytes_sent": 7, "msgs_sent": 1, "bytes_recv": 100, "msgs_recv": 1},
        {"t": 1, "node": "h1", "bytes_sent": 10, "msgs_sent": 1, "bytes_recv": 0, "msgs_recv": 0},
    ]
    assert tc.kind_rows() == [
        {"kind": "GOSSIP", "bytes_sent": 50, "msgs_sent": 1, "bytes_recv": 0, "msgs_recv": 0},
        {"kind": "PING", "bytes_sent": 110, "msgs_sent": 2, "bytes_recv": 100, "msgs_recv": 1},
    ]


def test_overhead_per_node_per_second():
    tc = TrafficCounter()
    for s in range(10):
        tc.sent(s + 0.5, "h1", 300, "PING")  # 300 B/s
        tc.sent(s + 0.5, "h2", 100, "PING")  # 100 B/s
        tc.sent(s + 0.6, "h2", 100, "ACK")
    # h3 never sends: it still counts as a node
    ov = overhead(
        frame("traffic", tc.rows()),
        frame("traffic_kinds", tc.kind_rows()),
        nodes=3,
        duration_s=10.0,
    )
    assert ov["bytes_per_node_per_s"] == pytest.approx(5000 / 3 / 10)
    assert ov["msgs_per_node_per_s"] == pytest.approx(30 / 3 / 10)
    assert ov["bytes_total"] == 5000 and ov["msgs_total"] == 30
    assert ov["bytes_per_s_max_node"] == 300.0
    assert ov["by_kind"]["ACK"]["bytes_sent"] == 1000
    assert ov["by_kind"]["PING"]["bytes_per_node_per_s"] == pytest.approx(4000 / 3 / 10)


def test_overhead_zero_duration_is_null():
    ov = overhead(frame("traffic"), frame("traffic_kinds"), nodes=0, duration_s=0.0)
    assert ov["bytes_per_node_per_s"] is None and ov["msgs_per_node_per_s"] is None


def test_reachability_uses_latest_sample_per_pair():
    rows = [
        (1.0, "c1", "c2", "n", True, False, "", None),  # superseded by the later sample
        (5.0, "c1", "c2", "n", True, True, "", None),
        (5.0, "c1", "c3", "n", True, False, "", None),
        (5.0, "c1", "c4", "other", False, True, "", None),  # isolation broken
        (5.0, "c1", "c5", "other", False, False, "", None),
    ]
    r = reachability_summary(frame("reachability", rows))
    assert r == {
        "expected_pairs": 2,
        "reachable_pairs": 1,
        "unexpected_reachable": 1,
        "unreachable_expected": 1,
        "pairs": 4,
        "samples": 5,
    }


def test_throughput_null_values_carry_the_reason():
    rows = [
        ("c1", "c2", "tcp", None, None, None, NOT_MEASURED_BY_SIM),
        ("c1", "c3", "udp", 9.0e8, 1.0e9, 0.9, ""),
    ]
    tp = throughput_list(frame("throughput", rows))
    assert tp[0]["overlay_bps"] != tp[0]["overlay_bps"]  # NaN here; null in metrics.json
    assert tp[0]["reason"] == NOT_MEASURED_BY_SIM
    assert tp[1] == {
        "src": "c1",
        "dst": "c3",
        "proto": "udp",
        "overlay_bps": 9.0e8,
        "underlay_bps": 1.0e9,
        "ratio": 0.9,
        "reason": None,
    }


def test_compute_metrics_has_every_documented_key_and_is_nan_free():
    events = frame(
        "events",
        [
            (0.0, "", "node_start", "a", "", "", "", ""),
            (0.0, "", "node_start", "b", "", "", "", ""),
            (3.0, "a", "member_dead", "b", "", "", "", ""),
        ],
    )
    tp = frame("throughput", [("c1", "c2", "tcp", None, None, None, NOT_MEASURED_BY_SIM)])
    m = compute_metrics(
        events, None, None, None, tp, backend="sim", scenario="t", seed=7, duration_s=10, nodes=2
    )
    for key, sub in REQUIRED_KEYS.items():
        assert key in m, key
        if sub:
            assert sub <= set(m[key]), (key, sub - set(m[key]))
    assert (m["backend"], m["scenario"], m["seed"], m["nodes"]) == ("sim", "t", 7, 2)
    assert m["false_positives"] == 1
    assert m["throughput"][0]["overlay_bps"] is None
    text = json_bytes(m).decode()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == m
