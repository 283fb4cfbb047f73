"""Round-trip times between sites: which site a host is in, and RTT per site pair.

A host's site is the switch it hangs off (its first switch neighbour; a host linked to
no switch is its own site). ``reachability.csv`` names each pair's sites in ``sites``
("s1-s2", sorted) and its round trip in ``rtt_ms``: the emulator pings, the simulator
writes its underlay model's path latency both ways, so the two can be compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from overlaysim.scenario.topology import Topology


def sites_of(topology: Topology) -> dict[str, str]:
    """Host -> its site (the first switch it links to, else itself)."""
    switches = set(topology.switches)
    site: dict[str, str] = {}
    for link in topology.links:
        for host, other in ((link.a, link.b), (link.b, link.a)):
            if host in topology.hosts and other in switches:
                site.setdefault(host, other)
    return {h: site.get(h, h) for h in topology.hosts}


def site_pair(site: Mapping[str, str], a: str, b: str) -> str:
    """``"s1-s2"``: the two hosts' sites, sorted (so both directions count together)."""
    x, y = sorted((site.get(a, a), site.get(b, b)))
    return f"{x}-{y}"


def rtt_by_sites(reach: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per site pair, over every sample with a round trip: median, p10, p90, count (ms)."""
    if "rtt_ms" not in reach or "sites" not in reach:
        return {}
    ok = reach[reach["rtt_ms"].notna() & (reach["sites"].astype(str) != "")]
    out: dict[str, dict[str, Any]] = {}
    for sites, group in ok.groupby("sites", sort=True):
        rtt = group["rtt_ms"].astype(float)
        out[str(sites)] = {
            "median": round(float(rtt.median()), 3),
            "p10": round(float(rtt.quantile(0.1)), 3),
            "p90": round(float(rtt.quantile(0.9)), 3),
            "samples": len(rtt),
        }
    return out
