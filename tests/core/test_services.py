"""Names and service records in the endpoint table, and the resolver over them."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tablenet import TableNet

from overlaysim.core.config import TableConfig
from overlaysim.core.endpoint import ENDPOINTS, Endpoint
from overlaysim.core.events import EntryEvent, EntryEventKind
from overlaysim.core.services import (
    ENDPOINTS_TABLE,
    AnswerKind,
    Directory,
    EndpointMode,
    NameRecord,
    TaskSpec,
    check_dns_name,
    name_fields,
    task_name,
)

C, D = EntryEventKind.CREATE, EntryEventKind.DELETE
FAST = TableConfig(
    gossip_interval=0.1,
    gossip_nodes=2,
    retransmit_mult=2,
    bulk_sync_interval=1.0,
    reap_interval=1000.0,
)


def ep(name: str, ip: str, *, aliases=(), task: TaskSpec | None = None, host="10.9.0.1"):
    """An endpoint value as an agent commits it, with the name fields merged in."""
    mac = "02:42:0a:00:00:%02x" % (int(ip.rsplit(".", 1)[1]) % 256)
    return {"name": name, "ip": ip, "mac": mac, "vtep": host, **name_fields(aliases, task)}


def ev(kind, network, key, value=None, owner="h1", table=ENDPOINTS_TABLE):
    return EntryEvent(kind, network, table, key, owner, value or {})


def web(slot: int, mode=EndpointMode.VIP, vip="10.0.0.2", gen=1) -> TaskSpec:
    return TaskSpec("web", slot, mode, vip if mode is EndpointMode.VIP else None, gen)


def directory(*events: EntryEvent) -> Directory:
    d = Directory()
    for e in events:
        d.apply(e)
    return d


def test_names_ride_in_the_endpoint_table_the_data_plane_reads():
    assert ENDPOINTS_TABLE == ENDPOINTS
    v = ep("web.1", "10.0.0.5", aliases=["api"], task=web(1))
    # The data plane's reading of the value is unchanged by the extra fields.
    assert Endpoint.from_value(v, vtep_ip=True).remote == (
        "10.0.0.5",
        "02:42:0a:00:00:05",
        "10.9.0.1",
    )
    rec = NameRecord.from_value("web.1", v)
    assert rec.aliases == ("api",) and rec.task == web(1)


def test_service_vip_tasks_and_container_names_resolve_on_shared_networks():
    d = directory(
        ev(C, "front", "client", ep("client", "10.0.0.9")),
        *(
            ev(C, "front", task_name("web", i), ep(f"web.{i}", f"10.0.0.{10 + i}", task=web(i)))
            for i in (1, 2, 3)
        ),
        ev(C, "front", "db", ep("db", "10.0.0.20", aliases=["database", "pg"])),
    )
    r = d.resolve("client", "web")
    assert (r.kind, r.ips, r.network) == (AnswerKind.ANSWER, ("10.0.0.2",), "front")
    assert d.resolve("client", "tasks.web").ips == ("10.0.0.11", "10.0.0.12", "10.0.0.13")
    assert d.resolve("client", "web.2").ips == ("10.0.0.12",)
    assert d.resolve("client", "PG.").ips == ("10.0.0.20",)  # case and trailing dot
    assert d.resolve("client", "tasks.db").kind is AnswerKind.NXDOMAIN
    assert d.resolve_ptr("client", "10.0.0.2").ips == ("web",)
    assert d.resolve_ptr("client", "10.0.0.20").ips == ("db",)
    assert d.resolve_ptr("client", "192.0.2.1").kind is AnswerKind.FORWARD
    assert d.vip_backends("client") == {"10.0.0.2": ("10.0.0.11", "10.0.0.12", "10.0.0.13")}


def test_dnsrr_returns_every_task_ip_shuffled_and_no_vip_rules():
    d = directory(
        ev(C, "n", "c", ep("c", "10.0.0.9")),
        *(
            ev(
                C,
                "n",
                f"rr.{i}",
                ep(f"rr.{i}", f"10.0.0.{i}", task=TaskSpec("rr", i, EndpointMode.DNSRR)),
            )
            for i in range(1, 6)
        ),
    )
    plain = d.resolve("c", "rr")
    assert plain.ips == tuple(f"10.0.0.{i}" for i in range(1, 6))
    rng = random.Random(3)
    orders = {d.resolve("c", "rr", rng).ips for _ in range(40)}
    assert len(orders) > 1 and all(sorted(o) == sorted(plain.ips) for o in orders)
    assert d.vip_backends("c") == {}


def test_names_on_networks_the_asker_is_not_on_are_nxdomain_others_forwarded():
    d = directory(
        ev(C, "front", "client", ep("client", "10.0.0.9")),
        ev(C, "back", "secret", ep("secret", "10.1.0.5", aliases=["vault"])),
        ev(C, "back", "api.1", ep("api.1", "10.1.0.6", task=TaskSpec("api", 1, vip="10.1.0.2"))),
    )
    for name in ("secret", "vault", "api", "tasks.api", "api.1"):
        assert d.resolve("client", name).kind is AnswerKind.NXDOMAIN, name
    assert d.resolve("secret", "vault").ips == ("10.1.0.5",)
    assert d.resolve("client", "nosuchname").kind is AnswerKind.NXDOMAIN  # single label
    assert d.resolve("client", "example.org").kind is AnswerKind.FORWARD
    assert d.resolve("client", "bad..name").kind is AnswerKind.NXDOMAIN
    assert d.vip_backends("client") == {}


def test_first_network_of_the_asker_answers_and_aliases_may_be_shared():
    d = directory(
        ev(C, "a", "c", ep("c", "10.0.0.9")),
        ev(C, "b", "c", ep("c", "10.1.0.9")),
        ev(C, "b", "x", ep("x", "10.1.0.1", aliases=["shared"])),
        ev(C, "b", "y", ep("y", "10.1.0.2", aliases=["shared"])),
        ev(C, "a", "x", ep("x", "10.0.0.1")),
    )
    assert d.networks_of("c") == ("a", "b")
    assert d.resolve("c", "x").ips == ("10.0.0.1",)  # network "a" sorts first
    assert d.resolve("c", "shared").ips == ("10.1.0.1", "10.1.0.2")


def test_delete_removes_a_task_and_last_task_removes_the_service():
    d = directory(
        ev(C, "n", "c", ep("c", "10.0.0.9")),
        ev(C, "n", "web.1", ep("web.1", "10.0.0.11", task=web(1))),
        ev(C, "n", "web.2", ep("web.2", "10.0.0.12", task=web(2))),
    )
    assert d.apply(ev(D, "n", "web.1", ep("web.1", "10.0.0.11", task=web(1))))
    assert d.resolve("c", "tasks.web").ips == ("10.0.0.12",)
    assert d.vip_backends("c") == {"10.0.0.2": ("10.0.0.12",)}
    assert d.apply(ev(EntryEventKind.TOMBSTONE, "n", "web.2"))
    assert d.resolve("c", "web").kind is AnswerKind.NXDOMAIN
    assert not d.apply(ev(D, "n", "web.2"))  # nothing left to remove


def test_mode_switch_highest_generation_wins_on_every_host():
    old = ev(C, "n", "web.1", ep("web.1", "10.0.0.11", task=web(1, gen=1)))
    new = ev(C, "n", "web.2", ep("web.2", "10.0.0.12", task=web(2, EndpointMode.DNSRR, gen=2)))
    c = ev(C, "n", "c", ep("c", "10.0.0.9"))
    for order in ([c, old, new], [new, c, old]):
        d = directory(*order)
        assert d.service("n", "web").mode is EndpointMode.DNSRR
        assert d.resolve("c", "web").ips == ("10.0.0.11", "10.0.0.12")
        assert d.vip_backends("c") == {}


def test_malformed_peer_values_are_dropped_counted_and_replace_the_old_record():
    d = directory(ev(C, "n", "c", ep("c", "10.0.0.9")), ev(C, "n", "x", ep("x", "10.0.0.1")))
    bad = [
        {"ip": "not-an-ip"},
        {"ip": "10.0.0.1", "aliases": "ok,-bad"},
        {"ip": "10.0.0.1", "service": "s", "slot": "zero", "mode": "vip", "vip": "10.0.0.2"},
        {"ip": "10.0.0.1", "service": "s", "slot": "1", "mode": "ipvs"},
        {"ip": "10.0.0.1", "service": "s", "slot": "1", "mode": "vip"},  # vip mode, no vip
        {"ip": "10.0.0.1", "service": "s", "slot": "1", "mode": "dnsrr", "vip": "10.0.0.2"},
        {"ip": "10.0.0.1", "service": "tasks.s", "slot": "1", "mode": "dnsrr"},
    ]
    for i, value in enumerate(bad, 1):
        d.apply(ev(EntryEventKind.UPDATE, "n", "x", value))
        assert d.dropped == i
        assert d.resolve("c", "x").kind is AnswerKind.NXDOMAIN
        d.apply(ev(C, "n", "x", ep("x", "10.0.0.1")))
    d.apply(ev(C, "n", "bad name!", {"ip": "10.0.0.3"}))
    assert d.dropped == len(bad) + 1
    assert not d.apply(ev(C, "n", "other", {"ip": "x"}, table="something-else"))


def test_local_misuse_is_one_clear_line():
    with pytest.raises(ValueError, match="slot 0: expected an integer >= 1"):
        TaskSpec("web", 0, vip="10.0.0.2")
    with pytest.raises(ValueError, match="vip None: expected an IPv4"):
        TaskSpec("web", 1)
    with pytest.raises(ValueError, match=r"alias 'a b'"):
        name_fields(["a b"])
    with pytest.raises(ValueError, match="service 'x_y-'"):
        task_name("x_y-", 1)
    assert check_dns_name("Web.1.") == "web.1"


def test_directory_follows_converging_tables_and_a_dead_hosts_tasks_leave():
    """Real tables on three hosts: names converge like endpoints; member_down removes."""
    net = TableNet(4)
    hosts = net.cluster(["h1", "h2", "h3"], FAST)
    for h in hosts:
        h.join_network("n", net.now)
    net.run(0.5)
    hosts[0].create_entry("n", ENDPOINTS, "client", ep("client", "10.0.0.9"), net.now)
    for i, h in enumerate(hosts, 1):
        h.create_entry(
            "n", ENDPOINTS, f"web.{i}", ep(f"web.{i}", f"10.0.0.1{i}", task=web(i)), net.now
        )
    net.run(3.0)
    dirs = {n: directory(*(e for _, e in net.events[n])) for n in net.nodes}
    for d in dirs.values():
        assert d.resolve("client", "tasks.web").ips == ("10.0.0.11", "10.0.0.12", "10.0.0.13")
    hosts[0].member_down("h3", net.now)  # h1 declares h3 dead
    net.run(0.1)
    d1 = directory(*(e for _, e in net.events["h1"]))
    assert d1.resolve("client", "tasks.web").ips == ("10.0.0.11", "10.0.0.12")
    assert d1.vip_backends("client") == {"10.0.0.2": ("10.0.0.11", "10.0.0.12")}


def test_dns_metrics_over_real_tables_scale_down():
    """Three hosts gossiping for real: a service of 3 tasks, then scaled to 1."""
    from overlaysim.metrics.dns import DnsTracker

    ips = {1: "10.0.0.11", 2: "10.0.0.12", 3: "10.0.0.13"}

    def value(slot):
        return ep(f"web.{slot}", ips[slot], task=web(slot))

    net = TableNet(7)
    hosts = net.cluster(["h1", "h2", "h3"], FAST)
    for h in hosts:
        h.join_network("n", net.now)
    net.run(0.5)
    tr = DnsTracker()
    fed = {n: 0 for n in net.nodes}

    def feed():
        batch = []
        for n, evs in net.events.items():
            batch += [(t, n, e) for t, e in evs[fed[n] :]]
            fed[n] = len(evs)
        for t, n, e in sorted(batch, key=lambda x: x[0]):
            tr.host_event(t, n, e)

    names = ["h1", "h2", "h3"]
    tr.change(net.now, "n", "web", ips.values(), names)
    for slot, h in zip((1, 2, 3), hosts, strict=True):
        h.create_entry("n", ENDPOINTS, f"web.{slot}", value(slot), net.now)
    feed()
    net.run(3.0)
    feed()
    tr.change(net.now, "n", "web", [ips[1]], names)
    hosts[1].delete_entry("n", ENDPOINTS, "web.2", net.now)
    hosts[2].delete_entry("n", ENDPOINTS, "web.3", net.now)
    feed()
    net.run(3.0)
    feed()
    rows = tr.finish()
    conv = [r for r in rows if r["metric"] == "dns_convergence_s"]
    stale = [r for r in rows if r["metric"] == "stale_dns_window_s"]
    assert [r["status"] for r in conv] == ["converged", "converged"]
    assert all(0 < r["value_s"] < 3.0 for r in conv)
    assert sorted(r["ip"] for r in stale) == [ips[2], ips[3]]
    assert all(r["status"] == "converged" and 0 < r["value_s"] < 3.0 for r in stale)


# -- property: the event stream and a snapshot agree ------------------------------------

_names = st.sampled_from(["a", "b", "c", "web.1", "web.2", "rr.1"])
_nets = st.sampled_from(["n1", "n2"])


@st.composite
def _value(draw, key):
    ip = f"10.0.{draw(st.integers(0, 1))}.{draw(st.integers(1, 6))}"
    aliases = draw(st.lists(st.sampled_from(["x", "y", "web"]), max_size=2))
    task = None
    if key.startswith(("web.", "rr.")):
        svc, slot = key.split(".")
        mode = EndpointMode.DNSRR if svc == "rr" else draw(st.sampled_from(list(EndpointMode)))
        vip = "10.0.0.250" if mode is EndpointMode.VIP else None
        task = TaskSpec(svc, int(slot), mode, vip, draw(st.integers(0, 3)))
    v = ep(key, ip, aliases=aliases, task=task)
    if draw(st.integers(0, 9)) == 0:
        v["ip"] = "junk"
    return v


@st.composite
def _ops(draw):
    out = []
    for _ in range(draw(st.integers(0, 30))):
        key, network = draw(_names), draw(_nets)
        if draw(st.booleans()):
            out.append((network, key, draw(_value(key))))
        else:
            out.append((network, key, None))
    return out


@settings(max_examples=150, deadline=None)
@given(_ops(), st.sampled_from(["a", "b", "c"]), _names.map(lambda n: n) | st.just("tasks.web"))
def test_events_and_snapshot_give_the_same_answers(ops, asker, qname):
    live: dict[str, dict[str, dict]] = {}
    fed = Directory()
    for network, key, value in ops:
        had = key in live.get(network, {})
        if value is None:
            live.get(network, {}).pop(key, None)
            fed.apply(ev(D if had else EntryEventKind.TOMBSTONE, network, key))
        else:
            live.setdefault(network, {})[key] = value
            fed.apply(ev(EntryEventKind.UPDATE if had else C, network, key, value))
    snap = Directory()
    for network, values in live.items():
        snap.load(network, values)
    assert fed.resolve(asker, qname) == snap.resolve(asker, qname)
    assert fed.vip_backends(asker) == snap.vip_backends(asker)
    ans = fed.resolve(asker, qname)
    # Every IP returned is live on a network the asker is on (or a VIP of one).
    if ans.kind is AnswerKind.ANSWER:
        assert ans.network in fed.networks_of(asker)
        values = live[ans.network].values()
        allowed = {v["ip"] for v in values} | {v.get("vip") for v in values}
        assert set(ans.ips) <= allowed
