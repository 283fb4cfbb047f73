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


def test_a_failed_sync_is_counted_not_raised():
    host, calls, fail = make()
    host.on_event(ev(C, "front", "a", "10.0.0.9"))
    fail["on"] = True
    assert host.sync_vips() == 0 and host.vip_errors == 2 and calls == []
    fail["on"] = False
    assert host.sync_vips(["a", "gone"]) == 1
