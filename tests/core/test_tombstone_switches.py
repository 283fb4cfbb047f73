"""The tombstone switches the ``docker`` variant turns off (docs/variants.md):
``unknown_tombstones`` (a gossiped delete of an entry never held),
``local_tombstones`` (entries hidden by their owner's network leave) and
``leave_clock`` (which of the owner's entries a leave covers)."""

from __future__ import annotations

import dataclasses
import random

from overlaysim.core.config import TableConfig, configs
from overlaysim.core.tables import Tables
from overlaysim.core.wire import BulkSync, Entry, NetworkAttachment, NetworkGossip, TableGossip

NET = "blue"
BASE = TableConfig(gossip_interval=0.1, bulk_sync_interval=1000.0, reap_interval=1000.0)
NO_CLOCK = dataclasses.replace(BASE, leave_clock=False)
DOCKERISH = dataclasses.replace(
    BASE, unknown_tombstones=False, local_tombstones=False, leave_clock=False
)


def _node(config: TableConfig) -> Tables:
    t = Tables(name="a", addr="addr-a", config=config, rng=random.Random(3))
    t.start(0.0)
    t.member_alive("o", "addr-o", 0, 0.0)
    t.join_network(NET, 0.0)
    t.receive("addr-o", NetworkGossip(source="o", attachments=(_att(1),)), 0.0)
    return t


def _att(ltime: int, leaving: bool = False, entry_clock: int = 0) -> NetworkAttachment:
    return NetworkAttachment(
        node="o", network=NET, ltime=ltime, leaving=leaving, entry_clock=entry_clock
    )


def _entry(ltime: int, deleted: bool = False) -> Entry:
    return Entry(
        network=NET,
        table="ep",
        key="c1",
        owner="o",
        owner_epoch=0,
        ltime=ltime,
        deleted=deleted,
        value={} if deleted else {"ip": "10.0.0.2"},
    )


def _gossip(e: Entry) -> TableGossip:
    return TableGossip(source="o", network=NET, entries=(e,))


def test_the_switches_are_on_by_default_and_off_under_docker() -> None:
    _, ours = configs("lan")
    _, docker = configs("lan", variant="docker")
    assert ours.unknown_tombstones and ours.local_tombstones and ours.leave_clock
    assert not (docker.unknown_tombstones or docker.local_tombstones or docker.leave_clock)


def test_an_add_arriving_after_its_delete_stays_deleted_only_with_unknown_tombstones() -> None:
    for config, live in ((BASE, False), (DOCKERISH, True)):
        t = _node(config)
        t.receive("addr-o", _gossip(_entry(2, deleted=True)), 1.0)  # the delete first
        t.receive("addr-x", _gossip(_entry(1)), 1.1)  # then the older add, relayed
        assert (t.entry(NET, "ep", "c1") is not None) is live, config


def test_a_bulk_synced_delete_of_an_unknown_entry_is_kept_either_way() -> None:
    t = _node(DOCKERISH)
    sync = BulkSync(source="o", reply=True, networks=(NET,), entries=(_entry(2, deleted=True),))
    t.receive("addr-o", sync, 1.0)
    t.receive("addr-x", _gossip(_entry(1)), 1.1)
    assert t.entry(NET, "ep", "c1") is None


def test_a_late_leave_buries_the_rejoined_entry_only_without_local_tombstones() -> None:
    # The owner left when its entry clock stood at 4, rejoined, then wrote ltime 5.
    for config, hidden, live in (
        (BASE, False, True),  # the leave does not cover what was written after it
        (NO_CLOCK, True, True),  # hidden, and the owner's same version brings it back
        (DOCKERISH, True, False),  # buried until the owner writes a newer version
    ):
        t = _node(config)
        new = _entry(5)
        t.receive("addr-o", _gossip(new), 1.0)  # the entry made after the rejoin
        leave = _att(2, True, entry_clock=4)
        t.receive("addr-x", NetworkGossip(source="x", attachments=(leave,)), 1.1)
        assert (t.entry(NET, "ep", "c1") is None) is hidden, config
        t.receive("addr-x", NetworkGossip(source="x", attachments=(_att(3, entry_clock=4),)), 1.2)
        t.receive("addr-y", _gossip(dataclasses.replace(new)), 1.3)  # another copy
        assert (t.entry(NET, "ep", "c1") is not None) is live, config


def test_an_entry_written_after_a_leave_proves_the_rejoin_only_with_the_leave_clock() -> None:
    """moby#47728's race: the rejoin's first entry outruns the rejoin's announcement."""
    for config, kept in ((BASE, True), (NO_CLOCK, False), (DOCKERISH, False)):
        t = _node(config)
        t.receive("addr-o", _gossip(_entry(2)), 0.5)  # written before the leave
        leave = _att(2, True, entry_clock=3)  # the owner's tombstone for it took ltime 3
        t.receive("addr-x", NetworkGossip(source="x", attachments=(leave,)), 1.0)
        assert t.entry(NET, "ep", "c1") is None, config
        t.receive("addr-y", _gossip(dataclasses.replace(_entry(2))), 1.1)  # a stale copy
        assert t.entry(NET, "ep", "c1") is None, config  # still covered by the leave
        after = dataclasses.replace(_entry(4), key="c2")  # the rejoin's, ahead of its news
        t.receive("addr-z", _gossip(after), 1.2)
        assert (t.entry(NET, "ep", "c2") is not None) is kept, config


def test_a_dropped_delete_is_still_reported_so_measurements_see_it_arrive() -> None:
    t = _node(DOCKERISH)
    t.take_events()
    t.receive("addr-o", _gossip(_entry(2, deleted=True)), 1.0)
    assert [ev.kind.value for ev in t.take_events()] == ["tombstone"]
    assert t.tombstones(NET) == {}  # reported, not stored


def test_a_leave_covers_an_earlier_boot_whatever_its_clock() -> None:
    t = _node(BASE)
    old_boot = dataclasses.replace(_entry(9), owner_epoch=0, key="c9")
    leave = NetworkAttachment(node="o", network=NET, ltime=5, leaving=True, epoch=1, entry_clock=2)
    t.receive("addr-x", NetworkGossip(source="x", attachments=(leave,)), 1.0)
    t.receive("addr-y", _gossip(old_boot), 1.1)
    assert t.entry(NET, "ep", "c9") is None  # ltime 9 > 2, but of boot 0, before boot 1
