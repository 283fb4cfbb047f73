"""The generated wire decoder against the plain definition, and interned records.

``wire.decode`` turns each record with a function generated from the schema. These tests
pin it to the plain field-by-field definition (kept here, as the reference): the same
message for well-formed input, the same :class:`WireError` text for anything else.
"""

from __future__ import annotations

import random
import typing

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlaysim.core import wire
from overlaysim.core.config import TableConfig
from overlaysim.core.tables import Tables
from overlaysim.core.wire import (
    MESSAGES,
    BulkSync,
    Entry,
    MemberUpdate,
    NetworkAttachment,
    NetworkGossip,
    Ping,
    PushPull,
    TableGossip,
    WireError,
    decode,
    encode,
)


def _plain(cls: type, items: typing.Any, where: str) -> typing.Any:
    """The decoder's definition: every field checked in turn, by its kind."""
    sch = wire._schema(cls)
    if not isinstance(items, list) or len(items) != len(sch):
        raise WireError(f"{where}: expected {len(sch)} fields for {cls.__name__}")
    kwargs = {}
    for (name, kind, rec), v in zip(sch, items, strict=True):
        if kind in ("int", "str", "bool"):
            if type(v) is not {"int": int, "str": str, "bool": bool}[kind]:
                raise WireError(f"{where}.{name}: expected {kind}, got {type(v).__name__}")
        elif kind == "strmap":
            if not isinstance(v, dict) or not all(
                type(k) is str and type(x) is str for k, x in v.items()
            ):
                raise WireError(f"{where}.{name}: expected map of str to str")
        elif kind == "strs":
            if not isinstance(v, list) or not all(type(x) is str for x in v):
                raise WireError(f"{where}.{name}: expected list of str")
            v = tuple(v)
        else:
            if not isinstance(v, list):
                raise WireError(f"{where}.{name}: expected list of {rec.__name__}")
            v = tuple(_plain(rec, r, f"{where}.{name}") for r in v)
        kwargs[name] = v
    return cls(**kwargs)


def _outcome(fn: typing.Callable[..., typing.Any], *args: typing.Any) -> tuple[str, typing.Any]:
    try:
        return "ok", fn(*args)
    except WireError as exc:
        return "error", str(exc)


def _entry(i: int, **kw: typing.Any) -> Entry:
    fields = dict(
        network="web",
        table="endpoints",
        key=f"c{i}",
        owner=f"h{i}",
        owner_epoch=7,
        ltime=100 + i,
        deleted=False,
        value={"ip": f"10.0.0.{i}", "mac": "02:42:00:00:00:01"},
    )
    fields.update(kw)
    return Entry(**fields)


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.dictionaries(st.text(max_size=2), st.one_of(st.text(max_size=2), st.none()), max_size=2),
)
fields = st.lists(
    st.one_of(junk, st.lists(st.one_of(junk, st.lists(junk, max_size=9)), max_size=3)),
    max_size=9,
)


def _valid(kind: str, rec: type | None, depth: int) -> st.SearchStrategy:
    if kind == "int":
        return st.integers(-(2**63), 2**64 - 1)
    if kind == "str":
        return st.text(max_size=3)
    if kind == "bool":
        return st.booleans()
    if kind == "strmap":
        return st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=3)
    if kind == "strs":
        return st.lists(st.text(max_size=2), max_size=3)
    assert rec is not None
    return st.lists(_fields_of(rec, depth + 1), max_size=3)


@st.composite
def _fields_of(draw: st.DrawFn, cls: type, depth: int = 0) -> list:
    """A field list for ``cls``: mostly well-formed, a field now and then junk (a scalar
    or a list of them), the list now and then a field short or long, so that every
    check of every kind is reached with the fields before it passing."""
    out = []
    for _, kind, rec in wire._schema(cls):
        pick = draw(st.integers(0, 11)) if depth < 2 else 0
        if pick == 0:
            out.append(draw(junk))
        elif pick == 1:
            out.append(draw(st.lists(junk, max_size=3)))
        else:
            out.append(draw(_valid(kind, rec, depth)))
    shape = draw(st.integers(0, 9))
    if shape == 0 and out:
        out.pop()
    elif shape == 1:
        out.append(draw(junk))
    return out


@st.composite
def wire_messages(draw: st.DrawFn) -> tuple[int, list]:
    mtype = draw(st.sampled_from(sorted(MESSAGES)))
    return mtype, draw(_fields_of(MESSAGES[mtype]))


@settings(max_examples=500, deadline=None)
@given(msg=wire_messages())
def test_generated_decoder_matches_the_plain_definition_on_garbage(msg):
    mtype, items = msg
    cls = MESSAGES[mtype]
    data = msgpack.packb([wire.VERSION, mtype, *items], use_bin_type=True)
    obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    got = _outcome(decode, data, wire.MAX_STREAM)
    want = _outcome(_plain, cls, obj[2:], cls.__name__)
    if want[0] == "error" and got[0] == "error" and "map key" in got[1]:
        return  # msgpack itself refused a non-str map key before either decoder ran
    assert got == want


_BAD = [
    None,
    True,
    0,
    -1,
    2**64 - 1,
    "s",
    b"b",
    {},
    {"a": None},
    {"a": "b"},
    [],
    [None],
    ["a", None],
    [None, "a"],
    [[]],
    [["a"]],
]


def _good(cls: type) -> list:
    """A well-formed field list for ``cls`` with one nested record per record field."""
    out: list = []
    for _, kind, rec in wire._schema(cls):
        out.append(
            {"int": 1, "str": "a", "bool": False, "strmap": {"k": "v"}, "strs": ["a", "b"]}.get(
                kind
            )
            if rec is None
            else [_good(rec), _good(rec)]
        )
    return out


def _one_wrong(items: list) -> typing.Iterator[list]:
    """``items`` with one field (or one field of its first nested record) replaced by
    each bad value in turn, and with a field missing or one too many."""
    yield items[:-1]
    yield [*items, "extra"]
    for i, v in enumerate(items):
        for bad in _BAD:
            yield [*items[:i], bad, *items[i + 1 :]]
        if isinstance(v, list) and v and isinstance(v[0], list):
            for inner in _one_wrong(v[0]):
                yield [*items[:i], [v[1], inner], *items[i + 1 :]]


def test_generated_decoder_matches_with_each_field_wrong_in_turn() -> None:
    checked = 0
    for mtype, cls in MESSAGES.items():
        good = _good(cls)
        assert _outcome(_plain, cls, good, cls.__name__)[0] == "ok"
        for items in [good, *_one_wrong(good)]:
            data = msgpack.packb([wire.VERSION, mtype, *items], use_bin_type=True)
            obj = msgpack.unpackb(data, raw=False)
            assert _outcome(decode, data, wire.MAX_STREAM) == _outcome(
                _plain, cls, obj[2:], cls.__name__
            ), items
            checked += 1
    assert checked > 1000


def test_generated_decoder_matches_on_well_formed_messages() -> None:
    msgs = [
        Ping(
            seq=1,
            target="b",
            source="a",
            source_addr="x:1",
            updates=(MemberUpdate(kind=1, node="c", incarnation=2, addr="y:1", epoch=3),),
        ),
        PushPull(source="a", source_addr="x:1", join=True, reply=False),
        TableGossip(source="a", network="web", entries=tuple(_entry(i) for i in range(20))),
        NetworkGossip(
            source="a",
            attachments=(
                NetworkAttachment(node="h1", network="web", ltime=3, leaving=False, epoch=1),
                NetworkAttachment(node="h2", network="web", ltime=4, leaving=True, epoch=1),
            ),
        ),
        BulkSync(
            source="a",
            reply=True,
            networks=("web", "db"),
            entries=(_entry(1, deleted=True, value={}),),
        ),
    ]
    for m in msgs:
        data = encode(m)
        obj = msgpack.unpackb(data, raw=False)
        assert decode(data, wire.MAX_STREAM) == m == _plain(type(m), obj[2:], type(m).__name__)


def test_an_equal_record_decodes_to_the_same_object_and_the_tables_hold_it() -> None:
    """A retransmitted entry comes back as the object decoded the first time, so the
    tables' "the very record we hold" fast path sees it, as in the simulator."""
    msg = TableGossip(source="h2", network="web", entries=(_entry(2, owner="h2"),))
    first, again = decode(encode(msg)), decode(encode(msg))
    assert first.entries[0] is again.entries[0]
    other = decode(
        encode(TableGossip(source="h2", network="web", entries=(_entry(2, owner="h2", ltime=999),)))
    )
    assert other.entries[0] is not first.entries[0]  # another version, another object
    # the same fields in another record class are never mixed up
    att = NetworkAttachment(node="h1", network="web", ltime=1, leaving=False, epoch=0)
    assert type(decode(encode(NetworkGossip(source="x", attachments=(att,)))).attachments[0]) is (
        NetworkAttachment
    )

    t = Tables(name="h1", addr="addr-1", config=TableConfig(), rng=random.Random(1), epoch=1)
    t.start(0.0)
    t.member_alive("h2", "addr-2", 7, 0.0)
    t.join_network("web", 0.0)
    assert t.receive("addr-2", first, 1.0) is True  # news: stored
    assert t.entry("web", "endpoints", "c2") is first.entries[0]
    assert t.receive("addr-2", again, 2.0) is False  # the very record held: nothing to do


def test_the_intern_memo_is_bounded() -> None:
    for i in range(wire._INTERN_MAX + 10):
        decode(encode(TableGossip(source="a", network="n", entries=(_entry(i),))))
    assert len(wire._interned) <= wire._INTERN_MAX


def test_a_packet_of_the_previous_wire_version_is_refused_by_its_version() -> None:
    """Version 1 attachments had no ``entry_clock``: such a peer is told apart by the
    version, not by a confusing field count."""
    old = msgpack.packb(
        [1, int(NetworkGossip.TYPE), "h1", [["h1", "web", 3, False, 0]]], use_bin_type=True
    )
    with pytest.raises(WireError, match=r"unsupported wire version 1 \(expected 2\)"):
        decode(old, wire.MAX_DATAGRAM)
    now = encode(
        NetworkGossip(
            source="h1",
            attachments=(
                NetworkAttachment(node="h1", network="web", ltime=3, leaving=False, epoch=0),
            ),
        )
    )
    assert msgpack.unpackb(now)[0] == wire.VERSION == 2
