"""Traces for :mod:`overlaysim.metrics.spread` from results folders of either backend.

* :func:`emu_trace`: an ``overlaysim run`` folder, from its agents' logs (``entry_seen``,
  and ``gossip_tx``/``gossip_rx`` when the run traced gossip, ``--trace-gossip``).
* :func:`sim_trace`: an ``overlaysim sim`` folder, by replaying its manifest's scenario and
  seed (the simulator is deterministic) with an observer that sees every datagram; the
  folder itself keeps no per-datagram record.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from overlaysim.core.events import EntryEventKind
from overlaysim.core.wire import TableGossip
from overlaysim.errors import UserError
from overlaysim.metrics.spread import Commit, Datagram, Seen, Trace

__all__ = ["emu_trace", "sim_trace"]

_OPS = {"add": "add", "update": "add", "refresh": "add", "delete": "delete"}


def _commits_from_events(folder: Path) -> list[Commit]:
    with (folder / "events.csv").open() as f:
        return [
            Commit(float(r["t"]), r["node"], r["network"], r["key"], r["op"])
            for r in csv.DictReader(f)
            if r["kind"] == "entry_commit"
        ]


def _entries(raw: list[list[Any]]) -> frozenset[tuple[str, str, bool]]:
    return frozenset((str(e[1]), str(e[2]), bool(e[4])) for e in raw if e[0] == "endpoints")


def emu_trace(folder: Path) -> tuple[Trace, dict[str, Any]]:
    """The trace of an emulation folder, from its agents' logs (scenario seconds)."""
    if not (folder / "agent-logs").is_dir():
        raise UserError(f"{folder}: no agent-logs/ (expected an `overlaysim run` results folder)")
    lines: list[dict[str, Any]] = []
    for path in sorted((folder / "agent-logs").glob("*.jsonl")):
        with path.open() as f:
            lines.extend(json.loads(x) for x in f if x.strip())
    commits = _commits_from_events(folder)
    # t0 is not in the manifest: every entry_commit row of events.csv is an agent line
    # shifted by it, so recover it from the matches.
    agent_commits = {
        (x["node"], x["network"], x["key"], x["op"]): x["t"]
        for x in lines
        if x.get("kind") == "entry_commit"
    }
    shifts = [
        agent_commits[k] - c.t
        for c in commits
        if (k := (c.owner, c.network, c.key, c.op)) in agent_commits
    ]
    if not shifts:
        raise UserError(f"{folder}: no entry_commit both in events.csv and in agent-logs")
    t0 = statistics.median(shifts)
    addr = {}
    for x in lines:
        if x.get("kind") == "start":
            addr[str(x["addr"])] = x["node"]
    tr = Trace(commits=commits)
    traced = 0
    programmed: dict[tuple[str, str, str, str], float] = {}
    for x in lines:
        kind, t = x.get("kind"), float(x["t"]) - t0
        if kind == "entry_seen" and x.get("table") == "endpoints" and x["op"] in _OPS:
            tr.seen.append(Seen(t, x["node"], x["network"], x["key"], _OPS[x["op"]]))
        elif kind == "entry_programmed":
            programmed.setdefault((x["node"], x["network"], x["key"], x["op"]), t)
        elif kind in ("gossip_tx", "gossip_rx"):
            traced += 1
            rx = kind == "gossip_rx"
            peer = x["src"] if rx else addr.get(str(x.get("dst")), str(x.get("dst")))
            ents = _entries(x.get("entries", []))
            if ents:
                tr.datagrams.append(Datagram(t, x["node"], peer, x["network"], ents, rx))
    # kernel programming after the table event (the emulator's "holds" is programmed)
    prog = []
    for s in tr.seen:
        p = programmed.get((s.node, s.network, s.key, s.op))
        if p is not None and p >= s.t:
            prog.append(p - s.t)
    return tr, {"t0": t0, "datagram_lines": traced, "programming": prog}


class _Tap:
    """A simulator observer that records the trace and forwards to the run's own."""

    def __init__(self, inner: Any, trace: Trace) -> None:
        self.inner = inner
        self.trace = trace

    def member_event(self, t: float, host: str, ev: Any) -> None:
        self.inner.member_event(t, host, ev)

    def entry_event(self, t: float, host: str, ev: Any) -> None:
        if ev.table == "endpoints":
            op = "delete" if ev.kind in (EntryEventKind.DELETE, EntryEventKind.TOMBSTONE) else "add"
            self.trace.seen.append(Seen(t, host, ev.network, ev.key, op))
        self.inner.entry_event(t, host, ev)

    def _gram(self, t: float, host: str, msg: Any, rx: bool, count: int = 1) -> None:
        if isinstance(msg, TableGossip):
            ents = frozenset(
                (e.key, e.owner, e.deleted) for e in msg.entries if e.table == "endpoints"
            )
            if ents:
                peer = msg.source if rx else None  # the driver's sent() has no destination
                d = Datagram(t, host, peer, msg.network, ents, rx)
                self.trace.datagrams.extend([d] * count)

    def sent(self, t: float, host: str, msg: Any, size: int, count: int = 1) -> None:
        self._gram(t, host, msg, False, count)  # one gossip round: count copies at once
        self.inner.sent(t, host, msg, size, count)

    def received(self, t: float, host: str, msg: Any, size: int) -> None:
        self._gram(t, host, msg, True)
        self.inner.received(t, host, msg, size)


def sim_trace(folder: Path) -> tuple[Trace, dict[str, Any]]:
    """Replay a simulator folder's scenario and seed, recording the trace."""
    from overlaysim.scenario.loader import validate_scenario
    from overlaysim.scenario.timeline import plan
    from overlaysim.sim.runner import SimWorld, frozen_heap

    manifest = json.loads((folder / "manifest.json").read_text())
    scenario = validate_scenario(manifest["scenario"], source=str(folder / "manifest.json"))
    seed = int(manifest["seed"])
    the_plan = plan(scenario, seed)
    world = SimWorld(scenario, seed, services=the_plan.has_services)
    tr = Trace()
    world.cluster.observer = _Tap(world.cluster.observer, tr)
    world.start(the_plan)
    with frozen_heap():
        world.env.run(until=float(scenario.duration))
    tr.commits = [
        Commit(float(r[0]), r[1], r[4], r[5], r[6])
        for r in world.events.rows
        if r[2] == "entry_commit"
    ]
    folder_commits = _commits_from_events(folder)
    same = [(c.t, c.key, c.op) for c in folder_commits] == [(c.t, c.key, c.op) for c in tr.commits]
    return tr, {"replay_matches_folder": same}
