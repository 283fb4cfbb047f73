"""The spread decomposition (overlaysim.metrics.spread) and its folder traces."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from overlaysim.core.config import configs
from overlaysim.metrics.spread import Commit, Datagram, Seen, Trace, decompose, summarise
from overlaysim.report.spread_trace import emu_trace
from overlaysim.scenario.loader import load_scenario
from overlaysim.sim.runner import run_simulation
from overlaysim.sim.spread_replay import sim_trace

REPO = Path(__file__).resolve().parents[2]
E = "endpoints"


def _gram(t, node, peer, rx, deleted=False):  # type: ignore[no-untyped-def]
    return Datagram(t, node, peer, "app", frozenset({("c1", "h1", deleted)}), rx)


def _chain() -> Trace:
    """h1 commits c1 at 1.0 and gossips at 1.05 to h2 and h3; h3's copy is lost; h2
    forwards at 1.15 and h3 gets it from h2."""
    return Trace(
        commits=[Commit(1.0, "h1", "app", "c1", "add")],
        seen=[
            Seen(1.0, "h1", "app", "c1", "add"),
            Seen(1.052, "h2", "app", "c1", "add"),
            Seen(1.153, "h3", "app", "c1", "add"),
        ],
        datagrams=[
            _gram(1.05, "h1", "h2", False),
            _gram(1.05, "h1", "h3", False),
            _gram(1.051, "h2", "h1", True),
            _gram(1.15, "h2", "h3", False),
            _gram(1.152, "h3", "h2", True),
            # a datagram about another entry is not this commit's
            Datagram(1.06, "h1", "h2", "app", frozenset({("c9", "h1", False)}), False),
        ],
    )


def test_one_commit_is_cut_into_owner_wait_hops_and_forwarding() -> None:
    (s,) = decompose(_chain())
    assert s.owner_wait == pytest.approx(0.05)
    assert sorted(s.hops) == pytest.approx([0.001, 0.002])
    assert s.sent == 3 and s.lost == 1  # h1 -> h3 never arrived
    assert s.handle == pytest.approx([0.001, 0.001])
    assert s.forward_wait == pytest.approx([0.098])  # h2: table event -> its own send
    assert s.reached == 2 and s.other_path == 0
    assert s.hops_to_last == 2 and s.to_last == pytest.approx(0.153)
    # the path to the last host adds up to its time
    assert [(e.src, e.dst, e.round) for e in s.last_path] == [("h1", "h2", 1), ("h2", "h3", 1)]
    assert [e.held for e in s.last_path] == pytest.approx([0.05, 0.098])
    assert sum(e.held + e.hop + e.handle for e in s.last_path) == pytest.approx(s.to_last)
    summ = summarise([s])
    assert summ["loss"] == {"sent": 3, "lost": 1, "fraction": pytest.approx(1 / 3)}
    assert summ["hops_to_last"]["p50"] == 2
    assert summarise([s], "delete")["commits"]["n"] == 0


def test_a_delete_is_not_carried_by_the_add_and_a_host_reached_otherwise_is_counted() -> None:
    tr = _chain()
    tr.commits.append(Commit(2.0, "h1", "app", "c1", "delete"))
    tr.seen += [Seen(2.0, "h1", "app", "c1", "delete"), Seen(2.5, "h2", "app", "c1", "delete")]
    tr.datagrams.append(_gram(2.2, "h1", "h3", False, deleted=True))  # lost; h2 got a sync
    add, delete = decompose(tr)
    assert add.commit.op == "add" and add.to_last == pytest.approx(0.153)  # cut at 2.0
    assert delete.owner_wait == pytest.approx(0.2)
    assert delete.other_path == 1 and delete.hops_to_last is None and delete.lost == 1


def _write_emu_folder(folder: Path, t0: float) -> None:
    """An emulation folder as the runner writes it: events.csv in scenario time, agent
    logs in monotonic time (t0 + scenario time)."""
    (folder / "agent-logs").mkdir(parents=True)
    with (folder / "events.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "node", "kind", "subject", "network", "key", "op", "detail"])
        w.writerow([1.0, "h1", "entry_commit", "", "app", "c1", "add", ""])
    ent = [[E, "c1", "h1", 1, 0]]
    logs = {
        "h1": [
            {"t": 0.0, "kind": "start", "addr": "10.0.0.1:7946"},
            {"t": 1.0, "kind": "entry_commit", "network": "app", "key": "c1", "op": "add"},
            {"t": 1.05, "kind": "gossip_tx", "network": "app", "entries": ent, "dst": "10.0.0.2:7946"},
        ],
        "h2": [
            {"t": 0.0, "kind": "start", "addr": "10.0.0.2:7946"},
            {"t": 1.053, "kind": "gossip_rx", "network": "app", "entries": ent, "src": "h1"},
            {"t": 1.054, "kind": "entry_seen", "network": "app", "table": E, "key": "c1", "op": "add", "owner": "h1"},
            {"t": 1.064, "kind": "entry_programmed", "network": "app", "key": "c1", "op": "add"},
        ],
    }  # fmt: skip
    for node, lines in logs.items():
        with (folder / "agent-logs" / f"{node}.jsonl").open("w") as f:
            for line in lines:
                f.write(json.dumps({**line, "t": line["t"] + t0, "node": node}) + "\n")


def test_emu_trace_reads_agent_logs_in_scenario_time(tmp_path: Path) -> None:
    _write_emu_folder(tmp_path, t0=5000.0)
    tr, info = emu_trace(tmp_path)
    assert info["t0"] == pytest.approx(5000.0) and info["datagram_lines"] == 2
    (s,) = decompose(tr)
    assert s.owner_wait == pytest.approx(0.05, abs=1e-6)
    assert s.hops == pytest.approx([0.003], abs=1e-6)  # the destination named by address
    assert s.lost == 0 and s.hops_to_last == 1
    assert info["programming"] == pytest.approx([0.010], abs=1e-6)


def test_a_simulated_folder_is_replayed_and_its_hops_are_the_link_latency(tmp_path: Path) -> None:
    scenario = load_scenario(REPO / "scenarios" / "quickstart.yaml")
    run_simulation(scenario, tmp_path / "sim", progress=False)
    tr, info = sim_trace(tmp_path / "sim")
    assert info["replay_matches_folder"]
    spreads = decompose(tr)
    assert spreads and all(s.commit.t >= 0 for s in spreads)
    _, tconf = configs(scenario.profile, **scenario.protocol.model_dump(exclude={"esp_seq_limit"}))
    waits = [s.owner_wait for s in spreads if s.owner_wait is not None]
    # the owner's first send is at its next gossip tick: never later than one interval
    assert waits and max(waits) <= tconf.gossip_interval + 1e-9
    # one hop between hosts on one switch crosses two links of the topology's latency
    lat = scenario.resolved_topology.links[0].spec.latency_ms / 1e3
    hops = summarise(spreads)["hop"]
    assert 2 * lat <= hops["p50"] < 2 * lat + 0.001
    assert summarise(spreads)["handle"]["p90"] == pytest.approx(0.0, abs=1e-9)
    for s in spreads:  # each path to a last host adds up to that host's time
        if s.last_path:
            total = sum(e.held + e.hop + e.handle for e in s.last_path)
            assert total == pytest.approx(s.to_last, abs=1e-9)
            assert all(e.round >= 1 for e in s.last_path)


def test_the_agent_trace_line_is_what_the_reader_parses() -> None:
    from overlaysim.agent.daemon import _gossip_fields
    from overlaysim.core.wire import Entry, TableGossip
    from overlaysim.report.spread_trace import _entries

    e = Entry(
        network="app", table=E, key="c1", owner="h1", owner_epoch=3, ltime=7, deleted=True, value={}
    )
    other = Entry(
        network="app", table="other", key="x", owner="h1", owner_epoch=3, ltime=8, deleted=False,
        value={},
    )  # fmt: skip
    fields = _gossip_fields(TableGossip(source="h1", network="app", entries=(e, other)))
    assert json.loads(json.dumps(fields)) == fields  # one JSON log line
    assert fields["network"] == "app"
    assert _entries(fields["entries"]) == {("c1", "h1", True)}  # endpoints only


def test_a_folder_of_the_wrong_kind_is_one_clear_error(tmp_path: Path) -> None:
    from overlaysim.errors import UserError

    with pytest.raises(UserError, match="no agent-logs"):
        emu_trace(tmp_path)
