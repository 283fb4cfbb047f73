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
