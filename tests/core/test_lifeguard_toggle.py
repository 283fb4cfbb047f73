"""`lifeguard: false` gives plain SWIM: fixed suspicion timeout, no nacks, no awareness."""

from __future__ import annotations

import dataclasses
import random

from overlaysim.core.config import MembershipConfig
from overlaysim.core.events import MemberEventKind
from overlaysim.core.membership import ALIVE, Member, Membership
from overlaysim.core.suspicion import suspicion_min_timeout
from overlaysim.core.wire import Gossip, IndirectPing, MemberUpdate, UpdateKind


def _node(lifeguard: bool) -> Membership:
    cfg = dataclasses.replace(MembershipConfig.lan(), lifeguard=lifeguard)
    m = Membership(name="a", addr="a", config=cfg, rng=random.Random(1))
    m.start(0.0)
    m.bootstrap([Member(n, n, 0, ALIVE) for n in "bcdefgh"], 0.0, emit=False)
    m.take_sends()
    return m


def _dead_time(m: Membership, confirmers: str) -> float:
    """Suspect b at t=1 (from c, then confirmations); return when a declares b dead."""
    sus = [
        MemberUpdate(kind=UpdateKind.SUSPECT, node="b", incarnation=0, src=s) for s in confirmers
    ]
    m.receive("c", Gossip(source="c", updates=tuple(sus)), 1.0)
    t = 1.0
    while t < 200:
        nt = m.next_timer()
        assert nt is not None
        t = max(t, nt)
        m.handle_timer(t)
        m.take_sends()
        for ev in m.take_events():
            if ev.kind is MemberEventKind.DEAD and ev.node == "b":
                return t
    raise AssertionError("b never declared dead")


def test_without_lifeguard_confirmations_do_not_shorten_the_timeout() -> None:
    lo = suspicion_min_timeout(4, 8, 1.0)
    plain_alone = _dead_time(_node(False), "c") - 1.0
    plain_confirmed = _dead_time(_node(False), "cdef") - 1.0
    assert abs(plain_alone - lo) < 1e-6 and abs(plain_confirmed - lo) < 1e-6
    # With Lifeguard a lone accusation waits for the maximum, confirmations shrink it.
    lg_alone = _dead_time(_node(True), "c") - 1.0
    lg_confirmed = _dead_time(_node(True), "cdef") - 1.0
    assert lg_alone > lg_confirmed >= lo - 1e-6
    assert abs(lg_alone - 6 * lo) < 1e-6


def test_without_lifeguard_no_nacks_are_requested_and_health_stays_zero() -> None:
    for lifeguard in (True, False):
        m = _node(lifeguard)
        t, asked = 0.0, []
        while t < 20:  # nobody ever answers: every probe fails
            t = m.next_timer()
            m.handle_timer(t)
            asked += [s.msg.want_nack for s in m.take_sends() if isinstance(s.msg, IndirectPing)]
            m.take_events()
        assert asked and all(w is lifeguard for w in asked)
        assert (m.health_score > 0) is lifeguard
