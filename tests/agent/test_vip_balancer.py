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


class FakeConntrack:
    """Entries as (orig dst, reply src, port); a filtered dump honours ``daddr``."""

    entries: list[tuple[str, str, int]] = []
    filters: bool = True

    def __init__(self) -> None:
        self.asked: list[str | None] = []
        self.deleted: list[tuple[str, str, int]] = []
        FakeConntrack.last = self

    def dump_entries(self, tuple_orig=None):
        from types import SimpleNamespace

        if tuple_orig is not None and not self.filters:
            from pyroute2.netlink.exceptions import NetlinkError

            raise NetlinkError(22, "Invalid argument")  # a kernel before 5.8
        self.asked.append(None if tuple_orig is None else tuple_orig.daddr)
        for dst, src, port in list(self.entries):
            if tuple_orig is None or tuple_orig.daddr == dst:
                orig = SimpleNamespace(daddr=dst, key=(dst, src, port))
                yield SimpleNamespace(tuple_orig=orig, tuple_reply=SimpleNamespace(saddr=src))

    def entry(self, cmd, tuple_orig):
        assert cmd == "del"
        self.deleted.append(tuple_orig.key)
        self.entries.remove(tuple_orig.key)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("kernel_filters", [True, False])
def test_the_flush_asks_for_the_vips_entries_and_deletes_only_removed_tasks(
    monkeypatch: pytest.MonkeyPatch, kernel_filters: bool
) -> None:
    web, db = "10.0.0.2", "10.0.0.3"
    FakeConntrack.filters = kernel_filters
    FakeConntrack.entries = [
        (web, "10.0.0.11", 1),  # to a live task: kept
        (web, "10.0.0.12", 2),  # to the removed task: deleted
        (web, web, 3),  # never translated (no rule at the time): not ours to judge
        (db, "10.0.0.21", 4),  # another VIP, not named: kept
        ("127.0.0.11", "127.0.0.11", 5),  # a DNS query: kept
    ]
    monkeypatch.setattr(vip, "Conntrack", FakeConntrack)
    assert vip._flush_here({web}, {web: {"10.0.0.11"}}) == 1
    ct = FakeConntrack.last
    assert ct.deleted == [(web, "10.0.0.12", 2)]
    assert ct.asked == ([web] if kernel_filters else [None])  # the kernel filters, or all
