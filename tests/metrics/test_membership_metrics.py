"""Failure detection, join visibility, false positives and view counts on hand-built events."""

from __future__ import annotations

import math

import pytest

from overlaysim.metrics.groundtruth import Liveness, Partitions, parse_groups
from overlaysim.metrics.membership import (
    failure_detections,
    false_positive_counts,
    join_visibilities,
    summarize_failure_detection,
    summarize_join_visibility,
    view_counts,
)
from overlaysim.metrics.records import EventLog
from overlaysim.metrics.tables import frame


def events_of(build) -> object:
    log = EventLog()
    build(log)
    log.rows.sort(key=lambda r: r[0])
    return frame("events", log.rows)


def start(log, hosts, t=0.0):
    for h in hosts:
        log.add(t, "node_start", subject=h)


def views(log, t, kind, observers, subject, step=0.0):
    for i, o in enumerate(observers):
        log.add(t + i * step, kind, node=o, subject=subject)


# --- ground truth ------------------------------------------------------------------------


def test_liveness_intervals_and_inferred_initial_state():
    def build(log):
        start(log, ["a", "b"])
        log.add(5.0, "node_crash", subject="a")
        log.add(9.0, "node_restart", subject="a")
        log.add(3.0, "node_leave", subject="c")  # no start recorded: was up before
        log.add(4.0, "node_join", subject="e")  # first event brings it up: down before
        log.add(1.0, "member_join", node="z", subject="a")  # observer only: always up

    live = Liveness(events_of(build))
    assert live.hosts == {"a", "b", "c", "e", "z"}
    assert [live.is_up("a", t) for t in (0, 4.9, 5.0, 8.9, 9.0, 20)] == [
        True,
        True,
        False,
        False,
        True,
        True,
    ]
    assert live.is_up("c", 2.9) and not live.is_up("c", 3.0)
    assert not live.is_up("e", 3.9) and live.is_up("e", 4.0)
    assert live.is_up("z", 100.0)
    assert live.up_throughout("b", 0, 50) and not live.up_throughout("a", 0, 6)
    assert live.up_throughout("a", 9.0, 20) and not live.up_throughout("e", 0, 10)
    assert live.next_change("a", 5.0, up=True) == 9.0
    assert live.next_change("b", 0.0, up=False) == math.inf
    assert live.current_life_start("a", 4.0) is None  # first life
    assert live.current_life_start("a", 12.0) == 9.0


def test_partitions_groups_unlisted_hosts_and_heal():
    def build(log):
        log.add(10.0, "partition", detail={"groups": [["a", "b"], ["c"]]})
        log.add(20.0, "heal", detail={"groups": [["c"], ["b", "a"]]})
        log.add(30.0, "partition", detail=[["a"]])  # bare list; b, c form the other side
        log.add(40.0, "heal")

    p = Partitions(events_of(build))
    assert not p.separated("a", "c", 9.99)
    assert p.separated("a", "c", 10.0) and p.separated("b", "c", 15.0)
    assert not p.separated("a", "b", 15.0)
    assert p.separated("a", "d", 15.0)  # d is unlisted: the implicit third group
    assert not p.separated("a", "c", 20.0)
    assert p.separated("a", "b", 35.0) and not p.separated("b", "c", 35.0)
    assert not p.separated("a", "b", 40.0)


def test_parse_groups_rejects_malformed_detail():
    assert parse_groups('{"groups": [["a"], ["b"]]}') == [["a"], ["b"]]
    with pytest.raises(ValueError):
        parse_groups('{"groups": "a,b"}')


# --- failure detection -------------------------------------------------------------------


def crash_scenario(log):
    start(log, ["a", "b", "c", "d", "e"])
    # crash 1: d at 10. Every other host suspects, then declares dead.
    log.add(10.0, "node_crash", subject="d")
    log.add(9.0, "member_dead", node="a", subject="d")  # before the crash: not counted
    views(log, 11.0, "member_suspect", ["a", "b"], "d", step=0.5)
    views(log, 14.0, "member_dead", ["a", "b", "c", "e"], "d", step=1.0)  # last at 17
    log.add(25.0, "node_restart", subject="d")
    # crash 2: c at 30; e crashes at 32 before reporting, so it is not required.
    # Nobody reports e's own crash: a goes down at 50, b and d never do.
    log.add(30.0, "node_crash", subject="c")
    log.add(32.0, "node_crash", subject="e")
    log.add(31.0, "member_dead", node="a", subject="c")  # straight to dead, no suspect
    log.add(33.0, "member_dead", node="b", subject="c")
    log.add(34.0, "member_dead", node="d", subject="c")
    # crash 3: a at 50; d never declares it dead before a's restart at 70.
    log.add(50.0, "node_crash", subject="a")
    log.add(52.0, "member_suspect", node="b", subject="a")
    log.add(55.0, "member_dead", node="b", subject="a")
    log.add(70.0, "node_restart", subject="a")
    log.add(71.0, "member_dead", node="d", subject="a")  # after the window: ignored


def test_failure_detection_per_crash():
    fd = failure_detections(events_of(crash_scenario), duration_s=100.0)
    assert list(fd["node"]) == ["d", "c", "e", "a"]
    d, c, e, a = (fd.iloc[i] for i in range(4))
    assert d["first_suspect_s"] == 1.0
    assert d["all_dead_s"] == 7.0
    assert d["observers"] == 4 and d["missing"] == 0 and d["window_end"] == 25.0
    assert c["first_suspect_s"] == 1.0  # a member_dead counts as the first suspicion
    assert c["observers"] == 3  # a, b, d (e crashed inside the window)
    assert c["all_dead_s"] == 4.0
    assert c["window_end"] == 100.0  # never restarts: until the end of the run
    assert math.isnan(e["first_suspect_s"]) and math.isnan(e["all_dead_s"])
    assert e["observers"] == 2 and e["missing"] == 2  # b, d (a went down first)
    assert a["first_suspect_s"] == 2.0
    assert math.isnan(a["all_dead_s"]) and a["missing"] == 1  # only d (c, e are down)


def test_failure_detection_summary():
    s = summarize_failure_detection(failure_detections(events_of(crash_scenario), 100.0))
    assert s["count"] == 4
    assert s["suspected"] == 3
    assert s["first_suspect_mean"] == pytest.approx((1.0 + 1.0 + 2.0) / 3)
    assert s["all_dead_p50"] == pytest.approx(5.5)  # of 7.0 and 4.0
    assert s["all_dead_max"] == 7.0
    assert s["all_dead_count"] == 2
    assert s["undetected"] == 2


def test_failure_detection_empty():
    s = summarize_failure_detection(failure_detections(frame("events"), 10.0))
    assert s["count"] == 0 and s["first_suspect_mean"] is None and s["all_dead_max"] is None


# --- join visibility ---------------------------------------------------------------------


def join_scenario(log):
    start(log, ["a", "b", "c"])
    log.add(10.0, "node_join", subject="x")
    log.add(9.0, "member_join", node="a", subject="x")  # before the join: not counted
    log.add(10.5, "member_join", node="a", subject="x")
    log.add(11.0, "member_alive", node="b", subject="x")
    log.add(12.5, "member_join", node="c", subject="x")
    log.add(13.0, "member_join", node="x", subject="x")  # itself: not an observer
    log.add(20.0, "node_crash", subject="c")
    log.add(30.0, "node_restart", subject="c")
    log.add(31.0, "member_update", node="a", subject="c")
    log.add(33.0, "member_update", node="x", subject="c")
    log.add(32.0, "member_dead", node="b", subject="c")  # b never sees c back: unseen
    log.add(40.0, "node_join", subject="y")  # nobody sees y


def test_join_visibility_per_join():
    jv = join_visibilities(events_of(join_scenario), duration_s=60.0)
    assert list(jv["node"]) == ["x", "c", "y"]
    x, c, y = (jv.iloc[i] for i in range(3))
    # c crashes at 20, after it saw x: it still counts
    assert x["visibility_s"] == 2.5 and x["observers"] == 3
    assert math.isnan(c["visibility_s"]) and c["missing"] == 1 and c["observers"] == 3
    assert math.isnan(y["visibility_s"]) and y["missing"] == 4
    s = summarize_join_visibility(jv)
    assert s == {"count": 1, "p50": 2.5, "max": 2.5, "joins": 3, "unseen": 2}


def test_node_start_is_not_a_join():
    def build(log):
        start(log, ["a", "b"])
        views(log, 0.5, "member_join", ["a"], "b")

    assert len(join_visibilities(events_of(build), 10.0)) == 0


# --- false positives ---------------------------------------------------------------------


def fp_scenario(log):
    start(log, ["a", "b", "c", "d"])
    log.add(5.0, "member_dead", node="a", subject="b")  # b is up: false positive
    log.add(5.5, "member_suspect", node="c", subject="b")  # false suspicion
    log.add(6.0, "member_dead", node="b", subject="b")  # about itself: ignored
    log.add(10.0, "partition", detail={"groups": [["a", "b"], ["c", "d"]]})
    log.add(12.0, "member_dead", node="a", subject="c")  # across the partition
    log.add(12.0, "member_dead", node="d", subject="b")  # across the partition
    log.add(12.5, "member_suspect", node="d", subject="a")  # across: not a false suspicion
    log.add(13.0, "member_dead", node="a", subject="b")  # same side: false positive
    log.add(20.0, "heal", detail={"groups": [["a", "b"], ["c", "d"]]})
    log.add(21.0, "member_dead", node="c", subject="a")  # healed: false positive
    log.add(30.0, "node_crash", subject="d")
    log.add(33.0, "member_dead", node="a", subject="d")  # d is down: correct
    log.add(40.0, "node_restart", subject="d")
    log.add(42.0, "member_dead", node="b", subject="d")  # about d's previous life
    log.add(41.0, "member_update", node="c", subject="d")
    log.add(45.0, "member_dead", node="c", subject="d")  # c saw the new life: false
    log.add(50.0, "node_leave", subject="b")
    log.add(51.0, "member_dead", node="c", subject="b")  # b left: not false


def test_false_positive_counts():
    counts = false_positive_counts(events_of(fp_scenario))
    assert counts == {
        "false_positives": 4,  # a->b@5, a->b@13, c->a@21, c->d@45
        "false_positives_partitioned": 2,  # a->c@12, d->b@12
        "late_dead_after_restart": 1,  # b->d@42
        "false_suspicions": 1,  # c->b@5.5
    }


def test_no_verdicts_no_false_positives():
    def build(log):
        start(log, ["a", "b"])
        views(log, 1.0, "member_join", ["a", "b"], "c")

    assert false_positive_counts(events_of(build))["false_positives"] == 0


# --- view counts (membership timeline) -----------------------------------------------------


def test_view_counts_follow_observers_states():
    def build(log):
        start(log, ["a", "b", "c", "x"])
        log.add(1.0, "member_join", node="a", subject="x")
        log.add(10.0, "node_crash", subject="x")
        log.add(11.0, "member_suspect", node="a", subject="x")
        log.add(11.5, "member_suspect", node="b", subject="x")
        log.add(14.0, "member_dead", node="a", subject="x")
        log.add(15.0, "node_crash", subject="b")  # b's view disappears with it
        log.add(20.0, "member_alive", node="a", subject="x")

    vc = view_counts(events_of(build))
    assert list(vc.itertuples(index=False, name=None)) == [
        (11.0, "x", 1, 0),
        (11.5, "x", 2, 0),
        (14.0, "x", 1, 1),
        (15.0, "x", 0, 1),
        (20.0, "x", 0, 0),
    ]


def test_view_counts_empty_without_verdicts():
    vc = view_counts(frame("events"))
    assert vc.empty and list(vc.columns) == ["t", "subject", "suspect", "dead"]
