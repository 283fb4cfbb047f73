"""Round trips per site pair: sites from the topology, summaries, the compare verdict,
and the delay line's throughput warning."""

from __future__ import annotations

import pandas as pd

from overlaysim.metrics.rtt import rtt_by_sites
from overlaysim.report.compare import RttComparison
from overlaysim.report.summary import delay_warnings
from overlaysim.scenario.generators import two_site
from overlaysim.scenario.sites import site_pair, sites_of
from overlaysim.scenario.topology import LinkSpec


def test_sites_are_the_switch_each_host_hangs_off() -> None:
    topo = two_site(2, LinkSpec(), LinkSpec(latency_ms=30))
    site = sites_of(topo)
    assert site == {"h1": "s1", "h2": "s1", "h3": "s2", "h4": "s2"}
    assert site_pair(site, "h3", "h1") == site_pair(site, "h1", "h3") == "s1-s2"


def test_rtt_summary_skips_unreachable_rows() -> None:
    reach = pd.DataFrame(
        {
            "sites": ["s1-s2", "s1-s2", "s1-s2", "s1-s1", ""],
            "rtt_ms": [62.0, 64.0, None, 2.0, 5.0],
        }
    )
    out = rtt_by_sites(reach)
    assert out["s1-s2"]["median"] == 63.0 and out["s1-s2"]["samples"] == 2
    assert out["s1-s1"]["samples"] == 1 and "" not in out


def test_rtt_verdict_is_relative_with_a_floor_for_the_host_stack() -> None:
    def rtt(a: float | None, b: float | None) -> RttComparison:
        return RttComparison(sites="s1-s2", a=a, b=b, samples_a=1, samples_b=1)

    assert rtt(62.0, 70.0).verdict == "agree"  # 13 %
    assert rtt(62.0, 72.0).verdict == "differ"  # 16 %
    assert rtt(2.0, 2.2).verdict == "agree" and rtt(2.0, 2.2).within_tolerance  # 10 %
    assert rtt(1.0, 1.25).verdict == "agree"  # 25 %, but under the 0.3 ms floor
    assert rtt(1.0, 1.25).within_tolerance is False
    assert rtt(2.0, 2.9).verdict == "differ"  # the old 1 ms floor hid the line's overhead
    assert rtt(2.0, None).verdict == "too few samples"
    assert rtt(2.0, None).within_tolerance is None


def test_throughput_near_the_delay_line_ceiling_is_flagged() -> None:
    manifest = {"delay": {"mechanism": "nfqueue", "ceiling": {"mbps": 100.0, "pps": 9000}}}
    metrics = {
        "throughput": [
            {"src": "a", "dst": "b", "overlay_bps": 85e6, "underlay_bps": 50e6},
            {"src": "c", "dst": "d", "overlay_bps": None, "underlay_bps": None},
        ]
    }
    (warning,) = delay_warnings(manifest, metrics)
    assert "a→b overlay throughput 85 Mbit/s" in warning and "100 Mbit/s" in warning
    assert delay_warnings({"delay": {"mechanism": "netem"}}, metrics) == []
