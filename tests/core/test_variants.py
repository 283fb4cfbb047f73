"""protocol.variant and protocol.extensions: what each layer sets, and the reconnect loop."""

from __future__ import annotations

import dataclasses
import random

import pytest

from overlaysim.core.config import (
    EXTENSIONS,
    MembershipConfig,
    TableConfig,
    configs,
    extension_states,
)
from overlaysim.core.membership import ALIVE, DEAD, Member, Membership
from overlaysim.core.node import Node
from overlaysim.core.wire import Gossip, MemberUpdate, PushPull, UpdateKind


def test_default_variant_is_todays_protocol_with_every_extension_on() -> None:
    m, t = configs("lan")
    assert (m, t) == (MembershipConfig.lan(), TableConfig.lan())
    assert extension_states(m, t) == dict.fromkeys(EXTENSIONS, True)


def test_docker_variant_switches_our_extensions_off_and_keeps_the_timers() -> None:
    m, t = configs("lan", variant="docker")
    states = extension_states(m, t)
    assert states == {n: n == "lifeguard" for n in EXTENSIONS}
    assert m.reconnect_interval == 1.0 and m.dead_node_reclaim_time == 86400.0
    ours = MembershipConfig.lan()
    for f in ("probe_interval", "gossip_interval", "retransmit_mult", "push_pull_interval"):
        assert getattr(m, f) == getattr(ours, f)
    assert t.bulk_sync_interval == 30.0


def test_layers_extensions_over_variant_and_fields_over_extensions() -> None:
    m, _ = configs("lan", variant="docker", extensions={"heal_rule": True})
    assert m.heal_window_mult == 2.0 and not m.epochs
    m, _ = configs("lan", {"heal_window_mult": 3.0}, extensions={"heal_rule": False})
    assert m.heal_window_mult == 3.0


def test_unknown_variant_or_extension_names_the_choices() -> None:
    with pytest.raises(ValueError, match="overlaysim, docker"):
        configs("lan", variant="consul")
    with pytest.raises(ValueError, match="heal_rule"):
        configs("lan", extensions={"healrule": True})


def test_without_epochs_every_boot_is_epoch_zero() -> None:
    m, t = configs("lan", variant="docker")
    node = Node(name="a", addr="a", membership=m, tables=t, rng=random.Random(1), epoch=7)
    assert node.epoch == 0 and node.membership.epoch == 0


def test_reconnect_loop_joins_through_a_dead_member_every_interval() -> None:
    m, _ = configs("lan", variant="docker")
    m = dataclasses.replace(m, push_pull_interval=1e9)
    a = Membership(name="a", addr="a", config=m, rng=random.Random(1))
    a.start(0.0)
    a.bootstrap([Member(n, n, 0, ALIVE) for n in "bcd"], 0.0, emit=False)
    dead = MemberUpdate(kind=UpdateKind.DEAD, node="b", incarnation=0, addr="b", src="c")
    a.receive("c", Gossip(source="c", updates=(dead,)), 0.5)
    assert a.member("b").state is DEAD  # type: ignore[union-attr]
    joins, t = [], 0.5
    while t < 5.5:
        t = a.next_timer()  # type: ignore[assignment]
        a.handle_timer(t)
        joins += [s for s in a.take_sends() if isinstance(s.msg, PushPull) and s.msg.join]
    assert [s.dst for s in joins] == ["b"] * len(joins) and 4 <= len(joins) <= 6
