"""Shared formed-cluster peer facts against the per-node structures they stand for."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from overlaysim.core.config import TableConfig
from overlaysim.core.formed import SharedByName, SharedNodeSet
from overlaysim.core.tables import Tables

_NAMES = [f"ff{i}" for i in range(10)]


def _tables(name: str) -> Tables:
    return Tables(name=name, addr=name, config=TableConfig.lan(), rng=random.Random(1))


def _same(a: Tables, b: Tables, probe_rng_seed: int) -> None:
    for attr in ("_epochs", "_addr"):
        x, y = getattr(a, attr), getattr(b, attr)
        assert x.as_dict() == y.as_dict() and len(x) == len(y) and bool(x) == bool(y)
        for n in [*_NAMES, "unknown"]:
            assert x.get(n) == y.get(n) and (n in x) == (n in y)
    sa, sb = a._alive, b._alive
    assert len(sa) == len(sb) and sa.as_set() == sb.as_set()
    assert all((n in sa) == (n in sb) for n in [*_NAMES, "unknown"])
    if len(sb):
        for k in (1, 3, 30):
            ra, rb = random.Random(probe_rng_seed), random.Random(probe_rng_seed)
            assert sa.sample(ra, k) == sb.sample(rb, k)
            assert sa.choice(ra) == sb.choice(rb)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 10),
    me=st.integers(0, 11),
    ops=st.lists(
        st.tuples(st.sampled_from(["alive", "down"]), st.integers(0, 11), st.integers(0, 2)),
        max_size=15,
    ),
    seed=st.integers(0, 5),
)
def test_shared_views_answer_as_the_per_node_build(n, me, ops, seed) -> None:
    members = tuple((_NAMES[i], f"a{i}", 0) for i in range(n))
    name = f"ff{me}"
    shared, plain = _tables(name), _tables(name)
    shared.bootstrap(members, 0.0)
    plain.bootstrap(list(members), 0.0)  # a list takes the per-node build
    assert isinstance(shared._alive, SharedNodeSet)
    assert isinstance(shared._epochs, SharedByName) and not isinstance(plain._epochs, SharedByName)
    _same(shared, plain, seed)
    for op, i, epoch in ops:
        node = f"ff{i}"
        for t in (shared, plain):
            if op == "alive":
                t.member_alive(node, f"b{i}", epoch, 1.0)
            else:
                t.member_down(node, 1.0)
        _same(shared, plain, seed)
        assert shared.take_events() == plain.take_events()


def test_formed_nodes_read_one_copy_until_they_change() -> None:
    members = tuple((f"ff{i}", f"a{i}", 0) for i in range(8))
    a, b = _tables("ff2"), _tables("ff5")
    a.bootstrap(members, 0.0)
    b.bootstrap(members, 0.0)
    assert a._epochs._v is b._epochs._v and a._addr._v is b._addr._v
    assert "ff2" not in a._epochs and "ff2" in b._epochs and len(a._alive) == 7
    a.member_down("ff7", 1.0)
    assert a._addr._v is not b._addr._v  # a's own copy now
    assert "ff7" not in a._addr and b._addr["ff7"] == "a7" and "ff7" in b._alive
