"""CowMap against its definition: a plain dict filled with the head, then the base."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from overlaysim.core.config import MembershipConfig
from overlaysim.core.cowmap import CowMap
from overlaysim.core.membership import ALIVE, DEAD, Member, Membership

_KEYS = st.sampled_from([f"k{i}" for i in range(12)])
_OPS = st.lists(
    st.tuples(st.sampled_from(["set", "del", "pop", "get"]), _KEYS, st.integers(0, 5)),
    max_size=60,
)


def _check(view: CowMap, ref: dict) -> None:
    assert list(view.items()) == list(ref.items())
    assert list(view) == list(ref) and list(view.values()) == list(ref.values())
    assert view.as_dict() == ref and len(view) == len(ref) and bool(view) == bool(ref)
    for i in range(12):
        k = f"k{i}"
        assert (k in view) == (k in ref)
        assert view.get(k) == ref.get(k)
        assert view.get(k, -1) == ref.get(k, -1)


@settings(max_examples=400, deadline=None)
@given(
    head=st.dictionaries(_KEYS, st.integers(0, 5), max_size=3),
    base=st.dictionaries(_KEYS, st.integers(0, 5), max_size=10),
    ops=_OPS,
)
def test_cowmap_behaves_as_the_dict_it_stands_for(head, base, ops) -> None:
    frozen = dict(base)
    ref = dict(head)
    for k, v in base.items():
        ref.setdefault(k, v)  # a head entry keeps its place and value
    view: CowMap = CowMap(head, base)
    _check(view, ref)
    for op, k, v in ops:
        if op == "set":
            view[k] = v
            ref[k] = v
        elif op == "del":
            if k in ref:
                del view[k]
                del ref[k]
            else:
                try:
                    del view[k]
                except KeyError:
                    pass
                else:
                    raise AssertionError("deleting an absent key must raise")
        elif op == "pop":
            assert view.pop(k) == ref.pop(k, None)
        _check(view, ref)
    assert base == frozen  # the shared base is never written


def _node(name: str) -> Membership:
    return Membership(name=name, addr=name, config=MembershipConfig.lan(), rng=random.Random(name))


def _plain_bootstrap(m: Membership, records, emit: bool) -> None:
    """The bootstrap definition: one record at a time into a dict (a generator input
    takes the original path)."""
    m.bootstrap((r for r in records), 0.0, emit=emit)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    dead=st.sets(st.integers(0, 11), max_size=4),
    dup=st.booleans(),
    emit=st.booleans(),
    ops=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 3)), max_size=20),
)
def test_shared_formed_boot_equals_the_plain_one(n, dead, dup, emit, ops) -> None:
    records = [Member(f"n{i}", f"n{i}", 0, DEAD if i in dead else ALIVE, 0) for i in range(n)] + [
        Member("n0", "other", 3, ALIVE, 0)
    ] * dup
    for me in (f"n{i}" for i in range(n)):
        shared, plain = _node(me), _node(me)
        shared.bootstrap(records, 0.0, emit=emit)
        _plain_bootstrap(plain, records, emit)
        assert type(plain._members) is dict and isinstance(shared._members, CowMap)
        assert shared._probe_list == plain._probe_list
        assert shared.members() == plain.members()
        assert list(shared.members()) == list(plain.members())
        assert shared.num_members() == plain.num_members()
        assert shared.take_events() == plain.take_events()
        assert shared._state() == plain._state()
        # then they diverge the same way
        for i, kind in ops:
            name = f"n{i}"
            for m in (shared, plain):
                if kind == 0 and m.member(name) is not None:
                    m._set(m.member(name), 1.0, incarnation=7)
                elif kind == 1 and m.member(name) is not None and name != me:
                    del m._members[name]
                elif kind == 2 and m.member(name) is None:
                    m._members[name] = Member(name, name, 1, ALIVE, 1)
            assert list(shared._members.items()) == list(plain._members.items())
        assert shared.alive() == plain.alive()


def test_formed_nodes_share_one_record_map() -> None:
    records = [Member(f"n{i}", f"n{i}", 0, ALIVE, 0) for i in range(50)]
    a, b = _node("n3"), _node("n40")
    a.bootstrap(records, 0.0, emit=False)
    b.bootstrap(records, 0.0, emit=False)
    assert a._members._base is b._members._base  # one copy of the N records
    assert a._members.owned() <= 2 and b._members.owned() <= 2  # own record + its skip
    assert a.member("n7") is b.member("n7") is records[7]
    # a changed list is not mistaken for the one shared before
    records[5] = Member("n5", "elsewhere", 0, ALIVE, 0)
    c = _node("n1")
    c.bootstrap(records, 0.0, emit=False)
    assert c.member("n5").addr == "elsewhere" and a.member("n5").addr == "n5"
