"""The one journal of created kernel objects: written before creating, replayed exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overlaysim.agent import netns as kns
from overlaysim.agent.created import NETNS, Created, CreatedLog, load_outstanding
from overlaysim.agent.dataplane import DataPlane
from overlaysim.emu import record as runrec


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:3]]


def test_add_drop_replay_and_unreadable_lines(tmp_path: Path) -> None:
    path = tmp_path / "h1-created.jsonl"
    log = CreatedLog(path)
    a = Created(kind=NETNS, name="osim-h1-5001", owner="network:web")
    b = Created(kind=NETNS, name="osim-h1-c1", owner="container:c1")
    log.add(a)
    log.add(b)
    log.drop(a)
    with path.open("a") as f:
        f.write('{"op": "add", "kind": "net\n')  # a crash mid-write
    assert load_outstanding(path) == [b]
    assert [line["op"] for line in _lines(path)] == ["add", "add", "del"]


def test_data_plane_journals_a_namespace_before_creating_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "u1-created.jsonl"
    seen: list[list[Created]] = []

    def create_netns(name: str) -> None:  # the journal must already name it
        seen.append(load_outstanding(path))
        raise OSError("injected: namespace creation failed")

    monkeypatch.setattr(kns, "create_netns", create_netns)
    monkeypatch.setattr(kns, "netns_exists", lambda name: False)
    monkeypatch.setattr(kns, "remove_netns", lambda name: False)
    plane = DataPlane(host="u1", underlay_ip="10.98.0.1", record_path=path, prefix="osimt")
    record = Created(kind=NETNS, name="osimt-u1-c1", owner="container:c1")
    with pytest.raises(OSError, match="injected"):
        plane._create_namespace(record)
    assert seen == [[record]]
    assert load_outstanding(path) == []  # the failed creation is marked gone


def test_data_plane_never_journals_a_name_it_does_not_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "u1-created.jsonl"
    monkeypatch.setattr(kns, "netns_exists", lambda name: True)
    plane = DataPlane(host="u1", underlay_ip="10.98.0.1", record_path=path, prefix="osimt")
    with pytest.raises(kns.KernelError, match="already exists"):
        plane._create_namespace(Created(kind=NETNS, name="osimt-u1-c1"))
    assert not path.exists()  # a later clean must not remove someone else's namespace


def test_run_record_is_the_same_journal(tmp_path: Path) -> None:
    rec = runrec.RunRecord.create(tmp_path, "run-1", "ab")
    link = runrec.Item(kind=runrec.LINK, name="osimabs1-1")
    proc = runrec.Item(kind=runrec.PROCESS, pid=1, start=5, argv=("overlayd",))
    rec.add(link)
    rec.add(proc)
    rec.drop(link)
    rec.mark_stopped()
    again = runrec.RunRecord.load(rec.path)
    assert (again.run_id, again.tag, again.stopped) == ("run-1", "ab", True)
    assert again.outstanding() == [proc]
    assert again.outstanding(runrec.LINK) == []


def test_run_record_without_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "underlay.jsonl"
    path.write_text('{"op": "add", "kind": "link", "name": "osimabs1"}\n')
    with pytest.raises(ValueError, match="no run header"):
        runrec.RunRecord.load(path)
