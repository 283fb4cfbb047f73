"""Rapid-style view metrics (Suresh et al., ATC'18): how many membership views a cluster
goes through, how often its live nodes agree, and how often members flap.

Computed from ``events.csv`` alone (lifecycle events and member_* views), which both
backends write, so the definitions are the same for the simulator and the emulator:

* A node's **view** is itself plus every subject it holds ALIVE or SUSPECT (a suspect is
  still a member, as in SWIM and Rapid). It starts as every host up at the node's start
  except those it later reports joining (so ``boot: formed`` starts full, ``boot: join``
  starts with itself); member_join/alive/update add a subject, member_dead/leave remove
  it; a restart or join starts the view again from the node alone.
* **distinct_views**: the number of different views held by any up node at any time.
* **agreement_fraction**: the fraction of the run during which every up node holds the
  same view; **correct_fraction**: the fraction during which every up node's view is
  exactly the set of up hosts.
* **flaps**: (observer, subject) transitions live -> dead -> live again within
  ``FLAP_WINDOW`` seconds (Serf's flap counter); reported in total and per subject.

Views are compared by a 64-bit Zobrist hash (XOR of a fixed hash per name), so each event
costs O(1) whatever the cluster size.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pandas as pd

from overlaysim.metrics.groundtruth import Liveness
from overlaysim.metrics.records import ALIVE_VIEW_KINDS, DOWN_KINDS, UP_KINDS, EventKind
from overlaysim.metrics.tables import lists

#: Serf counts a flap when a failed member comes back within this many seconds.
FLAP_WINDOW = 60.0

_UP = frozenset(str(k) for k in UP_KINDS)
_DOWN = frozenset(str(k) for k in DOWN_KINDS)
_ADD = frozenset(str(k) for k in ALIVE_VIEW_KINDS)
_REMOVE = frozenset({str(EventKind.MEMBER_DEAD), str(EventKind.MEMBER_LEAVE)})
_JOIN = str(EventKind.MEMBER_JOIN)
_START = str(EventKind.NODE_START)


def _zobrist(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class ViewSeries:
    """Agreement over time: at each ``t``, how many distinct views the up nodes hold."""

    t: tuple[float, ...]
    distinct: tuple[int, ...]
    correct: tuple[bool, ...]


def view_metrics(events: pd.DataFrame, duration_s: float) -> tuple[dict[str, Any], ViewSeries]:
    """``membership_views`` for metrics.json, and the series behind its plot."""
    live = Liveness(events)
    hosts = sorted(live.hosts)
    z = {h: _zobrist(h) for h in hosts}
    ev = events.sort_values("t", kind="stable")
    rows = list(zip(*lists(ev, "t", "node", "kind", "subject"), strict=True))
    # Subjects each observer first learns by a join: not in its starting view.
    # Only what an observer reports in its first life counts: after a restart it joins
    # everyone again.
    first_kind: dict[tuple[str, str], str] = {}
    restarted: set[str] = set()
    for _, node, kind, subj in rows:
        if kind in _DOWN:
            restarted.add(subj)
        elif node in restarted:
            continue
        elif node and subj and node != subj and (node, subj) not in first_kind:
            if kind in _ADD or kind in _REMOVE or kind == str(EventKind.MEMBER_SUSPECT):
                first_kind[(node, subj)] = kind
    views: dict[str, set[str]] = {}
    hashes: dict[str, int] = {}
    up: set[str] = set()
    held: Counter[int] = Counter()  # view hash -> up nodes holding it
    truth = 0  # hash of the set of up hosts

    def set_view(node: str, members: set[str]) -> None:
        if node in up:
            held[hashes[node]] -= 1
        views[node] = members
        h = 0
        for m in members:
            h ^= z.get(m) or _zobrist(m)
        hashes[node] = h
        if node in up:
            held[h] += 1

    def start(node: str, initial: bool) -> None:
        nonlocal truth
        if node not in up:
            up.add(node)
            truth ^= z[node]
            hashes.setdefault(node, 0)
            held[hashes[node]] += 1
        if initial:
            members = {
                h for h in hosts if live.is_up(h, 0.0) and first_kind.get((node, h)) != _JOIN
            }
            set_view(node, members | {node})
        else:
            set_view(node, {node})

    for h in hosts:
        if live.is_up(h, 0.0):
            start(h, True)

    seen: set[str] = set()
    last_dead: dict[tuple[str, str], float] = {}
    flaps: Counter[str] = Counter()
    out_t: list[float] = []
    out_n: list[int] = []
    out_ok: list[bool] = []
    agree_time = correct_time = 0.0
    distinct = {hashes[h] for h in up}
    prev_t = 0.0

    def snapshot(t: float) -> None:
        n = sum(1 for v in held.values() if v > 0)
        ok = n == 1 and held.get(truth, 0) == len(up)
        if out_t and out_t[-1] == t:
            out_n[-1], out_ok[-1] = n, ok
        elif not out_n or out_n[-1] != n or out_ok[-1] != ok:
            out_t.append(t)
            out_n.append(n)
            out_ok.append(ok)

    snapshot(0.0)
    for t, node, kind, subj in rows:
        t = min(float(t), duration_s)
        if t > prev_t:
            if out_n[-1] <= 1:
                agree_time += t - prev_t
                if out_ok[-1]:
                    correct_time += t - prev_t
            prev_t = t
        if kind in _UP:
            if kind == _START and subj not in seen and t == 0.0:
                seen.add(subj)
                continue  # already started above
            seen.add(subj)
            start(subj, kind == _START and t == 0.0)
        elif kind in _DOWN:
            if subj in up:
                up.discard(subj)
                truth ^= z[subj]
                held[hashes[subj]] -= 1
        elif node in views and subj and node != subj:
            if kind in _ADD and subj not in views[node]:
                if (node, subj) in last_dead and t - last_dead.pop((node, subj)) <= FLAP_WINDOW:
                    flaps[subj] += 1
                set_view(node, views[node] | {subj})
            elif kind in _REMOVE and subj in views[node]:
                if kind == str(EventKind.MEMBER_DEAD):
                    last_dead[(node, subj)] = t
                set_view(node, views[node] - {subj})
            else:
                continue
        else:
            continue
        distinct.update(hashes[h] for h in (node, subj) if h in up)
        snapshot(t)
    if duration_s > prev_t and out_n:
        if out_n[-1] <= 1:
            agree_time += duration_s - prev_t
            if out_ok[-1]:
                correct_time += duration_s - prev_t
    n_hosts = max(len(hosts), 1)
    metrics = {
        "distinct_views": len(distinct),
        "agreement_fraction": agree_time / duration_s if duration_s > 0 else None,
        "correct_fraction": correct_time / duration_s if duration_s > 0 else None,
        "flaps": sum(flaps.values()),
        "flaps_per_node": sum(flaps.values()) / n_hosts,
        "flaps_max_node": max(flaps.values(), default=0),
        "flap_window_s": FLAP_WINDOW,
    }
    return metrics, ViewSeries(tuple(out_t), tuple(out_n), tuple(out_ok))
