"""Membership metrics: failure detection, join visibility and false positives.

Each compares member_* views reported by agents with the runner's ground truth
(:mod:`overlaysim.metrics.groundtruth`). Definitions are stated once in
``docs/results.md``; in short:

* **required observers** of an event about X at t0: every other host up at t0, except
  one that goes down (crash/leave) before it reports; one that stays up and never
  reports within the window is *missing*.
* **failure detection**, per ``node_crash`` of X at t0, in the window up to X's next
  start/join/restart (or the end of the run): ``first_suspect`` is the first
  member_suspect/member_dead about X by any other host, minus t0; ``all_dead`` is the
  time by which every required observer has a member_dead about X, minus t0. A crash
  with a missing observer is *undetected*.
* **join visibility**, per ``node_join``/``node_restart`` of X at t0, in the window up to
  X's next crash/leave (or the end): the time by which every required observer has
  member_join/member_alive/member_update about X, minus t0; otherwise *unseen*.
* **false positive**: member_dead by O about X at t while X is up at t. If O and X were
  separated by an active partition it counts as ``false_positives_partitioned``
  instead. If X is in a later life (it crashed or left and came back) and O has not yet
  reported it alive in that life, the verdict is about the previous life: counted as
  ``late_dead_after_restart``, not as a false positive.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from overlaysim.metrics.groundtruth import Liveness, Partitions
from overlaysim.metrics.records import ALIVE_VIEW_KINDS, MEMBER_KINDS, EventKind
from overlaysim.metrics.stats import mean, pct, vmax
from overlaysim.metrics.tables import lists

_MEMBER = frozenset(str(k) for k in MEMBER_KINDS)
_SUSPECT_OR_DEAD = frozenset({str(EventKind.MEMBER_SUSPECT), str(EventKind.MEMBER_DEAD)})
_DEAD = str(EventKind.MEMBER_DEAD)
_ALIVE_VIEWS = frozenset(str(k) for k in ALIVE_VIEW_KINDS)
_JOIN_KINDS = (str(EventKind.NODE_JOIN), str(EventKind.NODE_RESTART))


def member_views(events: pd.DataFrame) -> pd.DataFrame:
    """member_* rows where the observer is not the subject itself."""
    return events[events["kind"].isin(_MEMBER) & (events["node"] != events["subject"])]


@dataclass(frozen=True, slots=True)
class _Views:
    """Views about one subject, in time order, as plain lists (fast windows by bisect)."""

    t: list[float]
    node: list[str]
    kind: list[str]

    def window(self, t0: float, t1: float) -> range:
        return range(bisect_left(self.t, t0), bisect_left(self.t, t1))

    def first_by_observer(self, t0: float, t1: float, kinds: frozenset[str]) -> dict[str, float]:
        """Earliest time in [t0, t1) each observer reported one of ``kinds``."""
        first: dict[str, float] = {}
        for i in self.window(t0, t1):
            if self.kind[i] in kinds:
                first.setdefault(self.node[i], self.t[i])
        return first


def _views_by_subject(events: pd.DataFrame, subjects: Iterable[str]) -> dict[str, _Views]:
    m = member_views(events)
    m = m[m["subject"].isin(set(subjects))].sort_values("t", kind="stable")
    acc: dict[str, tuple[list[float], list[str], list[str]]] = {}
    for t, node, kind, subj in zip(*lists(m, "t", "node", "kind", "subject"), strict=True):
        ts, ns, ks = acc.setdefault(subj, ([], [], []))
        ts.append(t)
        ns.append(node)
        ks.append(kind)
    return {s: _Views(*v) for s, v in acc.items()}


def _coverage(
    live: Liveness, x: str, t0: float, t1: float, first: dict[str, float]
) -> tuple[list[float], int]:
    """Report times of the required observers of ``x`` in [t0, t1), and how many never did.

    Required: every host other than ``x`` that is up at ``t0``, except one that goes
    down before it reports (it cannot be expected to; as with ``node_gone`` in
    convergence, it simply stops counting).
    """
    times: list[float] = []
    missing = 0
    for h in live.hosts:
        if h == x or not live.is_up(h, t0):
            continue
        down = live.next_change(h, t0, up=False)
        r = first.get(h)
        if r is not None and r < down:
            times.append(r)
        elif down >= t1:
            missing += 1
    return times, missing


def _window_end(t_next: float, duration_s: float) -> float:
    return min(t_next, duration_s) if duration_s > 0 else t_next


def failure_detections(
    events: pd.DataFrame, duration_s: float, live: Liveness | None = None
) -> pd.DataFrame:
    """One row per ``node_crash``: columns t, node, window_end, observers (required),
    first_suspect_s, all_dead_s (NaN when undefined), missing (required observers that
    never reported it dead)."""
    live = live or Liveness(events)
    crashes = events[events["kind"] == EventKind.NODE_CRASH]
    views = _views_by_subject(events, crashes["subject"])
    out = []
    for t0, x in zip(*lists(crashes, "t", "subject"), strict=True):
        t1 = _window_end(live.next_change(x, t0, up=True), duration_s)
        v = views.get(x, _Views([], [], []))
        first_suspect = all_dead = float("nan")
        sus = v.first_by_observer(t0, t1, _SUSPECT_OR_DEAD)
        if sus:
            first_suspect = min(sus.values()) - t0
        dead = v.first_by_observer(t0, t1, frozenset({_DEAD}))
        times, missing = _coverage(live, x, t0, t1, dead)
        if times and not missing:
            all_dead = max(times) - t0
        out.append((t0, x, t1, len(times) + missing, first_suspect, all_dead, missing))
    cols = ["t", "node", "window_end", "observers", "first_suspect_s", "all_dead_s", "missing"]
    return pd.DataFrame(out, columns=cols)


def join_visibilities(
    events: pd.DataFrame, duration_s: float, live: Liveness | None = None
) -> pd.DataFrame:
    """One row per ``node_join``/``node_restart``: columns t, node, kind, window_end,
    observers (required), visibility_s (NaN unless every required observer saw it
    alive), missing."""
    live = live or Liveness(events)
    joins = events[events["kind"].isin(_JOIN_KINDS)]
    views = _views_by_subject(events, joins["subject"])
    out = []
    for t0, x, kind in zip(*lists(joins, "t", "subject", "kind"), strict=True):
        t1 = _window_end(live.next_change(x, t0, up=False), duration_s)
        seen = views.get(x, _Views([], [], [])).first_by_observer(t0, t1, _ALIVE_VIEWS)
        times, missing = _coverage(live, x, t0, t1, seen)
        visibility = max(times) - t0 if times and not missing else float("nan")
        out.append((t0, x, kind, t1, len(times) + missing, visibility, missing))
    cols = ["t", "node", "kind", "window_end", "observers", "visibility_s", "missing"]
    return pd.DataFrame(out, columns=cols)


def false_positive_counts(events: pd.DataFrame, live: Liveness | None = None) -> dict[str, int]:
    """Counts of member_dead (and member_suspect) verdicts about hosts that were up.

    Keys: false_positives, false_positives_partitioned, late_dead_after_restart,
    false_suspicions (member_suspect under the false-positive rule, outside partitions).
    """
    live = live or Liveness(events)
    parts = Partitions(events)
    m = member_views(events)
    verdicts = m[m["kind"].isin(_SUSPECT_OR_DEAD)]
    counts = {
        "false_positives": 0,
        "false_positives_partitioned": 0,
        "late_dead_after_restart": 0,
        "false_suspicions": 0,
    }
    if verdicts.empty:
        return counts
    # Alive views, only for the (observer, subject) pairs that gave a verdict.
    pairs = pd.MultiIndex.from_arrays([verdicts["node"], verdicts["subject"]]).unique()
    views = m[m["kind"].isin(_ALIVE_VIEWS)]
    views = views[pd.MultiIndex.from_arrays([views["node"], views["subject"]]).isin(pairs)]
    alive_at: dict[tuple[str, str], list[float]] = defaultdict(list)
    for t, o, x in zip(*lists(views, "t", "node", "subject"), strict=True):
        alive_at[(o, x)].append(t)
    for t, o, x, kind in zip(*lists(verdicts, "t", "node", "subject", "kind"), strict=True):
        if not live.is_up(x, t):
            continue  # a correct verdict
        life = live.current_life_start(x, t)
        if life is not None and not any(life <= ta <= t for ta in alive_at.get((o, x), ())):
            if kind == _DEAD:
                counts["late_dead_after_restart"] += 1
            continue
        separated = parts.separated(o, x, t)
        if kind != _DEAD:
            counts["false_suspicions"] += not separated
        elif separated:
            counts["false_positives_partitioned"] += 1
        else:
            counts["false_positives"] += 1
    return counts


def summarize_failure_detection(fd: pd.DataFrame) -> dict[str, Any]:
    """The ``failure_detection_s`` block of metrics.json from :func:`failure_detections`."""
    sus = fd["first_suspect_s"].dropna()
    dead = fd["all_dead_s"].dropna()
    return {
        "count": len(fd),
        "first_suspect_mean": mean(sus),
        "first_suspect_p50": pct(sus, 50),
        "first_suspect_max": vmax(sus),
        "suspected": len(sus),
        "all_dead_p50": pct(dead, 50),
        "all_dead_max": vmax(dead),
        "all_dead_mean": mean(dead),
        "all_dead_count": len(dead),
        "undetected": int((fd["missing"] > 0).sum()),
    }


def summarize_join_visibility(jv: pd.DataFrame) -> dict[str, Any]:
    """The ``join_visibility_s`` block of metrics.json from :func:`join_visibilities`."""
    vis = jv["visibility_s"].dropna()
    return {
        "count": len(vis),
        "p50": pct(vis, 50),
        "max": vmax(vis),
        "joins": len(jv),
        "unseen": int((jv["missing"] > 0).sum()),
    }


_VIEW_STATE = {
    str(EventKind.MEMBER_SUSPECT): "suspect",
    str(EventKind.MEMBER_DEAD): "dead",
    str(EventKind.MEMBER_LEAVE): "left",
    **{k: "alive" for k in _ALIVE_VIEWS},
}


_COUNTED = frozenset({"suspect", "dead"})


def view_counts(events: pd.DataFrame) -> pd.DataFrame:
    """How many observers consider each subject suspect or dead, over time.

    Only subjects that were ever suspected or declared dead appear. One row per change:
    columns t, subject, suspect, dead (counts from ``t`` on). An observer's views are
    dropped while it is itself crashed or gone.
    """
    cols = ["t", "subject", "suspect", "dead"]
    m = member_views(events)
    verdicts = m[m["kind"].isin(_SUSPECT_OR_DEAD)]
    if verdicts.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "t" else "int64") for c in cols})
    pairs = pd.MultiIndex.from_arrays([verdicts["node"], verdicts["subject"]]).unique()
    m = m[pd.MultiIndex.from_arrays([m["node"], m["subject"]]).isin(pairs)]
    gone = events[events["kind"].isin((str(EventKind.NODE_CRASH), str(EventKind.NODE_LEAVE)))]
    gone = gone[gone["subject"].isin(set(pairs.get_level_values(0)))]
    seq = pd.concat(
        [
            m[["t", "node", "subject", "kind"]],
            pd.DataFrame({"t": gone["t"], "node": gone["subject"], "subject": "", "kind": "gone"}),
        ]
    ).sort_values("t", kind="stable")
    state: dict[tuple[str, str], str] = {}
    by_observer: dict[str, set[str]] = defaultdict(set)
    count: dict[str, dict[str, int]] = defaultdict(lambda: {"suspect": 0, "dead": 0})
    out: list[tuple[float, str, int, int]] = []

    def move(o: str, x: str, new: str | None, t: float) -> None:
        old = state.pop((o, x), None)
        if new is not None:
            state[(o, x)] = new
            by_observer[o].add(x)
        if old == new or (old not in _COUNTED and new not in _COUNTED):
            return
        c = count[x]
        if old in c:
            c[old] -= 1
        if new in c:
            c[new] += 1
        out.append((t, x, c["suspect"], c["dead"]))

    for t, o, x, kind in zip(*lists(seq, "t", "node", "subject", "kind"), strict=True):
        if kind == "gone":
            for s in sorted(by_observer.pop(o, ())):
                move(o, s, None, t)
        else:
            move(o, x, _VIEW_STATE[kind], t)
    return pd.DataFrame(out, columns=cols)
