"""Traces for :mod:`overlaysim.metrics.spread` from results folders of either backend.

* :func:`emu_trace`: an ``overlaysim run`` folder, from its agents' logs (``entry_seen``,
  and ``gossip_tx``/``gossip_rx`` when the run traced gossip, ``--trace-gossip``).
* :func:`overlaysim.sim.spread_replay.sim_trace` is the simulator's side: the ``report``
  layer may not import the simulator, so the replay lives there.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from overlaysim.errors import UserError
from overlaysim.metrics.spread import Datagram, Seen, Trace, commits_from_events

__all__ = ["emu_trace"]

_OPS = {"add": "add", "update": "add", "refresh": "add", "delete": "delete"}


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
    commits = commits_from_events(folder)
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
