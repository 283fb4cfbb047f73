"""The VIP balancer runs ``nft`` only when a container's table must change."""

from __future__ import annotations

import pytest

from overlaysim.agent import vip
from overlaysim.agent.vip import VipBalancer


@pytest.fixture
def nft_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(vip, "replace_rules", lambda ns, b, mode: calls.append((ns, dict(b))))
    return calls


def test_a_new_container_without_vips_costs_no_nft_process(nft_calls) -> None:
    bal = VipBalancer()
    assert not bal.sync("c1", "ns-c1", {})  # nothing to balance: no table, as an empty one
    assert not bal.sync("c1", "ns-c1", {})
    assert nft_calls == []
    assert bal.sync("c1", "ns-c1", {"10.0.0.2": ("10.0.0.11",)})  # the first VIP: a table
    assert nft_calls == [("ns-c1", {"10.0.0.2": ("10.0.0.11",)})]
    assert bal.sync("c1", "ns-c1", {})  # and its last task gone: the table emptied
    assert nft_calls[-1] == ("ns-c1", {})
    assert bal.replaced == 2


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], dict]]:
    calls: list[tuple[str, list[str], dict]] = []

    def flush(ns, vips, keep):
        calls.append((ns, sorted(vips), dict(keep)))
        return 1

    monkeypatch.setattr(vip, "flush_conntrack", flush)
    return calls


def test_only_a_removed_task_costs_a_conntrack_flush(nft_calls, flushes) -> None:
    bal = VipBalancer()
    web, db = "10.0.0.2", "10.0.0.3"
    assert bal.sync("c1", "ns-c1", {web: ("10.0.0.11", "10.0.0.12"), db: ("10.0.0.21",)})
    assert flushes == []  # a first table: nothing was balanced before
    assert bal.sync(
        "c1", "ns-c1", {web: ("10.0.0.11", "10.0.0.12", "10.0.0.13"), db: ("10.0.0.21",)}
    )
    assert flushes == []  # a task added: old flows still go to live tasks
    # the same set in another order: no nft process, no flush
    assert not bal.sync(
        "c1", "ns-c1", {db: ("10.0.0.21",), web: ("10.0.0.13", "10.0.0.12", "10.0.0.11")}
    )
    assert len(nft_calls) == 2 and flushes == []
    assert bal.sync("c1", "ns-c1", {web: ("10.0.0.11", "10.0.0.13"), db: ("10.0.0.21",)})
    assert nft_calls[-1] == ("ns-c1", {web: ("10.0.0.11", "10.0.0.13"), db: ("10.0.0.21",)})
    # the flush names the VIP that lost a task only, and keeps its live tasks
    assert flushes == [("ns-c1", [web], {web: ("10.0.0.11", "10.0.0.13"), db: ("10.0.0.21",)})]
    assert bal.flushed == 1 and bal.replaced == 3


def test_flush_conntrack_runs_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No forked child: the flush runs in a thread (here: this namespace, no entries)."""
    seen: list[tuple[set, dict]] = []
    monkeypatch.setattr(vip, "_flush_here", lambda vips, keep: seen.append((vips, keep)) or 0)
    assert vip.flush_conntrack(None, ["10.0.0.2"], {"10.0.0.2": ["10.0.0.11"]}) == 0
    assert seen == [({"10.0.0.2"}, {"10.0.0.2": {"10.0.0.11"}})]
