"""Which site a host is in: the switch it hangs off (its first switch neighbour; a host
linked to no switch is its own site). Round trips are summarised per site pair."""

from __future__ import annotations

from collections.abc import Mapping

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
