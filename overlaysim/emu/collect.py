"""Agent logs to the results tables: events, endpoint convergence and traffic.

The runner records the ground truth as it plays the timeline (which hosts run, which
networks each host is attached to, partitions) in an
:class:`~overlaysim.metrics.records.EventLog`; each agent writes what it saw in its
JSON-lines log (``docs/agent.md``). :func:`collect` merges the two in time order and
feeds the same :class:`~overlaysim.metrics.convergence.ConvergenceTracker` the
simulator uses, with the same rules:

* an agent's ``entry_commit`` opens a commit whose targets are the hosts attached to
  that network and up at that moment, according to the ground truth replayed so far
  through the one fold of the truth (:class:`~overlaysim.metrics.truth.Truth`);
* ``entry_programmed`` (the remote endpoint's FDB and neighbour entries written to or
  removed from the kernel) is a target holding the entry in that state; in runs of at
  most ``HOLD_EVENTS_MAX_HOSTS`` hosts it is also kept as an ``entry_held`` event;
* a crash or leave (``node_gone``), or the host's last container leaving the network,
  stops the wait for that host.

``timer_lag`` lines (how late each agent's protocol timer fired) are kept apart, as
:class:`~overlaysim.metrics.lag.TimerLate` records for the fidelity guard
(:mod:`overlaysim.metrics.lag`).

A deletion that comes from dead-node cleanup is logged as ``entry_programmed`` with
no ``entry_commit``: it closes nothing. Times become seconds since scenario start
(``t - t0``; every agent and the runner read the same monotonic clock), and only lines
in ``[0, t_end]`` count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.metrics.lag import TimerLate
from overlaysim.metrics.records import (
    DOWN_KINDS,
    HOLD_EVENTS_MAX_HOSTS,
    MEMBER_KINDS,
    UP_KINDS,
    EventKind,
    EventLog,
)
from overlaysim.metrics.truth import Truth

_UP = frozenset(str(k) for k in UP_KINDS)
_DOWN = frozenset(str(k) for k in DOWN_KINDS)
_MEMBER = frozenset(str(k) for k in MEMBER_KINDS)
_TRUTH = _UP | _DOWN | {str(EventKind.NET_ATTACH), str(EventKind.NET_DETACH)}
#: Log kinds that matter here; others (entry_seen, attach, reconcile...) are skipped.
_AGENT = _MEMBER | {"entry_commit", "entry_programmed", "traffic"}


@dataclass(frozen=True, slots=True)
class Collected:
    """The tables built from the logs (rows as mappings or tuples, ready to write)."""

    events: list[tuple[float, str, str, str, str, str, str, str]]
    convergence: list[dict[str, object]]
    traffic: list[dict[str, object]]
    traffic_kinds: list[dict[str, object]]
    #: Messages sent and received in the window, over all agents.
    msgs_sent: int
    msgs_recv: int
    #: Every agent's ``timer_lag`` lines in the window, in time order.
    timer_late: list[TimerLate]


def collect(
    truth: EventLog,
    logs: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    t0: float,
    t_end: float,
) -> Collected:
    """Merge ``truth`` (scenario time) with the agents' ``logs`` (monotonic time)."""
    items: list[tuple[float, int, int, Any]] = []
    # Ground truth before agent lines at equal times: an attach precedes its commit.
    for i, row in enumerate(truth.rows):
        if row[2] in _TRUTH:
            items.append((row[0], 0, i, row))
    seq = 0
    timer_late: list[TimerLate] = []
    for lines in logs.values():
        for line in lines:
            kind = line.get("kind")
            if kind not in _AGENT and kind != "timer_lag":
                continue
            t = float(line["t"]) - t0
            if t < 0 or t > t_end:
                continue
            if kind == "timer_lag":
                late = tuple(float(ms) / 1e3 for ms in line.get("late_ms") or ())
                timer_late.append(TimerLate(t, str(line.get("node", "")), late))
                continue
            seq += 1
            items.append((t, 1, seq, line))
    items.sort(key=lambda it: (it[0], it[1], it[2]))

    events = EventLog()
    events.rows.extend(truth.rows)
    tracker = ConvergenceTracker()
    fold = Truth(tracker)
    traffic = _Traffic()
    holds = len(logs) <= HOLD_EVENTS_MAX_HOSTS  # entry_held rows: small runs only
    for t, source, _, item in items:
        if source == 0:
            _, node, kind, subject, network = item[:5]
            fold.fold(t, kind, node=node, subject=subject, network=network)
            continue
        kind = item["kind"]
        node = str(item.get("node", ""))
        if kind in _MEMBER:
            events.add(t, kind, node=node, subject=str(item.get("subject", "")))
        elif kind == "entry_commit":
            network, key, op = str(item["network"]), str(item["key"]), str(item["op"])
            events.add(t, kind, node=node, network=network, key=key, op=op)
            fold.commit(t, node, network, key, op)
        elif kind == "entry_programmed":
            network, key, op = str(item["network"]), str(item["key"]), str(item["op"])
            tracker.seen(t, node, network, key, op)
            if holds:
                events.add(t, "entry_held", node=node, network=network, key=key, op=op)
        else:
            traffic.add(t, node, item)
    return Collected(
        events=events.rows,
        convergence=tracker.finish(t_end),
        traffic=traffic.rows(),
        traffic_kinds=traffic.kind_rows(),
        msgs_sent=traffic.msgs_sent,
        msgs_recv=traffic.msgs_recv,
        timer_late=sorted(timer_late, key=lambda x: (x.t, x.node)),
    )


class _Traffic:
    """Per-node per-second bins and per-kind totals from ``traffic`` log lines.

    A line carries counts since the agent's previous line; it is binned at its own
    time (the lines come every second, so a bin holds about one line per node).
    """

    def __init__(self) -> None:
        self._bins: dict[tuple[int, str], list[int]] = {}
        self._kinds: dict[str, list[int]] = {}
        self.msgs_sent = 0
        self.msgs_recv = 0

    def add(self, t: float, node: str, line: Mapping[str, Any]) -> None:
        counts = [
            int(line.get("bytes_sent", 0)),
            int(line.get("msgs_sent", 0)),
            int(line.get("bytes_recv", 0)),
            int(line.get("msgs_recv", 0)),
        ]
        if not any(counts):
            return
        self.msgs_sent += counts[1]
        self.msgs_recv += counts[3]
        _accumulate(self._bins.setdefault((math.floor(t), node), [0, 0, 0, 0]), counts)
        for kind, values in (line.get("by_type") or {}).items():
            _accumulate(self._kinds.setdefault(str(kind), [0, 0, 0, 0]), values)

    def rows(self) -> list[dict[str, object]]:
        keys = ("bytes_sent", "msgs_sent", "bytes_recv", "msgs_recv")
        return [
            {"t": t, "node": node, **dict(zip(keys, c, strict=True))}
            for (t, node), c in sorted(self._bins.items())
        ]

    def kind_rows(self) -> list[dict[str, object]]:
        keys = ("bytes_sent", "msgs_sent", "bytes_recv", "msgs_recv")
        return [
            {"kind": kind, **dict(zip(keys, c, strict=True))}
            for kind, c in sorted(self._kinds.items())
        ]


def _accumulate(into: list[int], values: Iterable[Any]) -> None:
    for i, v in enumerate(values):
        if i < 4:
            into[i] += int(v)
