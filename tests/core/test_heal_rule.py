"""The heal rule: a relayed Dead does not override direct evidence that a member is up."""

from __future__ import annotations

import dataclasses
import random

from overlaysim.core.config import MembershipConfig
from overlaysim.core.events import MemberEventKind
from overlaysim.core.membership import ALIVE, DEAD, SUSPECT, Member, Membership
from overlaysim.core.suspicion import suspicion_min_timeout
from overlaysim.core.wire import Gossip, MemberUpdate, Ping, UpdateKind


def _node(**changes: object) -> Membership:
    cfg = dataclasses.replace(MembershipConfig.lan(), **changes)  # type: ignore[arg-type]
    m = Membership(name="a", addr="a", config=cfg, rng=random.Random(1))
    m.start(0.0)
    m.bootstrap([Member(n, n, 0, ALIVE) for n in "bcdefgh"], 0.0, emit=False)
    m.take_sends()
    return m


def _relayed(kind: UpdateKind, node: str = "b", inc: int = 0, src: str = "c") -> Gossip:
    update = MemberUpdate(kind=kind, node=node, incarnation=inc, addr=node, src=src)
    return Gossip(source=src, updates=(update,))


def _kinds(m: Membership) -> list[MemberEventKind]:
    return [ev.kind for ev in m.take_events()]


def test_relayed_dead_about_a_member_we_just_heard_is_only_a_suspicion() -> None:
    m = _node()
    m.receive("b", Ping(seq=1, target="a", source="b", source_addr="b"), 1.0)
    m.receive("c", _relayed(UpdateKind.DEAD), 2.0)
    assert m.member("b").state is SUSPECT  # type: ignore[union-attr]
    assert MemberEventKind.DEAD not in _kinds(m)
    # The accused refutes: it is alive again, never declared dead.
    m.receive("b", _relayed(UpdateKind.ALIVE, inc=1, src="b"), 2.5)
    assert m.member("b").state is ALIVE  # type: ignore[union-attr]
    assert _kinds(m) == [MemberEventKind.ALIVE]


def test_unrefuted_contested_dead_still_ends_in_dead() -> None:
    m = _node()
    m.receive("b", Ping(seq=1, target="a", source="b", source_addr="b"), 1.0)
    m.receive("c", _relayed(UpdateKind.DEAD), 2.0)
    t = 2.0
    while m.member("b").state is not DEAD:  # type: ignore[union-attr]
        nt = m.next_timer()
        assert nt is not None and nt < 200
        t = max(t, nt)
        m.handle_timer(t)
        m.take_sends()
    assert MemberEventKind.DEAD in _kinds(m)


def test_relayed_dead_without_recent_contact_is_accepted_at_once() -> None:
    m = _node()
    lo = suspicion_min_timeout(4, m.num_members(), 1.0)
    m.receive("b", Ping(seq=1, target="a", source="b", source_addr="b"), 1.0)
    m.receive("c", _relayed(UpdateKind.DEAD), 1.0 + 2 * lo + 0.1)
    assert m.member("b").state is DEAD  # type: ignore[union-attr]
    never = _node()
    never.receive("c", _relayed(UpdateKind.DEAD), 1.0)
    assert never.member("b").state is DEAD  # type: ignore[union-attr]


def test_switched_off_the_relayed_dead_wins_as_in_memberlist() -> None:
    m = _node(heal_window_mult=0.0)
    m.receive("b", Ping(seq=1, target="a", source="b", source_addr="b"), 1.0)
    m.receive("c", _relayed(UpdateKind.DEAD), 2.0)
    assert m.member("b").state is DEAD  # type: ignore[union-attr]


def test_a_suspect_that_talks_to_us_is_told_so_it_can_refute() -> None:
    m = _node()
    m.receive("c", _relayed(UpdateKind.SUSPECT), 1.0)
    assert m.member("b").state is SUSPECT  # type: ignore[union-attr]
    m.take_sends()
    m.receive("b", Gossip(source="b"), 1.5)
    told = [
        u
        for s in m.take_sends()
        if s.dst == "b"
        for u in getattr(s.msg, "updates", ())
        if u.kind == UpdateKind.SUSPECT and u.node == "b"
    ]
    assert told
    # Not again within the probe interval.
    m.receive("b", Gossip(source="b"), 1.7)
    assert not [s for s in m.take_sends() if s.dst == "b"]


def test_graceful_leave_is_never_contested() -> None:
    m = _node()
    m.receive("b", Ping(seq=1, target="a", source="b", source_addr="b"), 1.0)
    m.receive("b", _relayed(UpdateKind.DEAD, src="b"), 1.5)
    assert m.member("b").state.value == "left"  # type: ignore[union-attr]
