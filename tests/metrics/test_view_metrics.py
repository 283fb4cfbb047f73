"""membership_views: distinct views, agreement over time and flaps, from events alone."""

from __future__ import annotations

import pandas as pd
import pytest

from overlaysim.metrics.views import view_metrics


def _events(rows: list[tuple[float, str, str, str]]) -> pd.DataFrame:
    base = [(0.0, "", "node_start", h) for h in ("h1", "h2", "h3")]
    return pd.DataFrame(base + rows, columns=["t", "node", "kind", "subject"])


def test_a_quiet_formed_cluster_agrees_all_the_time() -> None:
    m, series = view_metrics(_events([]), 10.0)
    assert m["distinct_views"] == 1
    assert m["agreement_fraction"] == m["correct_fraction"] == 1.0
    assert m["flaps"] == 0 and series.distinct == (1,)


def test_a_false_dead_splits_the_views_until_it_is_undone() -> None:
    rows = [(2.0, "h1", "member_dead", "h3"), (6.0, "h1", "member_alive", "h3")]
    m, series = view_metrics(_events(rows), 10.0)
    # h1 holds {h1, h2} from 2 s to 6 s while h2 and h3 hold everyone.
    assert m["distinct_views"] == 2
    assert m["agreement_fraction"] == pytest.approx(0.6)
    assert m["correct_fraction"] == pytest.approx(0.6)
    assert m["flaps"] == 1 and m["flaps_max_node"] == 1
    assert series.t == (0.0, 2.0, 6.0) and series.distinct == (1, 2, 1)


def test_a_comeback_after_the_flap_window_is_not_a_flap() -> None:
    rows = [(2.0, "h1", "member_dead", "h3"), (70.0, "h1", "member_alive", "h3")]
    m, _ = view_metrics(_events(rows), 100.0)
    assert m["flaps"] == 0


def test_a_correct_crash_view_agrees_and_is_correct_once_everyone_knows() -> None:
    rows = [
        (1.0, "", "node_crash", "h3"),
        (3.0, "h1", "member_dead", "h3"),
        (4.0, "h2", "member_dead", "h3"),
    ]
    m, _ = view_metrics(_events(rows), 10.0)
    # 1-3 s: h1 and h2 agree (both still list h3) but are wrong; 3-4 s: they differ.
    assert m["agreement_fraction"] == pytest.approx(0.9)
    assert m["correct_fraction"] == pytest.approx(0.7)
    assert m["flaps"] == 0


def test_a_restarted_node_starts_from_itself_and_joins_again() -> None:
    rows = [
        (1.0, "", "node_crash", "h3"),
        (1.5, "h1", "member_dead", "h3"),
        (1.5, "h2", "member_dead", "h3"),
        (5.0, "", "node_restart", "h3"),
        (5.5, "h3", "member_join", "h1"),
        (5.5, "h3", "member_join", "h2"),
        (5.5, "h1", "member_join", "h3"),
        (5.5, "h2", "member_join", "h3"),
    ]
    m, series = view_metrics(_events(rows), 10.0)
    assert series.distinct[-1] == 1 and series.correct[-1]
    # Wrong only from the crash to the dead views (0.5 s) and from the restart to the joins.
    assert m["correct_fraction"] == pytest.approx(0.9)
    assert m["flaps"] == 2  # dead at 1.5 s, back at 5.5 s, for two observers
