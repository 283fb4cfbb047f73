"""ServiceHost bookkeeping: which containers a table event touches, VIP syncs, errors.

Start/stop with real namespaces, files and sockets is in tests/emu/test_services_kernel.py.
"""

from __future__ import annotations

import random

from overlaysim.agent.dns import EmbeddedDns
from overlaysim.agent.service_host import LocalContainer, ServiceHost
from overlaysim.core.events import EntryEvent, EntryEventKind
from overlaysim.core.services import ENDPOINTS_TABLE, Directory, TaskSpec, name_fields

C, D = EntryEventKind.CREATE, EntryEventKind.DELETE


def ev(kind, network, key, ip="10.0.0.1", task=None, table=ENDPOINTS_TABLE):
    value = {"name": key, "ip": ip, "mac": "02:00:00:00:00:01", "vtep": "10.9.0.1"}
    value.update(name_fields((), task))
    return EntryEvent(kind, network, table, key, "h1", value if kind is C else {})


def make():
    calls: list[tuple[str, str, dict]] = []
    fail = {"on": False}

    def sync(name, netns, backends):
        if fail["on"]:
            raise RuntimeError("nft refused")
        calls.append((name, netns, dict(backends)))
        return True

    dns = EmbeddedDns(Directory(), upstreams=[], rng=random.Random(1))
    host = ServiceHost(dns, vip_sync=sync)
    for name in ("a", "b"):
        host.containers[name] = LocalContainer(name, f"ns-{name}", name)
    return host, calls, fail


def test_events_name_the_local_containers_on_that_network():
    host, calls, _ = make()
    assert host.on_event(ev(C, "front", "a", "10.0.0.9")) == {"a"}  # its own endpoint
    assert host.on_event(ev(C, "back", "b", "10.1.0.9")) == {"b"}
    web = TaskSpec("web", 1, vip="10.0.0.2")
    assert host.on_event(ev(C, "front", "web.1", "10.0.0.11", web)) == {"a"}
    assert host.on_event(ev(C, "front", "web.1", "10.0.0.11", web)) == set()  # no change
    assert host.on_event(ev(C, "front", "x", table="other")) == set()
    assert host.sync_vips({"a"}) == 1
    assert calls == [("a", "ns-a", {"10.0.0.2": ("10.0.0.11",)})]
    assert host.on_event(ev(D, "front", "web.1")) == {"a"}
    host.sync_vips()
    assert calls[-2:] == [("a", "ns-a", {}), ("b", "ns-b", {})]
    # a leaves "front": its own delete names it although it is no longer on the network
    assert host.on_event(ev(D, "front", "a")) == {"a"}


def test_a_plain_remote_endpoint_changes_no_vip_and_a_task_becoming_plain_does():
    host, calls, _ = make()
    host.on_event(ev(C, "front", "a", "10.0.0.9"))
    host.on_event(ev(C, "front", "b", "10.0.0.10"))
    # another host's container with no service: the names change, the VIPs do not
    assert host.on_event(ev(C, "front", "other", "10.0.0.20")) == set()
    assert host.directory.record("front", "other") is not None
    assert host.on_event(ev(D, "front", "other")) == set()
    # a task entry replaced by a plain one (same key): the service lost a task
    web = TaskSpec("web", 1, vip="10.0.0.2")
    assert host.on_event(ev(C, "front", "web.1", "10.0.0.11", web)) == {"a", "b"}
    host.sync_vips()
    assert calls[-2:] == [
        ("a", "ns-a", {"10.0.0.2": ("10.0.0.11",)}),
        ("b", "ns-b", {"10.0.0.2": ("10.0.0.11",)}),
    ]
    assert host.on_event(ev(C, "front", "web.1", "10.0.0.12")) == {"a", "b"}
    host.sync_vips()
    assert calls[-2:] == [("a", "ns-a", {}), ("b", "ns-b", {})]
    # the plain one going changes nothing for the VIPs
    assert host.on_event(ev(D, "front", "web.1")) == set()


def test_a_failed_sync_is_counted_not_raised():
    host, calls, fail = make()
    host.on_event(ev(C, "front", "a", "10.0.0.9"))
    fail["on"] = True
    assert host.sync_vips() == 0 and host.vip_errors == 2 and calls == []
    fail["on"] = False
    assert host.sync_vips(["a", "gone"]) == 1


def test_an_event_that_leaves_vip_sets_alone_runs_no_nft(monkeypatch):
    """The real balancer behind the host: a plain container joining the network touches
    every local container, but their VIP sets did not change, so no ``nft`` runs; a
    task leaving rewrites the table and flushes its flows."""
    from overlaysim.agent import vip

    nft: list[tuple[str, dict]] = []
    flushed: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(vip, "replace_rules", lambda ns, b, mode: nft.append((ns, dict(b))))
    monkeypatch.setattr(
        vip, "flush_conntrack", lambda ns, vips, keep: flushed.append((ns, sorted(vips))) or 0
    )
    dns = EmbeddedDns(Directory(), upstreams=[], rng=random.Random(1))
    host = ServiceHost(dns)
    host.containers["a"] = LocalContainer("a", "ns-a", "a")
    host.on_event(ev(C, "front", "a", "10.0.0.9"))
    web = TaskSpec("web", 1, vip="10.0.0.2")
    host.sync_vips(host.on_event(ev(C, "front", "web.1", "10.0.0.11", web)))
    host.sync_vips(
        host.on_event(ev(C, "front", "web.2", "10.0.0.12", TaskSpec("web", 2, vip="10.0.0.2")))
    )
    assert len(nft) == 2 and flushed == []
    assert host.on_event(ev(C, "front", "other", "10.0.0.30")) == set()  # no task: no re-plan
    assert host.sync_vips({"a"}) == 0 and len(nft) == 2  # and a re-plan would rewrite nothing
    assert host.sync_vips(host.on_event(ev(D, "front", "web.2"))) == 1
    assert nft[-1] == ("ns-a", {"10.0.0.2": ("10.0.0.11",)})
    assert flushed == [("ns-a", ["10.0.0.2"])]


def test_queued_plans_coalesce_to_each_containers_newest():
    host, calls, _ = make()
    host.on_event(ev(C, "front", "a", "10.0.0.9"))
    web = [TaskSpec("web", i, vip="10.0.0.2") for i in (1, 2, 3)]
    applies = 0
    for i, t in enumerate(web):  # three events before the worker gets to the first
        touched = host.on_event(ev(C, "front", f"web.{i + 1}", f"10.0.0.{11 + i}", t))
        applies += host.queue_vips(touched)
    assert applies == 1  # one apply queued for the three
    assert calls == []
    assert host.apply_queued() == 1
    assert calls == [("a", "ns-a", {"10.0.0.2": ("10.0.0.11", "10.0.0.12", "10.0.0.13")})]
    assert host.apply_queued() == 0 and len(calls) == 1  # nothing left


def test_a_plan_queued_during_an_apply_gets_an_apply_of_its_own():
    host, calls, _ = make()
    host.on_event(ev(C, "front", "a", "10.0.0.9"))
    t1, t2 = TaskSpec("web", 1, vip="10.0.0.2"), TaskSpec("web", 2, vip="10.0.0.2")
    assert host.queue_vips(host.on_event(ev(C, "front", "web.1", "10.0.0.11", t1)))
    inner: list[bool] = []
    real = host._vip_sync

    def sync(name, netns, backends):  # an event arrives while the worker applies
        inner.append(host.queue_vips(host.on_event(ev(C, "front", "web.2", "10.0.0.12", t2))))
        host._vip_sync = real
        return real(name, netns, backends)

    host._vip_sync = sync
    assert host.apply_queued() == 1
    assert inner == [True]  # the running apply took its plans: a new one must be queued
    assert host.apply_queued() == 1
    assert calls[-1] == ("a", "ns-a", {"10.0.0.2": ("10.0.0.11", "10.0.0.12")})


def test_a_stopped_containers_queued_plan_is_dropped():
    host, calls, _ = make()
    host.on_event(ev(C, "front", "a", "10.0.0.9"))
    assert host.queue_vips(["a", "b"])
    del host.containers["b"]  # stopped before the worker got there
    host.apply_queued()
    assert [c[0] for c in calls] == ["a"]
