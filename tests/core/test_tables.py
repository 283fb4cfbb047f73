"""Replicated tables: the state machine alone, then nodes wired through a fake link."""

from __future__ import annotations

import dataclasses
import random

import pytest
from tablenet import TableNet

from overlaysim.core.config import TableConfig, retransmit_limit
from overlaysim.core.events import EntryEventKind
from overlaysim.core.tables import (
    EntryExistsError,
    EntryTooLargeError,
    NoSuchEntryError,
    NotAttachedError,
    NotOwnerError,
    Tables,
    TablesError,
    entry_version,
)
from overlaysim.core.wire import (
    BulkSync,
    Entry,
    NetworkAttachment,
    NetworkGossip,
    Ping,
    TableGossip,
    encode,
)

FAST = TableConfig(
    gossip_interval=0.1,
    gossip_nodes=2,
    retransmit_mult=2,
    bulk_sync_interval=1.0,
    reap_interval=1000.0,
)
NO_BULK = dataclasses.replace(FAST, bulk_sync_interval=1000.0)
NET = "blue"
EP = "ep"


def make(names, config=FAST, seed=1, network=NET, **kw) -> TableNet:
    """A cluster of nodes, all alive and attached to ``network``, joins settled."""
    net = TableNet(seed, **kw)
    net.cluster(names, config)
    for n in names:
        net.nodes[n].join_network(network, net.now)
    net.run(0.5)
    return net


def solo(name="a", epoch=0, config=FAST) -> Tables:
    t = Tables(name=name, addr=f"addr-{name}", config=config, rng=random.Random(7), epoch=epoch)
    t.start(0.0)
    t.join_network(NET, 0.0)
    return t


def entry(owner, key, ltime, *, epoch=0, deleted=False, value=None, network=NET) -> Entry:
    return Entry(
        network=network,
        table=EP,
        key=key,
        owner=owner,
        owner_epoch=epoch,
        ltime=ltime,
        deleted=deleted,
        value={} if deleted else (value or {"ip": f"10.0.0.{ltime}"}),
    )


def gossip(*entries: Entry, src="z") -> TableGossip:
    return TableGossip(source=src, network=entries[0].network, entries=entries)


def kinds(t: Tables) -> list[tuple[str, str]]:
    return [(ev.kind.value, ev.key) for ev in t.take_events()]


# -- the state machine alone ---------------------------------------------------------


def test_version_order_is_epoch_then_ltime_then_owner():
    assert entry_version(entry("a", "k", 9)) < entry_version(entry("a", "k", 1, epoch=1))
    assert entry_version(entry("a", "k", 1)) < entry_version(entry("a", "k", 2))
    assert entry_version(entry("a", "k", 2)) < entry_version(entry("b", "k", 2))


def test_local_operations_emit_one_event_per_change():
    t = solo()
    t.create_entry(NET, EP, "k", {"ip": "10.0.0.2"}, 1.0)
    assert t.entry(NET, EP, "k") == t.entries(NET)[(EP, "k")]
    t.update_entry(NET, EP, "k", {"ip": "10.0.0.2"}, 1.1)  # same content: a refresh
    t.update_entry(NET, EP, "k", {"ip": "10.0.0.3"}, 1.2)
    t.delete_entry(NET, EP, "k", 1.3)
    evs = t.take_events()
    assert [e.kind for e in evs] == [
        EntryEventKind.CREATE,
        EntryEventKind.REFRESH,
        EntryEventKind.UPDATE,
        EntryEventKind.DELETE,
    ]
    assert evs[3].value == {"ip": "10.0.0.3"}  # the data plane removes what was live
    assert t.entry(NET, EP, "k") is None and t.entry("red", EP, "k") is None
    assert t.entries(NET) == {}
    (tomb,) = t.tombstones(NET).values()
    assert tomb.deleted and tomb.owner == "a" and tomb.ltime == 4


def test_a_key_deleted_by_a_later_boot_is_refused_with_where_and_when_it_frees():
    t = solo(epoch=3)
    t.receive("addr-b", gossip(entry("b", "k", 4, epoch=9, deleted=True)), 10.0)
    with pytest.raises(EntryExistsError) as refused:
        t.create_entry(NET, EP, "k", {"ip": "x"}, 110.0)
    assert str(refused.value) == (
        "blue/ep/k was deleted by b, which booted after this node (epoch 9 > 3); it can be "
        "created here once that delete is forgotten (in 900 s), or now on b or a node "
        "that booted later"
    )
    t.handle_timer(1011.0)  # reaped: the key is free here too
    t.create_entry(NET, EP, "k", {"ip": "x"}, 1011.0)
    assert t.entry(NET, EP, "k") is not None


def test_local_misuse_raises_value_errors():
    t = solo()
    with pytest.raises(NotAttachedError):
        t.create_entry("red", EP, "k", {}, 0.0)
    t.create_entry(NET, EP, "k", {"ip": "x"}, 0.0)
    with pytest.raises(EntryExistsError):
        t.create_entry(NET, EP, "k", {"ip": "y"}, 0.0)
    with pytest.raises(NoSuchEntryError):
        t.update_entry(NET, EP, "nope", {}, 0.0)
    t.receive("addr-b", gossip(entry("b", "kb", 5)), 0.0)
    with pytest.raises(NotOwnerError):
        t.delete_entry(NET, EP, "kb", 0.0)
    with pytest.raises(TablesError):
        t.create_entry(NET, EP, "k2", {"ip": 3}, 0.0)  # type: ignore[dict-item]
    with pytest.raises(EntryTooLargeError):
        t.create_entry(NET, EP, "big", {"blob": "x" * 2000}, 0.0)
    with pytest.raises(NotAttachedError):
        t.leave_network("red", 0.0)
    assert issubclass(TablesError, ValueError)
    assert set(t.entries(NET)) == {(EP, "k"), (EP, "kb")}


def test_tombstone_beats_late_add_in_either_order():
    t = solo("b")
    add, tomb = entry("a", "k", 3), entry("a", "k", 4, deleted=True)
    # Tombstone first: the late add is older and must not create anything.
    t.receive("addr-a", gossip(tomb), 1.0)
    t.receive("addr-a", gossip(add), 1.1)
    t.receive("addr-c", BulkSync(source="c", reply=True, networks=(NET,), entries=(add,)), 1.2)
    # Only the tombstone is reported (nothing to unprogram, but the delete is held).
    assert kinds(t) == [("tombstone", "k")]
    assert t.entries(NET) == {} and (EP, "k") in t.tombstones(NET)
    # Add, tombstone, then the add again (a duplicate from a slow peer).
    t.receive("addr-a", gossip(entry("a", "j", 3)), 2.0)
    t.receive("addr-a", gossip(entry("a", "j", 5, deleted=True)), 2.1)
    t.receive("addr-c", gossip(entry("a", "j", 3)), 2.2)
    assert kinds(t) == [("create", "j"), ("delete", "j")]
    assert t.entries(NET) == {}


def test_lamport_clock_orders_local_events_after_received_ones():
    t = solo("b")
    t.receive("addr-a", gossip(entry("a", "k", 100)), 0.0)
    t.create_entry(NET, EP, "mine", {"ip": "x"}, 0.1)
    assert t.entries(NET)[(EP, "mine")].ltime > 100


def test_newer_version_with_the_same_content_is_a_refresh():
    # A host that restarted while "a" was down took a's previous-boot entry in its first
    # sync; a's new boot then re-adds the same address before membership tells of it.
    b = solo("b")
    value = {"ip": "10.0.0.5", "mac": "02:42:0a:00:00:05", "vtep": "10.98.0.1"}
    b.receive("addr-z", gossip(entry("a", "c1", 7, value=value)), 1.0)
    new = entry("a", "c1", 1, epoch=1, value=dict(value))
    assert b.receive("addr-z", gossip(new), 2.0)
    evs = b.take_events()
    assert [(e.kind, e.owner, e.value) for e in evs] == [
        (EntryEventKind.CREATE, "a", value),
        (EntryEventKind.REFRESH, "a", value),
    ]
    assert b.entry(NET, EP, "c1") == new  # the newer version is the one held
    b.member_alive("a", "addr-a", 1, 2.1)  # the new boot voids only older entries
    assert b.take_events() == [] and b.entry(NET, EP, "c1") == new
    b.receive("addr-z", gossip(new), 2.2)  # the same version again: nothing
    assert b.take_events() == []


def test_newer_boot_replaces_older_entries_and_stale_copies_are_refused():
    t = solo("b")
    t.member_alive("c", "addr-c", 1, 0.0)
    t.receive("addr-c", gossip(entry("c", "k1", 3, epoch=1), entry("c", "k2", 4, epoch=1)), 0.0)
    kinds(t)
    t.member_alive("c", "addr-c", 2, 1.0)
    assert sorted(kinds(t)) == [("delete", "k1"), ("delete", "k2")]
    t.receive("addr-a", gossip(entry("c", "k2", 9, epoch=1)), 1.1)  # stale peer
    assert kinds(t) == [] and t.entries(NET) == {}
    t.receive("addr-c", gossip(entry("c", "k1", 1, epoch=2)), 1.2)  # the new boot
    assert kinds(t) == [("create", "k1")]
    assert t.entries(NET)[(EP, "k1")].owner_epoch == 2


def test_down_owner_entries_hidden_and_revived_when_it_returns():
    t = solo("b")
    t.member_alive("c", "addr-c", 0, 0.0)
    t.receive("addr-c", gossip(entry("c", "k", 3)), 0.0)
    kinds(t)
    t.member_down("c", 1.0)
    assert kinds(t) == [("delete", "k")]
    t.receive("addr-a", gossip(entry("c", "k", 3)), 1.1)  # a peer not yet aware
    assert kinds(t) == []
    # Hidden records are our conclusion: never offered to peers as tombstones.
    t.receive("addr-a", BulkSync(source="a", reply=False, networks=(NET,)), 1.2)
    (reply,) = [s.msg for s in t.take_sends() if isinstance(s.msg, BulkSync) and s.msg.reply]
    assert all(e.owner != "c" for e in reply.entries)
    t.member_alive("c", "addr-c", 0, 2.0)  # false alarm: same boot is back
    t.receive("addr-c", gossip(entry("c", "k", 3)), 2.1)
    assert kinds(t) == [("create", "k")]


def test_own_stale_copy_is_answered_with_a_newer_tombstone():
    c = solo("c", epoch=2)
    c.member_alive("a", "addr-a", 0, 0.0)
    old = entry("c", "gone", 7, epoch=1)
    c.receive("addr-a", gossip(old), 0.1)
    assert c.entries(NET) == {} and kinds(c) == [("tombstone", "gone")]
    tomb = c.tombstones(NET)[(EP, "gone")]
    assert tomb.owner_epoch == 2 and entry_version(tomb) > entry_version(old)
    # A peer that applies it loses the stale copy.
    a = solo("a")
    a.member_alive("c", "addr-c", 1, 0.0)
    a.receive("addr-c", gossip(old), 0.0)
    a.member_alive("c", "addr-c", 2, 0.0)
    a.receive("addr-c", gossip(tomb), 0.2)
    assert a.entries(NET) == {}


def test_timers_idle_until_there_is_work_and_reap_forgets_tombstones():
    cfg = dataclasses.replace(FAST, reap_interval=5.0)
    t = Tables(name="a", addr="addr-a", config=cfg, rng=random.Random(1))
    assert t.next_timer() is None
    t.start(0.0)
    assert t.next_timer() is None  # nothing attached, nothing queued
    t.join_network(NET, 0.0)
    t.create_entry(NET, EP, "k", {"ip": "x"}, 0.0)
    t.delete_entry(NET, EP, "k", 0.5)
    deadline = t.next_timer()
    assert deadline is not None and 0.5 <= deadline <= 0.5 + cfg.gossip_interval
    now = 0.0
    while now < 5.4:
        now = t.next_timer()
        t.handle_timer(now)
    assert (EP, "k") in t.tombstones(NET)
    while now < 5.6:
        now = t.next_timer()
        t.handle_timer(now)
    assert t.tombstones(NET) == {}


def test_peer_garbage_is_ignored_and_counted():
    t = solo("b")
    t.member_alive("a", "addr-a", 0, 0.0)
    t.create_entry(NET, EP, "mine", {"ip": "x"}, 0.0)
    before = (t.entries(NET), t.tombstones(NET), t.peers(NET))
    bad_entries = (
        dataclasses.replace(entry("a", "k", 1), ltime=-1),
        dataclasses.replace(entry("a", "k", 1), ltime=2**70),
        dataclasses.replace(entry("a", "k", 1), value={"x": 1}),
        dataclasses.replace(entry("a", "k", 1), owner=None),
        dataclasses.replace(entry("a", "k", 1), deleted="yes"),
        entry("a", "k", 1, network="red"),  # not the network the message is about
        "junk",
        None,
    )
    for msg in (
        None,
        b"\x00",
        Ping(seq=1, target="b", source="a", source_addr="addr-a"),
        TableGossip(source="a", network=NET, entries=bad_entries),
        TableGossip(source="a", network="red", entries=(entry("a", "k", 1, network="red"),)),
        TableGossip(source="a", network=None, entries=None),
        NetworkGossip(source="a", attachments=("x", None)),
        NetworkGossip(source="a", attachments=(dataclasses.replace(_att("a"), entry_clock=-1),)),
        NetworkGossip(source="a", attachments=(dataclasses.replace(_att("a"), entry_clock="9"),)),
        BulkSync(source=None, reply=True, networks="blue", attachments=(1,), entries=(2,)),
    ):
        t.receive("addr-a", msg, 1.0)  # type: ignore[arg-type]
    assert (t.entries(NET), t.tombstones(NET), t.peers(NET)) == before
    assert t.dropped >= len(bad_entries) - 1 + 2  # and the two bad entry clocks
    assert kinds(t) == [("create", "mine")]
    assert t.attachments(NET).keys() == {"b"}  # neither bad attachment was taken


# -- nodes over the fake link --------------------------------------------------------


def test_gossip_spreads_within_datagram_budget():
    cfg = dataclasses.replace(NO_BULK, udp_buffer_size=600)
    net = make("abc", cfg)
    for i in range(60):
        net.nodes["a"].create_entry(
            NET, EP, f"k{i}", {"ip": f"10.0.{i}.1", "pad": "p" * 30}, net.now
        )
    net.run(5.0)
    sizes = [len(encode(d.msg)) for d in net.delivered if isinstance(d.msg, TableGossip)]
    assert sizes and max(sizes) <= 600
    for n in "bc":
        assert net.view(n, NET) == net.view("a", NET) and len(net.view(n, NET)) == 60


def test_late_add_reordered_after_tombstone_never_resurrects():
    net = make("abcd", NO_BULK, delay=(0.005, 0.01))
    live_first = lambda s, d, m: (  # noqa: E731
        1.0 if isinstance(m, TableGossip) and any(not e.deleted for e in m.entries) else None
    )
    net.delay_fn = live_first
    a = net.nodes["a"]
    a.create_entry(NET, EP, "k", {"ip": "10.0.0.9"}, net.now)
    net.run(0.25)  # the add has left a, still in flight everywhere
    a.delete_entry(NET, EP, "k", net.now)
    net.run(3.0)
    order = {n: [] for n in "bcd"}
    for d in net.delivered:
        if isinstance(d.msg, TableGossip) and d.dst in order:
            order[d.dst] += ["tomb" if e.deleted else "add" for e in d.msg.entries]
    assert any("add" in order[n] for n in "bcd")  # the reorder did happen
    for n in "bcd":
        assert order[n][0] == "tomb"
        assert net.kinds(n, "k") == ["tombstone"]
        assert net.view(n, NET) == {}


@pytest.mark.parametrize("membership_notices", [True, False])
def test_partition_halves_converge_then_heal_without_loss_or_resurrection(membership_notices):
    names = "abcdef"
    left, right = set("abc"), set("def")
    net = make(names, seed=3, loss=0.1)
    truth = {}
    for n in names:
        for i in range(2):
            net.nodes[n].create_entry(NET, EP, f"{n}{i}", {"v": "0"}, net.now)
            truth[f"{n}{i}"] = (n, {"v": "0"})
    net.run(3.0)
    assert all(_keyed(net.view(n, NET)) == truth for n in names)

    net.partition(left, right)
    if membership_notices:
        for x in left:
            for y in right:
                net.nodes[x].member_down(y, net.now)
                net.nodes[y].member_down(x, net.now)
    ops = [("a", "delete", "a0"), ("a", "update", "a1"), ("b", "create", "b2")]
    ops += [("d", "delete", "d0"), ("d", "create", "d2"), ("e", "update", "e0")]
    for owner, op, key in ops:
        node = net.nodes[owner]
        if op == "delete":
            node.delete_entry(NET, EP, key, net.now)
            truth.pop(key)
        else:
            getattr(node, f"{op}_entry")(NET, EP, key, {"v": "1"}, net.now)
            truth[key] = (owner, {"v": "1"})

    def half_view(n, half):
        return {k: v for k, v in _keyed(net.view(n, NET)).items() if v[0] in half}

    halves = [(half, {k: v for k, v in truth.items() if v[0] in half}) for half in (left, right)]
    for _ in range(20):  # without membership, half the gossip and syncs go nowhere
        net.run(1.0)
        if all(half_view(n, half) == mine for half, mine in halves for n in half):
            break
    for half, mine in halves:
        for n in half:
            assert half_view(n, half) == mine
            if membership_notices:  # the other half is down: its entries are hidden
                assert set(net.view(n, NET)) == {(EP, k) for k in mine}

    heal_at = net.now
    net.heal()
    if membership_notices:
        net.introduce()
    net.run(12.0)
    for n in names:
        assert _keyed(net.view(n, NET)) == truth, n
        for t, ev in net.events[n]:
            if t >= heal_at and ev.key in ("a0", "d0"):
                assert ev.kind is not EntryEventKind.CREATE  # never resurrected


def _keyed(view):
    return {k[1]: v for k, v in view.items()}


def test_bulk_sync_repairs_node_that_missed_every_gossip():
    net = make("abc", seed=5)
    net.drop = lambda s, d, m: d == "c" and isinstance(m, TableGossip)
    counts: list[tuple[str, int]] = []
    net.observer = lambda d: (
        counts.append((type(d.msg).__name__, len(net.nodes["c"].entries(NET))))
        if d.dst == "c"
        else None
    )
    a = net.nodes["a"]
    for i in range(5):
        a.create_entry(NET, EP, f"k{i}", {"ip": f"10.0.0.{i}"}, net.now)
    net.run(0.6)
    assert len(net.view("b", NET)) == 5  # gossip works elsewhere...
    net.run(4.0)
    assert not any(d.dst == "c" and isinstance(d.msg, TableGossip) for d in net.delivered)
    assert net.view("c", NET) == net.view("a", NET)
    first = next(i for i, (_, n) in enumerate(counts) if n)
    assert counts[first] == ("BulkSync", 5)  # ...and bulk sync alone repaired c
    assert all(n == 0 for _, n in counts[:first])


def test_dead_node_cleanup_everywhere_and_recovery_of_false_alarm():
    net = make("abc", NO_BULK, seed=2)  # recovery must not wait for a periodic sync
    for i in range(3):
        net.nodes["c"].create_entry(NET, EP, f"c{i}", {"ip": f"10.0.0.{i}"}, net.now)
    net.run(1.0)
    assert all(len(net.view(n, NET)) == 3 for n in "ab")
    mark = {n: len(net.events[n]) for n in "ab"}
    for n in "ab":
        net.nodes[n].member_down("c", net.now)
    net.run(3.0)  # c still talks (it does not know it was declared dead)
    for n in "ab":
        assert net.view(n, NET) == {}
        assert "c" not in net.nodes[n].peers(NET)
        later = [ev.kind for _, ev in net.events[n][mark[n] :]]
        assert later == [EntryEventKind.DELETE] * 3  # each one exactly once
    for n in "ab":  # false alarm: c is alive again with the same boot
        net.nodes[n].member_alive("c", net.addr_of("c"), 0, net.now)
    net.run(0.5)
    assert all(net.view(n, NET) == net.view("c", NET) for n in "ab")
    assert all(net.kinds(n, "c0") == ["create", "delete", "create"] for n in "ab")


def test_restart_with_higher_epoch_replaces_stale_entries():
    net = make("abc", seed=4)
    c = net.nodes["c"]
    c.create_entry(NET, EP, "k1", {"ip": "old"}, net.now)
    c.create_entry(NET, EP, "k2", {"ip": "old"}, net.now)
    net.nodes["a"].create_entry(NET, EP, "a1", {"ip": "a"}, net.now)
    net.run(2.0)
    stale = net.nodes["a"].entries(NET)[(EP, "k2")]

    c = net.add("c", FAST, epoch=1)  # reboot: empty state, same name and address
    for n in "ab":
        c.member_alive(n, net.addr_of(n), 0, net.now)
    c.join_network(NET, net.now)
    c.create_entry(NET, EP, "k1", {"ip": "new"}, net.now)
    net.run(0.5)  # peers may hear from the new boot before membership tells them
    restart_at = net.now
    for n in "ab":
        net.nodes[n].member_alive("c", net.addr_of("c"), 1, net.now)
    net.nodes["a"].receive("addr-b", gossip(stale), net.now)  # a stale copy in flight
    net.run(5.0)
    want = {"k1": ("c", {"ip": "new"}), "a1": ("a", {"ip": "a"})}
    for n in "abc":
        assert _keyed(net.view(n, NET)) == want
        assert all(
            not (ev.key == "k2" and ev.kind is EntryEventKind.CREATE)
            for t, ev in net.events[n]
            if t >= restart_at
        )


def test_scoping_node_off_network_never_holds_its_entries():
    net = TableNet(6)
    net.cluster("abc", FAST)
    for n in "ab":
        net.nodes[n].join_network("red", net.now)
    net.nodes["c"].join_network("blue", net.now)
    net.run(0.5)
    net.nodes["a"].create_entry("red", EP, "k", {"ip": "x"}, net.now)
    net.run(3.0)
    c = net.nodes["c"]
    assert net.view("b", "red") == net.view("a", "red") != {}
    assert not any(
        d.dst == "c" and isinstance(d.msg, TableGossip) and d.msg.network == "red"
        for d in net.delivered
    )
    assert net.nodes["a"].peers("red") == {"b"} and c.peers("red") == {"a", "b"}
    red = net.nodes["a"].entries("red")[(EP, "k")]
    c.receive("addr-a", TableGossip(source="a", network="red", entries=(red,)), net.now)
    c.receive(
        "addr-a", BulkSync(source="a", reply=True, networks=("red",), entries=(red,)), net.now
    )
    assert c.entries("red") == {} and c.tombstones("red") == {}
    assert net.events["c"] == [] and c.take_events() == []


def test_leave_then_rejoin_network():
    net = make("abc", seed=8)
    for n in "abc":
        net.nodes[n].create_entry(NET, EP, n, {"ip": n}, net.now)
    net.run(2.0)
    b = net.nodes["b"]
    mark = len(net.events["b"])
    b.leave_network(NET, net.now)
    net.run(2.0)
    assert sorted(ev.key for _, ev in net.events["b"][mark:]) == ["a", "b", "c"]
    assert b.networks() == set() and b.entries(NET) == {}
    for n in "ac":
        assert set(_keyed(net.view(n, NET))) == {"a", "c"}
        assert "b" not in net.nodes[n].peers(NET)
    net.nodes["a"].create_entry(NET, EP, "a2", {"ip": "a2"}, net.now)
    net.run(2.0)
    assert b.entries(NET) == {}  # not attached: takes no part
    b.join_network(NET, net.now)
    b.create_entry(NET, EP, "b2", {"ip": "b2"}, net.now)
    net.run(3.0)
    for n in "abc":
        assert set(_keyed(net.view(n, NET))) == {"a", "c", "a2", "b2"}


def test_join_finds_peers_through_any_member_without_waiting_for_bulk_sync():
    net = make("abc", NO_BULK, seed=9)
    for n in "abc":
        net.nodes[n].create_entry(NET, EP, n, {"ip": n}, net.now)
    net.run(1.0)
    d = net.add("d", NO_BULK)
    net.introduce()
    d.join_network(NET, net.now)  # d knows nobody's attachments yet
    net.run(0.5)
    assert set(_keyed(net.view("d", NET))) == {"a", "b", "c"}
    assert d.peers(NET) == {"a", "b", "c"}


def test_same_seed_same_run():
    def run(seed):
        net = make("abcd", seed=seed, loss=0.2)
        for i, n in enumerate("abcd"):
            net.nodes[n].create_entry(NET, EP, f"k{i}", {"i": str(i)}, net.now)
        net.run(3.0)
        return [(d.t, d.src, d.dst, encode(d.msg)) for d in net.delivered]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_attachment_for_unknown_network_is_kept_but_not_joined():
    t = solo("b")
    t.member_alive("a", "addr-a", 0, 0.0)
    att = NetworkAttachment(node="a", network="green", ltime=3, leaving=False)
    t.receive("addr-a", NetworkGossip(source="a", attachments=(att,)), 0.0)
    assert t.peers("green") == {"a"} and t.networks() == {NET}
    old = dataclasses.replace(att, ltime=2, leaving=True)
    t.receive("addr-a", NetworkGossip(source="a", attachments=(old,)), 0.1)
    assert t.peers("green") == {"a"}  # an older attachment event changes nothing


def test_duplicates_are_not_rebroadcast_and_gossip_goes_quiet():
    t = solo("b")
    t.member_alive("a", "addr-a", 0, 0.0)
    t.member_alive("c", "addr-c", 0, 0.0)
    t.receive("addr-a", NetworkGossip(source="a", attachments=(_att("a"), _att("c"))), 0.0)
    t.receive("addr-a", gossip(entry("a", "k", 3)), 0.0)
    t.handle_timer(1.0)
    first = [s.msg for s in t.take_sends() if isinstance(s.msg, TableGossip)]
    assert first  # news is spread onwards...
    for _ in range(5):
        t.handle_timer(t.next_timer() or 99.0)
    t.take_sends()
    t.receive("addr-c", gossip(entry("a", "k", 3)), 2.0)  # ...a duplicate is not
    t.handle_timer(2.5)
    assert [s for s in t.take_sends() if isinstance(s.msg, TableGossip)] == []
    # Over the fake link: once everyone has everything, table gossip stops.
    net = make("abcd", FAST, seed=12)  # bulk sync runs too: it must not re-gossip
    for n in "abcd":
        net.nodes[n].create_entry(NET, EP, n, {"ip": n}, net.now)
    net.run(3.0)
    quiet_from = net.now
    net.run(3.0)
    assert not [d for d in net.delivered if d.t > quiet_from and isinstance(d.msg, TableGossip)]
    assert all(len(net.view(n, NET)) == 4 for n in "abcd")


def _att(node, network=NET, ltime=1, leaving=False):
    return NetworkAttachment(node=node, network=network, ltime=ltime, leaving=leaving)


def test_an_attachment_copy_is_one_transmission_a_table_take_serves_every_target():
    """NetworkDB: table gossip takes from a network's queue once and sends that to every
    target; attachments ride memberlist's gossip, which fills each target's datagram from
    the queue on its own. So an attachment goes out retransmit-limit times in all, an
    entry retransmit-limit times to each of ``gossip_nodes`` targets."""
    cfg = dataclasses.replace(NO_BULK, gossip_nodes=3)
    t = solo("b", config=cfg)
    others = [f"n{i}" for i in range(20)]
    for n in others:
        t.member_alive(n, f"addr-{n}", 0, 0.0)
    t.receive(
        "addr-n0", NetworkGossip(source="n0", attachments=tuple(_att(n) for n in others)), 0.0
    )
    t.take_sends()
    t.receive("addr-n0", gossip(entry("n0", "k", 3)), 0.0)
    new = _att("n0", network="red")  # news from n0 about another network
    t.receive("addr-n0", NetworkGossip(source="n0", attachments=(new,)), 0.0)
    att_copies, entry_copies, targets = 0, 0, set()
    now = 0.0
    for _ in range(40):
        now = t.next_timer() or now + 0.1
        t.handle_timer(now)
        for s in t.take_sends():
            if isinstance(s.msg, NetworkGossip) and new in s.msg.attachments:
                att_copies += 1
                targets.add(s.dst)
            elif isinstance(s.msg, TableGossip):
                entry_copies += len(s.msg.entries)
    limit = retransmit_limit(cfg.retransmit_mult, 21)  # b and 20 others, on the network too
    assert att_copies == limit and len(targets) > 1
    assert entry_copies == limit * cfg.gossip_nodes


def test_leave_announcement_alone_clears_a_nodes_entries():
    net = make("abc", seed=13)
    net.nodes["b"].create_entry(NET, EP, "b1", {"ip": "b"}, net.now)
    net.run(1.0)
    stale = net.nodes["a"].entries(NET)[(EP, "b1")]
    net.drop = lambda s, d, m: s == "b" and isinstance(m, TableGossip)  # tombstones lost
    net.nodes["b"].leave_network(NET, net.now)
    net.run(3.0)
    for n in "ac":
        assert net.view(n, NET) == {} and net.kinds(n, "b1") == ["create", "delete"]
    a = net.nodes["a"]
    a.receive("addr-c", gossip(stale), net.now)  # a slow peer's copy
    assert a.entries(NET) == {}
    b = net.nodes["b"]
    b.receive("addr-a", gossip(entry("a", "x", 50)), net.now)  # b is off the network
    assert b.entries(NET) == {} and (EP, "x") not in b.tombstones(NET)


def test_join_syncs_at_once_with_a_known_peer():
    for seed in range(3):
        net = TableNet(seed)
        net.cluster("abcdefg", NO_BULK)  # only a and b will be on the network
        for n in "ab":
            net.nodes[n].join_network(NET, net.now)
        net.run(0.5)
        net.nodes["a"].create_entry(NET, EP, "a1", {"ip": "a"}, net.now)
        net.run(3.0)
        c = net.nodes["c"]
        atts = tuple(net.nodes["a"].attachments(NET).values())
        c.receive("addr-a", NetworkGossip(source="a", attachments=atts), net.now)
        assert c.peers(NET) == {"a", "b"} and c.entries(NET) == {}
        c.join_network(NET, net.now)
        net.run(0.3)
        assert set(_keyed(net.view("c", NET))) == {"a1"}


def _c_about_to_join(seed, config) -> tuple[TableNet, Tables]:
    """a and b on the network, joins settled; c knows it (a's attachments), not on it."""
    net = TableNet(seed)
    net.cluster("abc", config)
    for n in "ab":
        net.nodes[n].join_network(NET, net.now)
    net.run(0.5)
    c = net.nodes["c"]
    atts = tuple(net.nodes["a"].attachments(NET).values())
    c.receive("addr-a", NetworkGossip(source="a", attachments=atts), net.now)
    return net, c


def test_join_syncs_with_every_known_peer_so_an_owner_hands_over_its_new_entry():
    """a commits just before c joins and none of its gossip gets through, so only a
    holds the entry. With ``join_sync_peers=0`` (NetworkDB, the ``docker`` variant: every
    known peer) c's join syncs include a, whatever the seed; with one random peer (ours)
    c misses the entry whenever it picks b, until a periodic bulk sync (none within
    1000 s here)."""
    held = {}
    for k in (0, 1):
        for seed in range(6):
            net, c = _c_about_to_join(seed, dataclasses.replace(NO_BULK, join_sync_peers=k))
            net.drop = lambda s, d, m: isinstance(m, TableGossip)
            net.nodes["a"].create_entry(NET, EP, "a1", {"ip": "a"}, net.now)
            joined = net.now
            c.join_network(NET, joined)
            net.run(1.0)
            assert net.view("b", NET) == {}  # only a holds it: c's syncs decide
            syncs = [
                d.dst
                for d in net.delivered
                if d.t >= joined and d.src == "c" and isinstance(d.msg, BulkSync)
            ]
            assert sorted(syncs) == ["a", "b"] if k == 0 else len(syncs) == 1
            held.setdefault(k, []).append(set(_keyed(net.view("c", NET))) == {"a1"})
    assert all(held[0]) and not all(held[1]) and any(held[1])


def _gossiped_keys(t: Tables, until: float) -> set[str]:
    """Keys ``t`` puts in table gossip from now until ``until``."""
    keys: set[str] = set()
    while (nxt := t.next_timer()) is not None and nxt <= until:
        t.handle_timer(nxt)
        for s in t.take_sends():
            if isinstance(s.msg, TableGossip):
                keys.update(e.key for e in s.msg.entries)
    return keys


@pytest.mark.parametrize("limit", [0, 500])
def test_a_version_first_learned_from_a_bulk_sync_is_gossiped_on(limit):
    """NetworkDB rebroadcasts what a bulk sync taught it (once its own join sync is
    done, while its queue is short); 0 turns that off. Never a delete of an entry it
    never held, and never what the answer to its own join sync brings."""
    cfg = dataclasses.replace(NO_BULK, bulk_rebroadcast_limit=limit, join_resync_delay=0)
    net = make("abcd", cfg, seed=21)
    a = net.nodes["a"]
    news = (entry("d", "new", 5), entry("d", "gone", 6, deleted=True))
    a.receive("addr-b", BulkSync(source="b", reply=True, networks=(NET,), entries=news), net.now)
    assert set(_keyed(a.entries(NET))) == {"new"}
    assert _gossiped_keys(a, net.now + 1.0) == ({"new"} if limit else set())
    # A node whose own join sync is not answered yet: what arrives is not news to others.
    e = net.nodes["e"] = Tables(name="e", addr="addr-e", config=cfg, rng=random.Random(3), epoch=0)
    e.start(net.now)
    e.bootstrap([(n, f"addr-{n}", 0) for n in "abcd"], net.now)
    e.receive(
        "addr-a", NetworkGossip(source="a", attachments=tuple(a.attachments(NET).values())), net.now
    )
    e.join_network(NET, net.now)
    e.take_sends()
    sync = BulkSync(source="b", reply=True, networks=(NET,), entries=(entry("d", "x", 7),))
    e.receive("addr-b", sync, net.now)
    assert "x" in _keyed(e.entries(NET)) and "x" not in _gossiped_keys(e, net.now + 1.0)


def test_join_resync_is_one_more_round_and_leaves_the_periodic_phase_alone():
    """The resync is an extra bulk round ``join_resync_delay`` after a join that found
    peers; the periodic rounds keep their own (random) phase, so a cluster that boots
    together does not sync in lockstep ever after."""
    base = dataclasses.replace(FAST, bulk_sync_interval=30.0, join_resync_delay=0)
    rounds = {}
    for resync in (0.0, 2.0):
        net = TableNet(4)
        net.cluster("abc", dataclasses.replace(base, join_resync_delay=resync))
        for n in "ab":
            net.nodes[n].join_network(NET, net.now)
        net.run(0.5)
        joined = net.now
        net.nodes["c"].join_network(NET, joined)
        net.run(70.0)
        rounds[resync] = [
            round(d.t - joined, 1)
            for d in net.delivered
            if d.src == "c" and isinstance(d.msg, BulkSync) and not d.msg.reply
        ]
    extra = sorted(set(rounds[2.0]) - set(rounds[0.0]))
    assert len(rounds[2.0]) == len(rounds[0.0]) + 1 and len(extra) == 1
    assert 2.0 <= extra[0] <= 2.1
    # A join that finds no peer on the network (it is forming, as at a simulated boot)
    # has nothing to catch up on: no resync.
    net = TableNet(4)
    net.cluster("ab", dataclasses.replace(base, join_resync_delay=2.0))
    net.nodes["a"].join_network(NET, net.now)
    net.run(5.0)
    syncs = [d.t for d in net.delivered if d.src == "a" and isinstance(d.msg, BulkSync)]
    assert syncs and all(t < 0.1 for t in syncs)  # the discovery sync only


@pytest.mark.parametrize("resync", [0.0, 1.0])
def test_join_resync_repairs_an_entry_committed_just_after_the_join_sync(resync):
    """c joins, its join sync is answered, then a commits; a's gossip never reaches c (a
    spent it before learning of the join). Off: c waits for a periodic bulk sync (none
    within 1000 s here). On: a bulk round ``join_resync_delay`` after the join."""
    net, c = _c_about_to_join(3, dataclasses.replace(NO_BULK, join_resync_delay=resync))
    net.drop = lambda s, d, m: d == "c" and isinstance(m, TableGossip)
    joined = net.now
    c.join_network(NET, joined)
    net.run(0.05)  # the join sync and its reply have crossed
    net.nodes["a"].create_entry(NET, EP, "a1", {"ip": "a"}, net.now)
    net.run(0.9)
    assert c.entries(NET) == {} and set(_keyed(net.view("b", NET))) == {"a1"}
    net.run(0.6)  # to 1.55 s after the join
    assert set(_keyed(net.view("c", NET))) == ({"a1"} if resync else set())
    if resync:
        syncs = [d for d in net.delivered if d.src == "c" and isinstance(d.msg, BulkSync)]
        first, second = (d.t - joined for d in syncs if not d.msg.reply)  # delivered at
        assert first < 0.1 and 1.0 <= second < 1.1  # the join's, then the resync's


def test_recovery_after_false_alarm_syncs_each_node_once_one_per_round():
    net = make("abcd", NO_BULK, seed=15)
    for n in "cd":
        net.nodes[n].create_entry(NET, EP, n, {"ip": n}, net.now)
    net.run(2.0)
    a = net.nodes["a"]
    for n in "cd":
        a.member_down(n, net.now)
    net.run(1.0)
    assert a.entries(NET) == {}
    since = net.now
    for n in "cd":  # both come back together; either one holds the other's entries
        a.member_alive(n, net.addr_of(n), 0, net.now)
    net.run(1.0)
    assert set(_keyed(net.view("a", NET))) == {"c", "d"}
    syncs = [
        d
        for d in net.delivered
        if d.t > since and d.src == "a" and isinstance(d.msg, BulkSync) and not d.msg.reply
    ]
    # Each recovered node gets one sync (what changed on either side while they were
    # cut off must cross), never two in the same gossip round.
    assert sorted(d.dst for d in syncs) == ["c", "d"]
    # Delivery times: one gossip round apart, less the spread of the random link delay.
    spread = net.delay[1] - net.delay[0]
    assert abs(syncs[1].t - syncs[0].t) >= NO_BULK.gossip_interval - spread


def test_gossip_states_its_real_encoded_length_for_any_record_count() -> None:
    """Gossip messages carry their length (the simulator sizes them by it, without
    encoding): it must equal the encoding's, from one record to many (the records
    array's header grows past 15 items), for entries and for attachments."""
    names = [f"n{i}" for i in range(20)]
    net = make(names, config=NO_BULK)
    a = net.nodes["n0"]
    rng = random.Random(3)
    sized: list[tuple[str, int, bool]] = []  # (kind, records, stated size is the length)

    def rounds(k: int) -> None:
        for _ in range(k):
            net.now += 0.1
            for node in net.nodes.values():
                node.handle_timer(net.now)
                for s in node.take_sends():
                    m = s.msg
                    if isinstance(m, TableGossip | NetworkGossip):
                        recs = m.entries if isinstance(m, TableGossip) else m.attachments
                        sized.append((type(m).__name__, len(recs), s.size == len(encode(m))))

    for burst in (1, 2, 40, 7):  # value lengths vary, so packets hold different counts
        for i in range(burst):
            value = {"ip": f"10.1.{i}.1", "pad": "x" * rng.randrange(0, 40)}
            a.create_entry(NET, EP, f"k{burst}-{i}", value, net.now)
        rounds(3)
    net.nodes["n5"].join_network("green", net.now)
    rounds(3)
    assert sized and all(ok for _, _, ok in sized)
    counts = {n for kind, n, _ in sized if kind == "TableGossip"}
    assert 1 in counts and max(counts) > 15, counts
    assert any(kind == "NetworkGossip" for kind, _, _ in sized)


def test_bulk_sync_states_its_length_again_after_every_change_it_carries() -> None:
    """A bulk sync states its length too, from sums the node keeps as records come and
    go: after any change (an entry stored, replaced or forgotten, an attachment learnt
    or dropped) it must be the new real length."""
    net = make("abcd", config=FAST, seed=4)
    a, b = net.nodes["a"], net.nodes["b"]
    bulks: list[tuple[str, int | None, int]] = []  # (sender, stated size, real length)
    for name, node in net.nodes.items():
        take = node.take_sends

        def recording(take=take, name=name):  # type: ignore[no-untyped-def]
            sends = take()
            for s in sends:
                if isinstance(s.msg, BulkSync):
                    bulks.append((name, s.size, len(encode(s.msg))))
            return sends

        node.take_sends = recording  # type: ignore[method-assign]
    net.run(2.5)  # settled: the same content, bulk after bulk
    a.create_entry(NET, EP, "k1", {"ip": "10.0.0.1"}, net.now)
    net.run(1.5)
    a.update_entry(NET, EP, "k1", {"ip": "10.0.0.1", "pad": "x" * 30}, net.now)
    net.run(1.5)
    b.join_network("green", net.now)  # an attachment everyone learns
    net.run(1.5)
    a.delete_entry(NET, EP, "k1", net.now)
    net.run(1.5)
    b.leave_network("green", net.now)
    net.run(2.0)
    assert len(bulks) > 20
    assert all(stated == real for _, stated, real in bulks), bulks
    assert len({real for _, _, real in bulks}) >= 4  # the content really changed


def test_a_reused_bulk_sync_length_follows_each_kind_of_change() -> None:
    """Each kind of change a bulk sync carries, one at a time, between two bulk syncs
    with the same networks: the stated length (kept sums, not a re-count) is the new
    real one every time."""
    t = solo("a", config=dataclasses.replace(FAST, reap_interval=5.0))
    now = 0.0

    def check() -> int:
        s = t._bulk_send("addr-z", [NET], False)
        assert s.size == len(encode(s.msg))
        return s.size

    sizes = [check(), check()]  # nothing changed in between
    t.create_entry(NET, EP, "mine", {"ip": "10.0.0.9"}, now)  # a commit
    sizes.append(check())
    t.receive("addr-z", gossip(entry("z", "theirs", 1, value={"ip": "10.0.0.20"})), now)
    sizes.append(check())  # an entry stored
    t.receive("addr-z", gossip(entry("z", "theirs", 2, value={"ip": "10.0.0.200"})), now)
    sizes.append(check())  # an entry replaced
    att = NetworkAttachment(node="y", network=NET, ltime=1, leaving=False, epoch=0)
    t.receive("addr-y", NetworkGossip(source="y", attachments=(att,)), now)
    sizes.append(check())  # an attachment learnt
    t.member_alive("y", "addr-y", 1, now)  # y rebooted: its older attachment is void
    sizes.append(check())
    t.member_down("z", now)  # z's entry hidden: not ours to vouch for in a bulk sync
    sizes.append(check())
    t.join_network("green", now)  # our own attachment announced
    sizes.append(check())
    t.delete_entry(NET, EP, "mine", now)
    sizes.append(check())  # a tombstone
    t.handle_timer(now + 10.0)  # the tombstone reaped: forgotten
    sizes.append(check())
    # Every change changed the length, so a stale reuse would have been caught.
    assert all(x != y for x, y in zip(sizes[1:], sizes[2:], strict=False)), sizes
