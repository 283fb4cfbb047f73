"""How one table entry spreads, hop by hop: the same decomposition for both backends.

Endpoint convergence (``convergence.csv``) and the service-DNS windows (``dns.csv``)
give one number per change: from the commit until the last host holds it. When the two
backends disagree on that number, this module says where the time goes. From a
:class:`Trace` (commits, each host's table events, and each table-gossip datagram sent
and received, all in scenario seconds) it measures per commit:

* ``owner_wait``: from the commit to the owner's first gossip datagram carrying it (the
  owner waits for its next gossip tick; both runtimes run the same core, so this is
  ``U(0, gossip_interval)`` plus any lateness of the tick);
* ``hop``: per datagram that carried the entry and arrived, receive time minus send
  time (network, delay line, and in the emulator the receiver's event loop);
* ``handle``: from the datagram that first brought the entry to a host to that host's
  table event (core processing; ~0 in the simulator);
* ``forward_wait``: from a host's table event to its own first datagram carrying the
  entry (its next gossip tick);
* ``hops_to_last``: the depth, in the infection tree (owner = 0), of the last host to
  hold the entry, and ``to_last``: commit → last host's table event;
* ``sent``/``lost``: datagrams carrying the entry sent, and those never received.

Only the table gossip is followed; a host that got the entry another way (a bulk sync
or a join sync) has no hop and counts in ``other_path``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from overlaysim.metrics.stats import pct

__all__ = [
    "Commit",
    "CommitSpread",
    "Datagram",
    "Edge",
    "Seen",
    "Trace",
    "decompose",
    "summarise",
]


#: Two sends of one holder further apart than this belong to different gossip rounds
#: (rounds are at least the shortest profile's gossip interval, 0.1 s, apart).
ROUND_GAP_S = 0.05


@dataclass(frozen=True, slots=True)
class Commit:
    """An owner committed ``op`` (``add`` or ``delete``) of ``key`` at ``t``."""

    t: float
    owner: str
    network: str
    key: str
    op: str


@dataclass(frozen=True, slots=True)
class Seen:
    """``node``'s tables emitted an event for ``key`` at ``t`` (``op`` add or delete)."""

    t: float
    node: str
    network: str
    key: str
    op: str


@dataclass(frozen=True, slots=True)
class Datagram:
    """One table-gossip datagram sent (``rx`` False) or received (``rx`` True) by
    ``node``; ``peer`` is the other end (None when the sender's log does not say) and
    ``entries`` the ``(key, owner, deleted)`` it carried."""

    t: float
    node: str
    peer: str | None
    network: str
    entries: frozenset[tuple[str, str, bool]]
    rx: bool


@dataclass(slots=True)
class Trace:
    """Everything :func:`decompose` reads, in scenario seconds."""

    commits: list[Commit] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    datagrams: list[Datagram] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Edge:
    """One step of the path to the last host: ``src`` held the entry ``held`` seconds
    before the send that reached ``dst`` (its ``round``-th send carrying it, 1 = the
    first), the datagram took ``hop`` and ``dst``'s table event came ``handle`` later."""

    src: str
    dst: str
    held: float
    round: int
    hop: float
    handle: float


@dataclass(slots=True)
class CommitSpread:
    """The decomposition of one commit's spread (see the module docstring)."""

    commit: Commit
    owner_wait: float | None = None
    to_last: float | None = None
    hops_to_last: int | None = None
    reached: int = 0
    other_path: int = 0
    hops: list[float] = field(default_factory=list)
    handle: list[float] = field(default_factory=list)
    forward_wait: list[float] = field(default_factory=list)
    sent: int = 0
    lost: int = 0
    #: The datagrams that brought the entry to the last host (empty if not by gossip).
    last_path: list[Edge] = field(default_factory=list)


def decompose(trace: Trace, *, horizon: float = 10.0) -> list[CommitSpread]:
    """One :class:`CommitSpread` per commit of ``trace``, following each commit for at
    most ``horizon`` seconds (or until the same key's next commit)."""
    by_key: dict[tuple[str, str], list[Commit]] = {}
    for c in sorted(trace.commits, key=lambda c: c.t):
        by_key.setdefault((c.network, c.key), []).append(c)
    seen: dict[tuple[str, str, str], list[Seen]] = {}
    for s in sorted(trace.seen, key=lambda s: s.t):
        seen.setdefault((s.network, s.key, s.op), []).append(s)
    grams: dict[tuple[str, str], list[Datagram]] = {}
    for d in sorted(trace.datagrams, key=lambda d: d.t):
        for key, _owner, _deleted in d.entries:
            grams.setdefault((d.network, key), []).append(d)
    out = []
    for (network, key), commits in by_key.items():
        for i, c in enumerate(commits):
            until = commits[i + 1].t if i + 1 < len(commits) else c.t + horizon
            until = min(until, c.t + horizon)
            ident = (key, c.owner, c.op == "delete")
            gs = [
                d
                for d in grams.get((network, key), ())
                if c.t <= d.t < until and ident in d.entries
            ]
            ss = [s for s in seen.get((network, key, c.op), ()) if c.t <= s.t < until]
            out.append(_one(c, gs, ss))
    out.sort(key=lambda s: (s.commit.t, s.commit.key))
    return out


def _one(c: Commit, grams: Sequence[Datagram], seen: Sequence[Seen]) -> CommitSpread:
    sp = CommitSpread(c)
    first_seen: dict[str, float] = {}
    for s in seen:
        first_seen.setdefault(s.node, s.t)
    first_seen[c.owner] = c.t
    tx = [d for d in grams if not d.rx]
    rx = [d for d in grams if d.rx]
    sp.sent = len(tx)
    own = [d.t for d in tx if d.node == c.owner]
    sp.owner_wait = own[0] - c.t if own else None
    # each received datagram is matched with the latest earlier send from its source to
    # it (to it when the log names the destination)
    tx_by_src: dict[str, list[Datagram]] = {}
    for d in tx:
        tx_by_src.setdefault(d.node, []).append(d)
    used: set[int] = set()
    first_rx: dict[str, tuple[float, str, float | None]] = {}
    for d in rx:
        sent_at: float | None = None
        cands = [
            t for t in tx_by_src.get(d.peer or "", ()) if t.t <= d.t and t.peer in (None, d.node)
        ]
        cands = [t for t in cands if id(t) not in used or t.peer is None]
        if cands:
            t = cands[-1]
            used.add(id(t))
            sp.hops.append(d.t - t.t)
            sent_at = t.t
        if d.node not in first_rx and d.peer is not None:
            first_rx[d.node] = (d.t, d.peer, sent_at)
    named = [d for d in tx if d.peer is not None]
    if named:  # a send without a matching receive was lost (or arrived after the horizon)
        sp.lost = len(named) - len(used & {id(d) for d in named})
    else:  # the sender does not name the destination: count receives against sends
        sp.lost = max(0, len(tx) - len(rx))
    depth: dict[str, int] = {c.owner: 0}
    for node, t in sorted(first_seen.items(), key=lambda kv: kv[1]):
        if node == c.owner:
            continue
        got = first_rx.get(node)
        if got is not None and got[0] <= t + 1e-9 and got[1] in depth:
            depth[node] = depth[got[1]] + 1
            sp.handle.append(t - got[0])
        else:
            sp.other_path += 1
        fwd = [d.t for d in tx_by_src.get(node, ()) if d.t >= t]
        if fwd:
            sp.forward_wait.append(fwd[0] - t)
    others = {n: t for n, t in first_seen.items() if n != c.owner}
    sp.reached = len(others)
    if others:
        last = max(others, key=lambda n: (others[n], n))
        sp.to_last = others[last] - c.t
        sp.hops_to_last = depth.get(last)
        if last in depth:
            sp.last_path = _path(last, c.owner, first_seen, first_rx, tx_by_src)
    return sp


def _path(
    last: str,
    owner: str,
    first_seen: dict[str, float],
    first_rx: dict[str, tuple[float, str, float | None]],
    tx_by_src: dict[str, list[Datagram]],
) -> list[Edge]:
    """The chain of datagrams that brought the entry from the owner to ``last``."""
    out: list[Edge] = []
    node = last
    while node != owner:
        t_rx, src, t_tx = first_rx[node]
        if t_tx is None:
            return []
        held = first_seen[src]
        times = sorted(d.t for d in tx_by_src.get(src, ()) if held <= d.t <= t_tx)
        # the sends of one gossip round leave in one burst (in the emulator spread over a
        # few ms by the process being descheduled): a new round starts after a gap
        rounds = 1 + sum(1 for a, b in zip(times, times[1:], strict=False) if b - a > ROUND_GAP_S)
        out.append(Edge(src, node, t_tx - held, rounds, t_rx - t_tx, first_seen[node] - t_rx))
        node = src
    out.reverse()
    return out


def _stats(values: Iterable[float | int | None]) -> dict[str, float | int | None]:
    v = sorted(float(x) for x in values if x is not None)
    if not v:
        return {"n": 0, "p50": None, "p90": None, "mean": None}
    return {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "mean": sum(v) / len(v)}


def summarise(spreads: Sequence[CommitSpread], op: str | None = None) -> dict[str, dict]:
    """Distributions of each component over ``spreads`` (of one ``op`` if given)."""
    sel = [s for s in spreads if op is None or s.commit.op == op]
    sent = sum(s.sent for s in sel)
    lost = sum(s.lost for s in sel)
    return {
        "commits": {"n": len(sel)},
        "owner_wait": _stats(s.owner_wait for s in sel),
        "hop": _stats(h for s in sel for h in s.hops),
        "handle": _stats(h for s in sel for h in s.handle),
        "forward_wait": _stats(h for s in sel for h in s.forward_wait),
        "hops_to_last": _stats(s.hops_to_last for s in sel),
        "to_last": _stats(s.to_last for s in sel),
        "sent_per_commit": _stats(s.sent for s in sel),
        # the path to the last host: time spent holding (waiting for ticks), on the wire,
        # and which send of each holder got through (1 = its first)
        "path_held": _stats(sum(e.held for e in s.last_path) for s in sel if s.last_path),
        "path_wire": _stats(sum(e.hop + e.handle for e in s.last_path) for s in sel if s.last_path),
        "path_round": _stats(e.round for s in sel for e in s.last_path),
        "loss": {"sent": sent, "lost": lost, "fraction": lost / sent if sent else None},
        "other_path": {"n": sum(s.other_path for s in sel)},
    }


def commits_from_events(folder: Path) -> list[Commit]:
    """The ``entry_commit`` rows of a results folder's ``events.csv``."""
    with (folder / "events.csv").open() as f:
        return [
            Commit(float(r["t"]), r["node"], r["network"], r["key"], r["op"])
            for r in csv.DictReader(f)
            if r["kind"] == "entry_commit"
        ]
