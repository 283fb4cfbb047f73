"""Membership metrics: failure detection, join visibility and false positives.

Each compares member_* views reported by agents with the runner's ground truth
(:mod:`overlaysim.metrics.groundtruth`). Definitions are stated once in
``docs/results.md``; in short:

* **failure detection**, per ``node_crash`` of X at t0, in the window up to X's next
  start/restart (or the end of the run): ``first_suspect`` is the first
  member_suspect/member_dead about X by any other host, minus t0; ``all_dead`` is the
  time by which every *required observer* (a host other than X that is up throughout
  the window) has a member_dead about X, minus t0. If a required observer never does,
  the crash is *undetected*.
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

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import pandas as pd

from overlaysim.metrics.groundtruth import Liveness, Partitions
from overlaysim.metrics.records import ALIVE_VIEW_KINDS, EventKind
from overlaysim.metrics.stats import mean, pct, vmax

_SUSPECT_OR_DEAD = frozenset({str(EventKind.MEMBER_SUSPECT), str(EventKind.MEMBER_DEAD)})
_ALIVE_VIEWS = frozenset(str(k) for k in ALIVE_VIEW_KINDS)
_JOIN_KINDS = (str(EventKind.NODE_JOIN), str(EventKind.NODE_RESTART))


def _member_events(events: pd.DataFrame, subjects: Iterable[str]) -> dict[str, pd.DataFrame]:
    """member_* rows about each of ``subjects`` (observer != subject), in time order."""
    m = events[events["kind"].isin(_MEMBER) & events["subject"].isin(set(subjects))]
    m = m[m["node"] != m["subject"]].sort_values("t", kind="stable")
    return {str(s): g for s, g in m.groupby("subject", sort=False)}


def _first_by_observer(rows: pd.DataFrame) -> dict[str, float]:
    """Earliest time each observer appears in ``rows`` (already in time order)."""
    first: dict[str, float] = {}
    for t, node in zip(rows["t"], rows["node"], strict=True):
        first.setdefault(node, float(t))
    return first


def _window_end(t_next: float, duration_s: float) -> float:
    return min(t_next, duration_s) if duration_s > 0 else t_next


def failure_detections(events: pd.DataFrame, duration_s: float) -> pd.DataFrame:
    """One row per ``node_crash``: columns t, node, window_end, observers,
    first_suspect_s, all_dead_s, missing (required observers that never said dead).
    ``first_suspect_s``/``all_dead_s`` are NaN when undefined."""
    live = Liveness(events)
    crashes = events[events["kind"] == EventKind.NODE_CRASH]
    by_subject = _member_events(events, crashes["subject"])
    out = []
    for t0, x in zip(crashes["t"].astype(float), crashes["subject"], strict=True):
        t1 = _window_end(live.next_change(x, t0, up=True), duration_s)
        required = sorted(h for h in live.hosts if h != x and live.up_throughout(h, t0, t1))
        rows = by_subject.get(x)
        first_suspect = all_dead = float("nan")
        missing = len(required)
        if rows is not None:
            w = rows[(rows["t"] >= t0) & (rows["t"] < t1)]
            sus = w[w["kind"].isin(_SUSPECT_OR_DEAD)]
            if len(sus):
                first_suspect = float(sus["t"].iloc[0]) - t0
            dead = _first_by_observer(w[w["kind"] == EventKind.MEMBER_DEAD])
            times = [dead[h] for h in required if h in dead]
            missing = len(required) - len(times)
            if required and not missing:
                all_dead = max(times) - t0
        out.append((t0, x, t1, len(required), first_suspect, all_dead, missing))
    cols = ["t", "node", "window_end", "observers", "first_suspect_s", "all_dead_s", "missing"]
    return pd.DataFrame(out, columns=cols)


def join_visibilities(events: pd.DataFrame, duration_s: float) -> pd.DataFrame:
    """One row per ``node_join``/``node_restart``: columns t, node, kind, window_end,
    observers, visibility_s (NaN unless every required observer saw it), missing."""
    live = Liveness(events)
    joins = events[events["kind"].isin(_JOIN_KINDS)]
    by_subject = _member_events(events, joins["subject"])
    out = []
    for t0, x, kind in zip(joins["t"].astype(float), joins["subject"], joins["kind"], strict=True):
        t1 = _window_end(live.next_change(x, t0, up=False), duration_s)
        required = [h for h in live.hosts if h != x and live.up_throughout(h, t0, t1)]
        rows = by_subject.get(x)
        seen: dict[str, float] = {}
        if rows is not None:
            w = rows[(rows["t"] >= t0) & (rows["t"] < t1) & rows["kind"].isin(_ALIVE_VIEWS)]
            seen = _first_by_observer(w)
        times = [seen[h] for h in required if h in seen]
        missing = len(required) - len(times)
        visibility = max(times) - t0 if required and not missing else float("nan")
        out.append((t0, x, kind, t1, len(required), visibility, missing))
    cols = ["t", "node", "kind", "window_end", "observers", "visibility_s", "missing"]
    return pd.DataFrame(out, columns=cols)


def false_positive_counts(events: pd.DataFrame) -> dict[str, int]:
    """Counts of member_dead (and member_suspect) verdicts about hosts that were up.

    Keys: false_positives, false_positives_partitioned, late_dead_after_restart,
    false_suspicions (member_suspect under the false-positive rule).
    """
    live = Liveness(events)
    parts = Partitions(events)
    m = events[events["kind"].isin(_MEMBER) & (events["node"] != events["subject"])]
    verdicts = m[m["kind"].isin(_SUSPECT_OR_DEAD)]
    counts = {
        "false_positives": 0,
        "false_positives_partitioned": 0,
        "late_dead_after_restart": 0,
        "false_suspicions": 0,
    }
    if verdicts.empty:
        return counts
    # Alive views only for the (observer, subject) pairs that gave a verdict.
    pairs = set(zip(verdicts["node"], verdicts["subject"], strict=True))
    views = m[m["kind"].isin(_ALIVE_VIEWS)]
    alive_at: dict[tuple[str, str], list[float]] = defaultdict(list)
    for t, o, x in zip(views["t"], views["node"], views["subject"], strict=True):
        if (o, x) in pairs:
            alive_at[(o, x)].append(float(t))
    for t, o, x, kind in zip(
        verdicts["t"].astype(float),
        verdicts["node"],
        verdicts["subject"],
        verdicts["kind"],
        strict=True,
    ):
        if not live.is_up(x, t):
            continue  # a correct verdict
        life = live.current_life_start(x, t)
        if life is not None and not any(life <= ta <= t for ta in alive_at.get((o, x), ())):
            if kind == EventKind.MEMBER_DEAD:
                counts["late_dead_after_restart"] += 1
            continue
        if kind == EventKind.MEMBER_SUSPECT:
            if not parts.separated(o, x, t):
                counts["false_suspicions"] += 1
        elif parts.separated(o, x, t):
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


def view_counts(events: pd.DataFrame) -> pd.DataFrame:
    """How many observers consider each subject suspect or dead, over time.

    Only subjects that were ever suspected or declared dead appear. One row per change:
    columns t, subject, suspect, dead (counts from ``t`` on). An observer's views are
    dropped while it is itself crashed or gone.
    """
    cols = ["t", "subject", "suspect", "dead"]
    m = events[events["kind"].isin(_MEMBER) & (events["node"] != events["subject"])]
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
        if old == new:
            return
        c = count[x]
        if old in c:
            c[old] -= 1
        if new in c:
            c[new] += 1
        out.append((t, x, c["suspect"], c["dead"]))

    for t, o, x, kind in zip(seq["t"], seq["node"], seq["subject"], seq["kind"], strict=True):
        if kind == "gone":
            for s in sorted(by_observer.pop(o, ())):
                move(o, s, None, float(t))
        else:
            move(o, x, _VIEW_STATE[kind], float(t))
    return pd.DataFrame(out, columns=cols)
