"""The simulator's side of :mod:`overlaysim.metrics.spread`: replay a results folder.

An ``overlaysim sim`` folder keeps no per-datagram record, so its trace is rebuilt by
replaying the manifest's scenario and seed (the simulator is deterministic) with an
observer that sees every datagram. The emulator's side reads agent logs
(:func:`overlaysim.report.spread_trace.emu_trace`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from overlaysim.core.events import EntryEventKind
from overlaysim.core.wire import TableGossip
from overlaysim.metrics.spread import Commit, Datagram, Seen, Trace, commits_from_events

__all__ = ["sim_trace"]


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
    from overlaysim.sim.runner import run_observed

    manifest = json.loads((folder / "manifest.json").read_text())
    scenario = validate_scenario(manifest["scenario"], source=str(folder / "manifest.json"))
    tr = Trace()
    world = run_observed(scenario, int(manifest["seed"]), lambda inner: _Tap(inner, tr))
    tr.commits = [
        Commit(float(r[0]), r[1], r[4], r[5], r[6])
        for r in world.events.rows
        if r[2] == "entry_commit"
    ]
    folder_commits = commits_from_events(folder)
    same = [(c.t, c.key, c.op) for c in folder_commits] == [(c.t, c.key, c.op) for c in tr.commits]
    return tr, {"replay_matches_folder": same}
