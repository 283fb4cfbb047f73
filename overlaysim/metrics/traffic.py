"""Control-plane traffic counters: per node per 1-second bin, and totals per message kind."""

from __future__ import annotations

import math
from collections.abc import Sequence


class TrafficCounter:
    """Accumulates bytes and messages sent/received by each node.

    Calls are cheap (one dict update each) because a 1,000-node simulation makes
    tens of millions of them. Bins are ``floor(t)`` seconds since scenario start.
    """

    __slots__ = ("_bins", "_kinds")

    def __init__(self) -> None:
        # second -> node -> [bytes_sent, msgs_sent, bytes_recv, msgs_recv]; nested rather
        # than keyed by (second, node) so that a call builds and hashes no tuple.
        self._bins: dict[int, dict[str, list[int]]] = {}
        # kind -> same four counters
        self._kinds: dict[str, list[int]] = {}

    def sent(self, t: float, node: str, nbytes: int, kind: str = "", count: int = 1) -> None:
        """``node`` sent ``count`` messages of ``nbytes`` bytes each at ``t``."""
        self._add(t, node, nbytes * count, kind, 0, count)

    def recv(self, t: float, node: str, nbytes: int, kind: str = "") -> None:
        """``node`` received one message of ``nbytes`` bytes at ``t``."""
        self._add(t, node, nbytes, kind, 2, 1)

    def add_counts(self, t: float, node: str, counts: Sequence[int], kind: str = "") -> None:
        """Add ``counts`` (bytes sent, messages sent, bytes received, messages received;
        missing ones are 0) to ``node``'s bin at ``t``, or with ``kind`` to that kind's
        totals only (the emulator's agents report both per interval)."""
        bs, ms, br, mr = [*counts[:4], 0, 0, 0, 0][:4]
        if kind:
            c = self._kinds.setdefault(kind, [0, 0, 0, 0])
            for i, v in enumerate((bs, ms, br, mr)):
                c[i] += v
        else:
            self._add(t, node, bs, "", 0, ms)
            self._add(t, node, br, "", 2, mr)

    def _add(self, t: float, node: str, nbytes: int, kind: str, i: int, count: int) -> None:
        sec = math.floor(t)
        nodes = self._bins.get(sec)
        if nodes is None:
            nodes = self._bins[sec] = {}
        c = nodes.get(node)
        if c is None:
            c = nodes[node] = [0, 0, 0, 0]
        c[i] += nbytes
        c[i + 1] += count
        if kind:
            c = self._kinds.get(kind)
            if c is None:
                c = self._kinds[kind] = [0, 0, 0, 0]
            c[i] += nbytes
            c[i + 1] += count

    def rows(self) -> list[dict[str, object]]:
        """Rows of ``traffic.csv``, sorted by (t, node). Bins without traffic are absent."""
        return [
            {
                "t": t,
                "node": node,
                "bytes_sent": c[0],
                "msgs_sent": c[1],
                "bytes_recv": c[2],
                "msgs_recv": c[3],
            }
            for t, nodes in sorted(self._bins.items())
            for node, c in sorted(nodes.items())
        ]

    def kind_rows(self) -> list[dict[str, object]]:
        """Rows of ``traffic_kinds.csv``: totals per message kind, sorted by kind."""
        return [
            {
                "kind": kind,
                "bytes_sent": c[0],
                "msgs_sent": c[1],
                "bytes_recv": c[2],
                "msgs_recv": c[3],
            }
            for kind, c in sorted(self._kinds.items())
        ]
