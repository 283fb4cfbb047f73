"""The nftables JSON the impairments apply: random drops (loss), drops by address set
(partitions), and one netdev table per namespace written as one atomic transaction.

Pure functions: :mod:`overlaysim.emu.impair` decides the chains and rules each namespace
wants; this module only spells them the way ``nft -j -f -`` reads them.
"""

from __future__ import annotations

import json
from typing import Any


def numgen_drop(percent: float) -> list[dict[str, Any]]:
    """A rule that drops ``percent`` % of packets at random (0.01 % resolution)."""
    threshold = round(percent * 100)  # out of 10000: 0.01 % resolution
    numgen = {"numgen": {"mode": "random", "mod": 10000}}
    # numgen yields 0..9999, so "< 10000" always holds; but nft refuses 10000 as a
    # right-hand value of that width. "<= 9999" is the same rule, accepted.
    if threshold >= 10000:
        return [{"match": {"op": "<=", "left": numgen, "right": 9999}}, {"drop": None}]
    return [{"match": {"op": "<", "left": numgen, "right": threshold}}, {"drop": None}]


def is_numgen(rule: list[dict[str, Any]]) -> bool:
    """Whether ``rule`` is a random drop (:func:`numgen_drop`)."""
    return "numgen" in rule[0].get("match", {}).get("left", {})


def set_drop(field: str) -> list[dict[str, Any]]:
    """A rule that drops IPv4 packets whose ``field`` (saddr/daddr) is in set ``@blocked``."""
    payload = {"payload": {"protocol": "ip", "field": field}}
    return [{"match": {"op": "==", "left": payload, "right": "@blocked"}}, {"drop": None}]


def render_table(table: str, chains: list[dict[str, Any]], blocked: list[str]) -> str:
    """The full table as one atomic nft transaction (add+delete+add resets it)."""
    t = {"family": "netdev", "name": table}
    base = {"family": "netdev", "table": table}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": t}},
        {"delete": {"table": t}},
        {"add": {"table": t}},
    ]
    if blocked:
        elem = {"name": "blocked", "type": "ipv4_addr", "elem": blocked}
        cmds.append({"add": {"set": {**base, **elem}}})
    for c in chains:
        name = f"{c['hook'][:3]}_{c['dev']}".replace("-", "_")
        spec = {"name": name, "type": "filter", "hook": c["hook"], "dev": c["dev"], "prio": 0}
        cmds.append({"add": {"chain": {**base, **spec, "policy": "accept"}}})
        for expr in c["rules"]:
            cmds.append({"add": {"rule": {**base, "chain": name, "expr": expr}}})
    return json.dumps({"nftables": cmds}, sort_keys=True)
