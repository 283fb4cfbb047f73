"""dns_convergence_s and stale_dns_window_s from per-host table events."""

from __future__ import annotations

import pytest

from overlaysim.core.events import EntryEvent, EntryEventKind
from overlaysim.core.services import ENDPOINTS_TABLE, TaskSpec, name_fields
from overlaysim.metrics.dns import DnsTracker, summarise

C, D = EntryEventKind.CREATE, EntryEventKind.DELETE
IPS = {1: "10.0.0.11", 2: "10.0.0.12", 3: "10.0.0.13"}


def value(slot: int) -> dict[str, str]:
    v = {"name": f"web.{slot}", "ip": IPS[slot], "mac": f"02:00:00:00:00:0{slot}"}
    v["vtep"] = "10.9.0.1"
    return {**v, **name_fields((), TaskSpec("web", slot, vip="10.0.0.2"))}


def ev(kind, slot):
    return EntryEvent(
        kind, "n", ENDPOINTS_TABLE, f"web.{slot}", "h1", value(slot) if kind is C else {}
    )


def test_convergence_waits_for_every_target_and_stale_for_every_holder():
    tr = DnsTracker()
    tr.change(0.0, "n", "web", [IPS[1], IPS[2]], ["h1", "h2"])
    for h, t in (("h1", 0.0), ("h2", 0.3)):
        tr.host_event(t, h, ev(C, 1))
        tr.host_event(t + 0.1, h, ev(C, 2))
    tr.change(1.0, "n", "web", [IPS[1]], ["h1", "h2"])  # scale to 1
    tr.host_event(1.0, "h1", ev(D, 2))
    tr.host_event(1.7, "h2", ev(D, 2))
    rows = tr.finish()
    conv = [r for r in rows if r["metric"] == "dns_convergence_s"]
    assert [r["value_s"] for r in conv] == [pytest.approx(0.4), pytest.approx(0.7)]
    stale = [r for r in rows if r["metric"] == "stale_dns_window_s"]
    assert [(r["ip"], r["value_s"]) for r in stale] == [(IPS[2], pytest.approx(0.7))]
    s = summarise(rows)
    assert s["dns_convergence_s"]["max"] == pytest.approx(0.7)
    assert s["stale_dns_window_s"]["n"] == 1 and s["stale_dns_window_s"]["unconverged"] == 0


def test_supersede_crash_and_unconverged():
    tr = DnsTracker()
    tr.change(0.0, "n", "web", [IPS[1]], ["h1", "h2", "h3"])
    tr.change(0.5, "n", "web", [IPS[1], IPS[3]], ["h1", "h2", "h3"])  # first one superseded
    for h in ("h1", "h2"):
        tr.host_event(0.6, h, ev(C, 1))
        tr.host_event(0.6, h, ev(C, 3))
    tr.host_gone(0.9, "h3")  # it never learned; nobody waits for it any more
    tr.change(2.0, "n", "web", [IPS[1]], ["h1", "h2"])
    tr.host_event(2.2, "h1", ev(D, 3))  # h2 never hears of the delete
    rows = tr.finish()
    assert [r["status"] for r in rows if r["metric"] == "dns_convergence_s"] == [
        "superseded",
        "converged",
        "unconverged",
    ]
    conv = [r for r in rows if r["metric"] == "dns_convergence_s"]
    assert conv[1]["value_s"] == pytest.approx(0.4)  # closed by the crash at 0.9
    stale = [r for r in rows if r["metric"] == "stale_dns_window_s"]
    assert [(r["ip"], r["status"]) for r in stale] == [(IPS[3], "unconverged")]
    assert summarise(rows)["stale_dns_window_s"]["unconverged"] == 1


def test_an_address_removed_before_its_change_is_stale_from_its_own_removal():
    """The emulator removes a step's tasks one by one: web.2 leaves at 5.0, web.3 at 5.8,
    and the change (3 -> 1 tasks) is timed at the last removal."""
    tr = DnsTracker()
    tr.change(0.0, "n", "web", [IPS[1], IPS[2], IPS[3]], ["h1", "h2"])
    for h in ("h1", "h2"):
        for slot in (1, 2, 3):
            tr.host_event(0.1, h, ev(C, slot))
    tr.removed(5.0, "n", "web", IPS[2])
    tr.removed(5.0, "n", "web", IPS[2])  # once only
    tr.host_event(5.0, "h1", ev(D, 2))
    tr.host_event(5.3, "h2", ev(D, 2))
    tr.removed(5.8, "n", "web", IPS[3])
    tr.change(5.8, "n", "web", [IPS[1]], ["h1", "h2"])
    tr.host_event(5.8, "h1", ev(D, 3))
    tr.host_event(6.0, "h2", ev(D, 3))
    stale = [r for r in tr.finish() if r["metric"] == "stale_dns_window_s"]
    assert [(r["t"], r["ip"], r["tasks"], r["targets"]) for r in stale] == [
        (5.0, IPS[2], 1, 2),
        (5.8, IPS[3], 1, 2),
    ]
    assert [r["value_s"] for r in stale] == [pytest.approx(0.3), pytest.approx(0.2)]
    # an address the truth does not hold is no removal
    tr2 = DnsTracker()
    tr2.removed(1.0, "n", "web", IPS[1])
    assert tr2.finish() == []
