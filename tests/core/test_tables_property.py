"""Property tests: convergence under loss, reordering and partitions; peer garbage."""

from __future__ import annotations

import random

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tablenet import TableNet

from overlaysim.core.config import TableConfig
from overlaysim.core.events import EntryEventKind
from overlaysim.core.tables import Tables
from overlaysim.core.wire import (
    MAX_STREAM,
    VERSION,
    BulkSync,
    Entry,
    NetworkAttachment,
    NetworkGossip,
    TableGossip,
    WireError,
    decode,
    encode,
)

CFG = TableConfig(
    gossip_interval=0.1,
    gossip_nodes=2,
    retransmit_mult=2,
    bulk_sync_interval=1.0,
    reap_interval=1e6,
)
NET = "blue"
EP = "ep"
NAMES = "abcde"

op_strategy = st.tuples(
    st.integers(0, len(NAMES) - 1),  # owner
    st.integers(0, 3),  # key index (keys belong to their owner, like endpoints)
    st.sampled_from(["put", "put", "delete"]),
    st.floats(0.0, 0.4),  # virtual time before the op
)


def _check_events(name, events, history, final):
    """Replaying a node's events gives its final view; it never steps back in history."""
    replay: dict[str, dict[str, str]] = {}
    pos: dict[str, int] = {}
    for ev in events:
        k = ev.key
        states = history[k]
        if ev.kind is EntryEventKind.TOMBSTONE:
            assert k not in replay, f"{name}: TOMBSTONE of live {k}"
            continue
        if ev.kind is EntryEventKind.DELETE:
            assert k in replay, f"{name}: DELETE of absent {k}"
            del replay[k]
            nxt = [i for i, s in enumerate(states) if s[0] == "dead" and i > pos.get(k, 0)]
        else:
            assert (k in replay) == (ev.kind is EntryEventKind.UPDATE), f"{name}: {ev}"
            replay[k] = ev.value
            nxt = [i for i, s in enumerate(states) if s == ("live", ev.value["op"])]
            nxt = [i for i in nxt if i > pos.get(k, 0)]
        assert nxt, f"{name}: {ev.kind.value} of {k} steps back in its history"
        pos[k] = nxt[0]
    assert replay == final, f"{name}: events do not replay to the final view"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, len(NAMES)),
    loss=st.floats(0.0, 0.3),
    split=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(op_strategy, max_size=30),
)
def test_every_attached_node_converges_to_last_committed_op(n, loss, split, seed, ops):
    names = NAMES[:n]
    net = TableNet(seed, loss=loss, delay=(0.001, 0.3))
    net.cluster(names, CFG)
    for name in names:
        net.nodes[name].join_network(NET, net.now)
    net.run(0.5)
    rng = random.Random(seed)
    history: dict[str, list[tuple[str, str]]] = {}  # key -> states, index 0 = absent
    truth: dict[str, tuple[str, dict[str, str]]] = {}
    for i, (who, kidx, action, gap) in enumerate(ops):
        if split and i == len(ops) // 3 and n > 2:
            left = set(rng.sample(names, n // 2))
            net.partition(left, set(names) - left)
        if split and i == 2 * len(ops) // 3:
            net.heal()
        net.run(gap)
        owner = names[who % n]
        node = net.nodes[owner]
        key = f"{owner}{kidx}"
        states = history.setdefault(key, [("dead", "")])
        live = (EP, key) in node.entries(NET)
        if action == "put":
            value = {"op": str(i)}
            if live:
                node.update_entry(NET, EP, key, value, net.now)
            else:
                node.create_entry(NET, EP, key, value, net.now)
            states.append(("live", str(i)))
            truth[key] = (owner, value)
        elif live:
            node.delete_entry(NET, EP, key, net.now)
            states.append(("dead", str(i)))
            truth.pop(key)
    net.heal()

    def views():
        return {m: {k[1]: v for k, v in net.view(m, NET).items()} for m in names}

    for _ in range(40):
        net.run(1.0)
        if all(v == truth for v in views().values()):
            break
    assert all(v == truth for v in views().values()), (views(), truth)
    net.run(3.0)  # and it stays there
    assert all(v == truth for v in views().values())
    for m in names:
        evs = [ev for _, ev in net.events[m]]
        _check_events(m, evs, history, {k: v[1] for k, v in truth.items()})


# -- peer garbage ----------------------------------------------------------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.just(NET),
    st.just("b"),
)
names_or_junk = st.one_of(st.sampled_from([NET, EP, "a", "c", "k"]), junk)
values = st.one_of(junk, st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), junk))
entries = st.builds(
    Entry,
    network=names_or_junk,
    table=names_or_junk,
    key=names_or_junk,
    owner=names_or_junk,
    owner_epoch=st.one_of(st.integers(0, 3), junk),
    ltime=st.one_of(st.integers(0, 50), junk),
    deleted=st.one_of(st.booleans(), junk),
    value=values,
)
attachments = st.builds(
    NetworkAttachment,
    node=names_or_junk,
    network=names_or_junk,
    ltime=st.one_of(st.integers(0, 50), junk),
    leaving=st.one_of(st.booleans(), junk),
    epoch=st.one_of(st.integers(0, 3), junk),
)
seqs = lambda s: st.one_of(junk, st.lists(st.one_of(s, junk), max_size=4).map(tuple))  # noqa: E731
messages = st.one_of(
    junk,
    st.builds(TableGossip, source=names_or_junk, network=names_or_junk, entries=seqs(entries)),
    st.builds(NetworkGossip, source=names_or_junk, attachments=seqs(attachments)),
    st.builds(
        BulkSync,
        source=names_or_junk,
        reply=st.one_of(st.booleans(), junk),
        networks=seqs(names_or_junk),
        attachments=seqs(attachments),
        entries=seqs(entries),
    ),
)


def _victim() -> Tables:
    t = Tables(name="b", addr="addr-b", config=CFG, rng=random.Random(3))
    t.start(0.0)
    t.member_alive("a", "addr-a", 0, 0.0)
    t.join_network(NET, 0.0)
    t.create_entry(NET, EP, "mine", {"ip": "10.0.0.2"}, 0.0)
    return t


def _still_sound(t: Tables) -> None:
    """Garbage left nothing that could poison what this node sends later."""
    for e in list(t.entries(NET).values()) + list(t.tombstones(NET).values()):
        assert type(e.owner) is str and type(e.ltime) is int and type(e.deleted) is bool
    t.receive("addr-a", BulkSync(source="a", reply=False, networks=(NET,)), 9.0)
    now = 9.0
    for _ in range(30):
        now += 0.1
        t.handle_timer(now)
    for s in t.take_sends():
        decode(encode(s.msg), MAX_STREAM)
    t.create_entry(NET, EP, "after", {"ip": "x"}, now)  # the clock still works
    assert t.entries(NET)[(EP, "after")].ltime < 2**63


@settings(max_examples=300, deadline=None)
@given(msgs=st.lists(messages, max_size=6))
def test_structured_garbage_never_raises(msgs):
    t = _victim()
    for m in msgs:
        t.receive("addr-a", m, 1.0)
    _still_sound(t)


wire_junk = st.one_of(  # what msgpack can carry
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.sampled_from([NET, EP, "a", "b"]),
    st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=2),
)
wire_fields = st.lists(
    st.one_of(
        wire_junk, st.lists(st.one_of(wire_junk, st.lists(wire_junk, max_size=9)), max_size=3)
    ),
    max_size=7,
)


@settings(max_examples=300, deadline=None)
@given(mtype=st.integers(5, 10), fields=wire_fields, raw=st.binary(max_size=40))
def test_decoded_wire_garbage_never_raises(mtype, fields, raw):
    t = _victim()
    for data in (msgpack.packb([VERSION, mtype, *fields]), raw):
        try:
            msg = decode(data)
        except WireError:
            continue
        t.receive("addr-a", msg, 1.0)
    _still_sound(t)


def test_garbage_strategies_reach_the_tables():
    """Guard against a fuzz harness that never produces a well-formed message."""
    t = _victim()
    good = Entry(
        network=NET, table=EP, key="k", owner="a", owner_epoch=0, ltime=1, deleted=False, value={}
    )
    t.receive("addr-a", TableGossip(source="a", network=NET, entries=(good, "x")), 1.0)
    assert (EP, "k") in t.entries(NET) and t.dropped == 1
