"""The two tombstone switches the ``docker`` variant turns off (docs/variants.md):
``unknown_tombstones`` (a gossiped delete of an entry never held) and
``local_tombstones`` (entries hidden by their owner's network leave)."""

from __future__ import annotations

import dataclasses
import random

from overlaysim.core.config import TableConfig, configs
from overlaysim.core.tables import Tables
from overlaysim.core.wire import BulkSync, Entry, NetworkAttachment, NetworkGossip, TableGossip

NET = "blue"
BASE = TableConfig(gossip_interval=0.1, bulk_sync_interval=1000.0, reap_interval=1000.0)
DOCKERISH = dataclasses.replace(BASE, unknown_tombstones=False, local_tombstones=False)


def _node(config: TableConfig) -> Tables:
    t = Tables(name="a", addr="addr-a", config=config, rng=random.Random(3))
    t.start(0.0)
    t.member_alive("o", "addr-o", 0, 0.0)
    t.join_network(NET, 0.0)
    t.receive("addr-o", NetworkGossip(source="o", attachments=(_att(1),)), 0.0)
    return t


def _att(ltime: int, leaving: bool = False) -> NetworkAttachment:
    return NetworkAttachment(node="o", network=NET, ltime=ltime, leaving=leaving)


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


def test_both_switches_are_on_by_default_and_off_under_docker() -> None:
    _, ours = configs("lan")
    _, docker = configs("lan", variant="docker")
    assert ours.unknown_tombstones and ours.local_tombstones
    assert not docker.unknown_tombstones and not docker.local_tombstones


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
    for config, live in ((BASE, True), (DOCKERISH, False)):
        t = _node(config)
        new = _entry(5)
        t.receive("addr-o", _gossip(new), 1.0)  # the entry made after the rejoin
        t.receive("addr-x", NetworkGossip(source="x", attachments=(_att(2, True),)), 1.1)
        assert t.entry(NET, "ep", "c1") is None  # the leave hides it either way
        t.receive("addr-x", NetworkGossip(source="x", attachments=(_att(3),)), 1.2)
        t.receive("addr-y", _gossip(dataclasses.replace(new)), 1.3)  # another copy
        assert (t.entry(NET, "ep", "c1") is not None) is live, config


def test_a_dropped_delete_is_still_reported_so_measurements_see_it_arrive() -> None:
    t = _node(DOCKERISH)
    t.take_events()
    t.receive("addr-o", _gossip(_entry(2, deleted=True)), 1.0)
    assert [ev.kind.value for ev in t.take_events()] == ["tombstone"]
    assert t.tombstones(NET) == {}  # reported, not stored
