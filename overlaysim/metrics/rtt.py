"""Round-trip times per site pair (sites: :mod:`overlaysim.scenario.sites`).

``reachability.csv`` names each pair's sites in ``sites``
("s1-s2", sorted) and its round trip in ``rtt_ms``: the emulator pings, the simulator
writes its underlay model's path latency both ways, so the two can be compared.
"""

from __future__ import annotations

from typing import Any

import pandas as pd


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
