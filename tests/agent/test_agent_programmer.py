"""Programmer: table events to data-plane calls, replay, delete, reconcile (fake data plane)."""

from __future__ import annotations

import pytest
from agent_fakes import FakeDataPlane

from overlaysim.agent.dataplane import NetInfo
from overlaysim.agent.logging import EventLog
from overlaysim.agent.programmer import Programmer, remote_entries, remote_of
from overlaysim.core.endpoint import ENDPOINTS
from overlaysim.core.events import EntryEvent, EntryEventKind
from overlaysim.core.wire import Entry

ME = "h1"
WEB = NetInfo(name="web", vni=4096, subnet="10.0.0.0/24", gateway="10.0.0.1", mtu=1450)


def ev(kind: str, key: str, owner: str, ip: str = "", vtep: str = "", network: str = "web"):
    value = {"name": key, "ip": ip, "mac": mac(ip), "vtep": vtep} if ip else {}
    return EntryEvent(EntryEventKind(kind), network, ENDPOINTS, key, owner, value)


def mac(ip: str) -> str:
    return "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


@pytest.fixture
def setup():
    dp = FakeDataPlane(underlay_ip="10.98.0.1")
    log = EventLog(None, node=ME, keep=True, clock=iter(range(10_000)).__next__)
    return dp, log, Programmer(dp, node=ME, log=log)


def kinds(log: EventLog, kind: str) -> list[dict]:
    return [r for r in log.lines if r["kind"] == kind]


def test_remote_create_programs_kernel_and_logs(setup) -> None:
    dp, log, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.on_event(ev("create", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    assert dp.kernel_state("web") == (
        {(mac("10.0.0.3"), "10.98.0.2")},
        {("10.0.0.3", mac("10.0.0.3"))},
    )
    (line,) = kinds(log, "entry_programmed")
    assert line | {"t": 0} == {
        "t": 0,
        "node": ME,
        "kind": "entry_programmed",
        "network": "web",
        "key": "c2",
        "op": "add",
        "owner": "h2",
        "ip": "10.0.0.3",
        "vtep": "10.98.0.2",
    }


def test_own_entries_and_other_tables_are_not_programmed(setup) -> None:
    dp, log, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.on_event(ev("create", "c1", ME, "10.0.0.2", "10.98.0.1"))
    other = EntryEvent(EntryEventKind.CREATE, "web", "services", "x", "h2", {"ip": "10.0.0.9"})
    prog.on_event(other)
    assert not [c for c in dp.calls if c[0] in ("add_remote", "remove_remote")]
    assert kinds(log, "entry_programmed") == []


def test_entries_before_the_sandbox_are_replayed_and_logged_then(setup) -> None:
    dp, log, prog = setup
    prog.on_event(ev("create", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    prog.on_event(ev("create", "c3", "h3", "10.0.0.4", "10.98.0.3"))
    assert dp.kernel_state("web") == (set(), set())
    assert kinds(log, "entry_programmed") == []  # nothing in the kernel yet
    out = prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    assert out == {"ifname": "eth0", "netns": "fake-c1", "first": True}
    fdb, neigh = dp.kernel_state("web")
    assert fdb == {(mac("10.0.0.3"), "10.98.0.2"), (mac("10.0.0.4"), "10.98.0.3")}
    replayed = kinds(log, "entry_programmed")
    assert [(r["key"], r["op"], r["owner"], r.get("replay")) for r in replayed] == [
        ("c2", "add", "h2", True),
        ("c3", "add", "h3", True),
    ]
    assert prog.attach("c9", WEB, "10.0.0.9", 24, mac("10.0.0.9"))["first"] is False
    assert len(kinds(log, "entry_programmed")) == 2  # no second replay


def test_delete_removes_the_entry(setup) -> None:
    dp, log, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.on_event(ev("create", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    # a DELETE event carries the value that was live; the programmer uses what it holds
    prog.on_event(ev("delete", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    assert dp.kernel_state("web") == (set(), set())
    assert [(r["key"], r["op"]) for r in kinds(log, "entry_programmed")] == [
        ("c2", "add"),
        ("c2", "delete"),
    ]
    assert prog.held == {}


def test_refresh_leaves_the_kernel_alone_and_logs_a_noop_add(setup) -> None:
    dp, log, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.on_event(ev("create", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    calls, kernel = list(dp.calls), dp.kernel_state("web")
    # the owner's next boot re-added the same endpoint: a newer version, same content
    prog.on_event(ev("refresh", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    assert dp.calls == calls and dp.kernel_state("web") == kernel  # nothing reprogrammed
    ops = [(r["op"], r["ip"], r.get("noop")) for r in kinds(log, "entry_programmed")]
    assert ops == [("add", "10.0.0.3", None), ("add", "10.0.0.3", True)]
    # no line where nothing is held (a malformed entry) or no sandbox exists here
    prog.on_event(ev("refresh", "c9", "h2", "10.0.0.9", "10.98.0.2"))
    prog.on_event(ev("refresh", "c2", "h2", "10.0.0.3", "10.98.0.2", network="db"))
    assert len(kinds(log, "entry_programmed")) == 2 and dp.calls == calls


def test_update_moves_the_endpoint(setup) -> None:
    dp, log, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.on_event(ev("create", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    prog.on_event(ev("update", "c2", "h3", "10.0.0.5", "10.98.0.3"))  # restarted elsewhere
    assert dp.kernel_state("web") == (
        {(mac("10.0.0.5"), "10.98.0.3")},
        {("10.0.0.5", mac("10.0.0.5"))},
    )
    ops = [(r["op"], r["ip"], r["owner"]) for r in kinds(log, "entry_programmed")]
    assert ops == [
        ("add", "10.0.0.3", "h2"),
        ("delete", "10.0.0.3", "h2"),
        ("add", "10.0.0.5", "h3"),
    ]


def test_update_to_our_own_entry_unprograms_the_remote(setup) -> None:
    dp, _, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.on_event(ev("create", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    prog.on_event(ev("update", "c2", ME, "10.0.0.7", "10.98.0.1"))
    assert dp.kernel_state("web") == (set(), set())


def test_malformed_peer_value_is_logged_not_programmed(setup) -> None:
    dp, log, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    bad = EntryEvent(
        EntryEventKind.CREATE, "web", ENDPOINTS, "x", "h2", {"ip": "nope", "mac": "zz"}
    )
    prog.on_event(bad)
    assert dp.kernel_state("web") == (set(), set())
    (err,) = kinds(log, "program_error")
    assert err["key"] == "x" and "nope" in err["error"]
    assert prog.errors == 1


def test_kernel_failure_is_logged_and_reconcile_repairs_it(setup) -> None:
    dp, log, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    dp.fail_next = OSError("ENOBUFS")
    prog.on_event(ev("create", "c2", "h2", "10.0.0.3", "10.98.0.2"))  # must not raise
    assert dp.kernel_state("web") == (set(), set())
    assert kinds(log, "entry_programmed") == []
    assert "ENOBUFS" in kinds(log, "program_error")[0]["error"]
    remote = ("10.0.0.3", mac("10.0.0.3"), "10.98.0.2")
    repairs = prog.reconcile({"web": {"c2": remote}})
    assert repairs == {
        "web": {
            "added": [
                ("fdb", mac("10.0.0.3"), "10.98.0.2"),
                ("neigh", "10.0.0.3", mac("10.0.0.3")),
            ],
            "removed": [],
        }
    }
    assert dp.kernel_state("web")[0] == {(mac("10.0.0.3"), "10.98.0.2")}
    (line,) = kinds(log, "reconcile")
    assert line["network"] == "web" and len(line["added"]) == 2


def test_reconcile_removes_stale_entries_and_is_quiet_when_clean(setup) -> None:
    dp, log, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.on_event(ev("create", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    # drift: a stale entry appears in the kernel (IP reuse left it behind)
    dp.kernel["web"][0].add(("02:42:0a:00:00:63", "10.98.0.9"))
    good = {"web": {"c2": ("10.0.0.3", mac("10.0.0.3"), "10.98.0.2")}}
    repairs = prog.reconcile(good)
    assert repairs["web"]["removed"] == [("fdb", "02:42:0a:00:00:63", "10.98.0.9")]
    assert prog.reconcile(good) == {}
    assert len(kinds(log, "reconcile")) == 1


def test_reconcile_only_touches_local_networks(setup) -> None:
    dp, _, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.reconcile({"web": {}, "db": {"x": ("10.1.0.2", mac("10.1.0.2"), "10.98.0.2")}})
    assert [c[1] for c in dp.calls if c[0] == "reconcile"] == ["web"]


def test_detach_reports_the_last_container(setup) -> None:
    dp, _, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.attach("c2", WEB, "10.0.0.3", 24, mac("10.0.0.3"))
    assert prog.detach("c1", "web") == {"last": False}
    assert prog.local_networks() == ["web"]
    assert prog.detach("c2", "web") == {"last": True}
    assert prog.local_networks() == []
    # after the sandbox is gone, a delete is forwarded but not logged as programmed
    prog.on_event(ev("create", "c5", "h2", "10.0.0.6", "10.98.0.2"))
    prog.on_event(ev("delete", "c5", "h2", "10.0.0.6", "10.98.0.2"))
    assert ("remove_remote", "web", "10.0.0.6", mac("10.0.0.6"), "10.98.0.2") in dp.calls


def test_kernel_view(setup) -> None:
    _, _, prog = setup
    prog.attach("c1", WEB, "10.0.0.2", 24, mac("10.0.0.2"))
    prog.on_event(ev("create", "c2", "h2", "10.0.0.3", "10.98.0.2"))
    assert prog.kernel() == {
        "web": {
            "fdb": [[mac("10.0.0.3"), "10.98.0.2"]],
            "neigh": [["10.0.0.3", mac("10.0.0.3")]],
        }
    }


def test_remote_of_and_remote_entries() -> None:
    assert remote_of({"ip": "10.0.0.3", "mac": "02:42:0A:00:00:03", "vtep": "10.98.0.2"}) == (
        "10.0.0.3",
        "02:42:0a:00:00:03",
        "10.98.0.2",
    )
    for bad in ({}, {"ip": "10.0.0.3", "mac": "x", "vtep": "10.98.0.2"}, {"ip": "a", "mac": "b"}):
        with pytest.raises(ValueError):
            remote_of(bad)

    def entry(key: str, owner: str, ip: str, table: str = ENDPOINTS, deleted: bool = False):
        value = {"ip": ip, "mac": mac(ip), "vtep": "10.98.0.2"}
        return Entry(
            network="web", table=table, key=key, owner=owner, owner_epoch=1, ltime=1,
            deleted=deleted, value=value,
        )  # fmt: skip

    entries = [
        entry("a", "h2", "10.0.0.3"),
        entry("b", ME, "10.0.0.4"),
        entry("c", "h2", "10.0.0.5", table="other"),
        entry("d", "h2", "10.0.0.6", deleted=True),
    ]
    assert remote_entries(entries, ME) == {"a": ("10.0.0.3", mac("10.0.0.3"), "10.98.0.2")}
