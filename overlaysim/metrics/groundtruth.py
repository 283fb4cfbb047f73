"""Ground truth from ``events.csv``: which hosts were up when, and who was partitioned.

Metrics compare what agents *believed* (member_* events) with what was *true*
(lifecycle and partition events recorded by the runner). These two small models
answer the questions the metrics ask: was host X up at t, was it up throughout an
interval, and were A and B on opposite sides of an active partition at t.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import pandas as pd

from overlaysim.metrics.records import DOWN_KINDS, MEMBER_KINDS, UP_KINDS, EventKind
from overlaysim.metrics.tables import lists
from overlaysim.metrics.truth import lifecycle

_UP = frozenset(str(k) for k in UP_KINDS)
_DOWN = frozenset(str(k) for k in DOWN_KINDS)
_MEMBER = frozenset(str(k) for k in MEMBER_KINDS)


class Liveness:
    """Up/down history of every host, from node_start/join/restart and node_crash/leave.

    A host's state before its first lifecycle event is inferred: down if that event
    brings it up, up if it takes it down. Hosts with no lifecycle event (seen only as
    observers of member events) are up throughout. A transition at ``t`` applies at
    ``t`` itself.
    """

    def __init__(self, events: pd.DataFrame):
        life = events[events["kind"].isin(_UP | _DOWN)]
        self._times: dict[str, list[float]] = {}
        self._states: dict[str, list[bool]] = {}  # state from the matching time on
        self._initial: dict[str, bool] = {}
        for t, kind, host in zip(*lists(life, "t", "kind", "subject"), strict=True):
            up = lifecycle(kind) is True
            if host not in self._times:
                self._times[host], self._states[host] = [], []
                self._initial[host] = not up
            self._times[host].append(float(t))
            self._states[host].append(up)
        observers = events.loc[events["kind"].isin(_MEMBER), "node"].unique().tolist()
        self.hosts: frozenset[str] = (frozenset(self._times) | frozenset(observers)) - {""}

    def is_up(self, host: str, t: float) -> bool:
        """Whether ``host`` was running (not crashed, not left) at ``t``."""
        times = self._times.get(host)
        if times is None:
            return True
        i = bisect_right(times, t)
        return self._states[host][i - 1] if i else self._initial[host]

    def up_throughout(self, host: str, t0: float, t1: float) -> bool:
        """Whether ``host`` was up at ``t0`` and never went down in ``(t0, t1)``."""
        if not self.is_up(host, t0):
            return False
        times = self._times.get(host)
        if times is None:
            return True
        lo, hi = bisect_right(times, t0), bisect_left(times, t1)
        return all(self._states[host][lo:hi])

    def next_change(self, host: str, t: float, *, up: bool) -> float:
        """Time of the first transition of ``host`` to ``up`` strictly after ``t`` (inf if none)."""
        times = self._times.get(host, [])
        states = self._states.get(host, [])
        for i in range(bisect_right(times, t), len(times)):
            if states[i] == up:
                return times[i]
        return math.inf

    def current_life_start(self, host: str, t: float) -> float | None:
        """Start of the up period ``host`` is in at ``t`` if it is a later life, else None.

        A *later life* follows a crash or leave; the first life of a host gives None.
        """
        times = self._times.get(host, [])
        i = bisect_right(times, t)
        states = self._states.get(host, [])
        if not any(not s for s in states[:i]):
            return None
        for j in range(i - 1, -1, -1):
            if states[j] and (j == 0 or not states[j - 1]):
                return times[j]
        return None


def parse_groups(detail: str) -> list[list[str]]:
    """Groups of a partition/heal ``detail``: ``{"groups": [[...], ...]}`` or a bare list."""
    if not detail:
        return []
    data = json.loads(detail)
    groups = data.get("groups", []) if isinstance(data, dict) else data
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise ValueError(f"partition detail must hold a list of host groups: {detail!r}")
    return [[str(h) for h in g] for g in groups]


@dataclass(frozen=True, slots=True)
class _Partition:
    start: float
    end: float
    group_of: dict[str, int]
    key: frozenset[frozenset[str]]

    def separates(self, a: str, b: str) -> bool:
        # Hosts not listed in any group form one more group together (-1).
        return self.group_of.get(a, -1) != self.group_of.get(b, -1)


class Partitions:
    """Active partitions over time, from ``partition`` and ``heal`` events.

    A ``heal`` whose groups equal an active partition's ends that one; a ``heal``
    without groups (or with groups matching none) ends every active partition.
    """

    def __init__(self, events: pd.DataFrame):
        rows = events[events["kind"].isin((str(EventKind.PARTITION), str(EventKind.HEAL)))]
        active: list[tuple[float, list[list[str]]]] = []
        closed: list[_Partition] = []
        for t, kind, detail in zip(*lists(rows, "t", "kind", "detail"), strict=True):
            groups = parse_groups(detail)
            if kind == EventKind.PARTITION:
                active.append((float(t), groups))
                continue
            key = _key(groups)
            match = [p for p in active if _key(p[1]) == key] if groups else []
            ending = match[:1] or list(active)
            for p in ending:
                active.remove(p)
                closed.append(_make(p, float(t)))
        closed.extend(_make(p, math.inf) for p in active)
        self._parts = closed

    def separated(self, a: str, b: str, t: float) -> bool:
        """Whether ``a`` and ``b`` were on different sides of an active partition at ``t``."""
        return any(p.start <= t < p.end and p.separates(a, b) for p in self._parts)

    def __len__(self) -> int:
        return len(self._parts)


def _key(groups: list[list[str]]) -> frozenset[frozenset[str]]:
    return frozenset(frozenset(g) for g in groups)


def _make(p: tuple[float, list[list[str]]], end: float) -> _Partition:
    start, groups = p
    group_of = {h: i for i, g in enumerate(groups) for h in g}
    return _Partition(start, end, group_of, _key(groups))
