"""Lifeguard suspicion maths, table-driven like memberlist's suspicion tests."""

from __future__ import annotations

import math

import pytest

from overlaysim.core.suspicion import (
    Suspicion,
    expected_confirmations,
    remaining_suspicion_time,
    suspicion_min_timeout,
    suspicion_timeout,
)


@pytest.mark.parametrize(
    ("confirmations", "k", "elapsed", "lo", "hi", "expected"),
    [
        (0, 3, 0.0, 2.0, 30.0, 30.0),
        (1, 3, 2.0, 2.0, 30.0, 14.0),
        # 30 - log(3)/log(4) * 28 = 7.8105..., minus 3 s elapsed
        (2, 3, 3.0, 2.0, 30.0, 4.8105),
        (3, 3, 4.0, 2.0, 30.0, -2.0),
        (4, 3, 5.0, 2.0, 30.0, -3.0),
        (5, 3, 10.0, 2.0, 30.0, -8.0),
    ],
)
def test_remaining_time_table(confirmations, k, elapsed, lo, hi, expected):
    got = remaining_suspicion_time(confirmations, k, elapsed, lo, hi)
    assert got == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("mult", "n", "interval", "expected"),
    [
        (4, 0, 1.0, 4.0),  # log10 of anything below 10 is floored to 1
        (4, 1, 1.0, 4.0),
        (4, 10, 1.0, 4.0),
        (4, 100, 1.0, 8.0),
        (4, 1000, 0.5, 6.0),
        (5, 31, 2.0, 10.0 * math.log10(31)),
    ],
)
def test_min_timeout_scales_with_log10_n(mult, n, interval, expected):
    assert suspicion_min_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("mult", "n", "k"),
    [(4, 100, 2), (4, 4, 2), (4, 3, 0), (3, 10, 1), (6, 5, 0), (6, 6, 4), (1, 100, 0)],
)
def test_expected_confirmations_need_enough_other_members(mult, n, k):
    assert expected_confirmations(mult, n) == k


def test_timeout_without_expected_confirmations_is_the_maximum():
    assert suspicion_timeout(0, 0, 1.0, 6.0) == 6.0
    assert suspicion_timeout(5, 0, 1.0, 6.0) == 6.0


def test_timeout_decreases_monotonically_to_the_minimum():
    values = [suspicion_timeout(c, 3, 0.5, 2.0) for c in range(6)]
    assert values[0] == 2.0
    assert all(a > b for a, b in zip(values[:3], values[1:4], strict=True))
    assert values[3] == values[4] == values[5] == 0.5


# (accuser, confirmations as (from, new info?), count, timeout) as in memberlist's timer test
TIMER_CASES = [
    ("me", [], 0, 2.0),
    ("me", [("me", False), ("foo", True)], 1, 1.25),
    ("me", [("me", False), ("foo", True), ("foo", False), ("foo", False)], 1, 1.25),
    ("me", [("me", False), ("foo", True), ("bar", True)], 2, 0.8113),  # 2 - 1.5 * log(3)/log(4)
    ("me", [("me", False), ("foo", True), ("bar", True), ("baz", True)], 3, 0.5),
    ("me", [("me", False), ("foo", True), ("bar", True), ("baz", True), ("zoo", False)], 3, 0.5),
]


@pytest.mark.parametrize(("accuser", "confirms", "count", "timeout"), TIMER_CASES)
def test_suspicion_counts_only_new_independent_confirmations(accuser, confirms, count, timeout):
    s = Suspicion(accuser=accuser, k=3, min_timeout=0.5, max_timeout=2.0, start=100.0)
    for src, new in confirms:
        assert s.confirm(src) is new, src
    assert s.confirmations == count
    assert s.deadline == pytest.approx(100.0 + timeout, abs=1e-3)


def test_late_confirmation_can_put_the_deadline_in_the_past():
    s = Suspicion(accuser="a", k=1, min_timeout=0.1, max_timeout=30.0, start=0.0)
    assert s.deadline == 30.0
    assert s.confirm("b")
    assert s.deadline == pytest.approx(0.1)  # a driver at t=0.2 fires it at once
