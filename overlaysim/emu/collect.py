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
no ``entry_commit``: it closes nothing.

Runs with services (the truth holds ``service_tasks`` rows) also replay the service-DNS
metrics through the simulator's :class:`~overlaysim.metrics.dns.DnsTracker`: each
``entry_seen`` line of the endpoints table that carries the entry's ``value`` is a table
event of that host, ``service_tasks`` is a change of the truth (with the targets the world
named), a crash or leave is ``host_gone`` and an agent's ``start`` line (a new boot,
empty tables) is ``host_back``. Without values in the logs the DNS rows are not made. Times become seconds since scenario start
(``t - t0``; every agent and the runner read the same monotonic clock), and only lines
in ``[0, t_end]`` count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from overlaysim.core.endpoint import ENDPOINTS
from overlaysim.core.events import EntryEvent, EntryEventKind
from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.metrics.dns import DnsTracker
from overlaysim.metrics.lag import TimerLate
from overlaysim.metrics.records import (
    DOWN_KINDS,
    HOLD_EVENTS_MAX_HOSTS,
    MEMBER_KINDS,
    UP_KINDS,
    EventKind,
    EventLog,
)
from overlaysim.metrics.traffic import TrafficCounter
from overlaysim.metrics.truth import Truth

_UP = frozenset(str(k) for k in UP_KINDS)
_DOWN = frozenset(str(k) for k in DOWN_KINDS)
_MEMBER = frozenset(str(k) for k in MEMBER_KINDS)
_TRUTH = _UP | _DOWN | {str(EventKind.NET_ATTACH), str(EventKind.NET_DETACH)}
#: Log kinds that matter here; others (entry_seen, attach, reconcile...) are skipped.
_AGENT = _MEMBER | {"entry_commit", "entry_programmed", "traffic"}
#: More kinds a run with services replays (the service-DNS metrics).
_DNS_AGENT = frozenset({"entry_seen", "start"})
_SERVICE_TASKS = str(EventKind.SERVICE_TASKS)
_SEEN_KINDS = {
    "add": EntryEventKind.CREATE,
    "update": EntryEventKind.UPDATE,
    # a newer version with the same content: the simulator's directories see it too
    "refresh": EntryEventKind.REFRESH,
    "delete": EntryEventKind.DELETE,
}

#: Why a run with services has no ``dns`` rows when its agents logged no entry values.
NO_DNS_VALUES = (
    "not measured: the agents' entry_seen lines carry no entry value "
    "(service DNS needs the endpoint entries' name fields)"
)


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
    #: Service-DNS rows (runs with services whose agents logged entry values), else None.
    dns: list[dict[str, object]] | None = None
    #: Why ``dns`` is None in a run with services ("" otherwise).
    dns_note: str = ""


def collect(
    truth: EventLog,
    logs: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    t0: float,
    t_end: float,
) -> Collected:
    """Merge ``truth`` (scenario time) with the agents' ``logs`` (monotonic time)."""
    items: list[tuple[float, int, int, Any]] = []
    dns = DnsTracker() if any(row[2] == _SERVICE_TASKS for row in truth.rows) else None
    truth_kinds = _TRUTH | {_SERVICE_TASKS} if dns is not None else _TRUTH
    agent_kinds = _AGENT | _DNS_AGENT if dns is not None else _AGENT
    retime, removals = _change_times(truth, logs, t0) if dns is not None else ({}, [])
    # Ground truth before agent lines at equal times: an attach precedes its commit.
    for i, row in enumerate(truth.rows):
        if row[2] in truth_kinds:
            items.append((retime.get(i, row[0]), 0, i, row))
    for k, removal in enumerate(removals):  # a removed task address leaves the tables
        items.append((removal[0], 0, len(truth.rows) + k, removal))
    seq = 0
    timer_late: list[TimerLate] = []
    for lines in logs.values():
        for line in lines:
            kind = line.get("kind")
            if kind not in agent_kinds and kind != "timer_lag":
                continue
            t = float(line["t"]) - t0
            if t < 0 or t > t_end:
                continue
            if kind == "timer_lag":
                late = tuple(float(ms) / 1e3 for ms in line.get("late_ms") or ())
                timer_late.append(TimerLate(t, str(line.get("node", "")), late))
                continue
            seq += 1
            # An agent's "start" is stamped with the time the runner records as its
            # node_restart: the new boot (empty tables) comes first at equal times.
            items.append((t, -1 if kind == "start" else 1, seq, line))
    items.sort(key=lambda it: (it[0], it[1], it[2]))

    events = EventLog()
    events.rows.extend(truth.rows)
    tracker = ConvergenceTracker()
    fold = Truth(tracker)
    traffic = _Traffic()
    holds = len(logs) <= HOLD_EVENTS_MAX_HOSTS  # entry_held rows: small runs only
    valued = 0  # entry_seen lines that carried a value
    for t, source, _, item in items:
        if source == 0 and len(item) == 4:  # a removal (see _change_times)
            if dns is not None:
                dns.removed(t, item[1], item[2], item[3])
            continue
        if source == 0:
            _, node, kind, subject, network = item[:5]
            fold.fold(t, kind, node=node, subject=subject, network=network)
            if dns is not None:
                if kind == _SERVICE_TASKS:
                    # the world's targets (the hosts on the network once the step was
                    # done), as the simulator's tracker got them
                    detail = json.loads(item[7] or "{}")
                    targets = detail.get("targets", fold.targets(network))
                    dns.change(t, network, subject, detail.get("ips", []), targets)
                elif kind in _DOWN:
                    dns.host_gone(t, subject)
            continue
        kind = item["kind"]
        node = str(item.get("node", ""))
        if kind == "entry_seen":
            ev = _seen_event(item)
            if ev is not None and dns is not None:
                valued += "value" in item
                dns.host_event(t, node, ev)
        elif kind == "start":
            if dns is not None:
                dns.host_back(node)
        elif kind in _MEMBER:
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
        dns=dns.finish() if dns is not None and valued else None,
        dns_note=NO_DNS_VALUES if dns is not None and not valued else "",
    )


def _change_times(
    truth: EventLog, logs: Mapping[str, Iterable[Mapping[str, Any]]], t0: float
) -> tuple[dict[int, float], list[tuple[float, str, str, str]]]:
    """When each ``service_tasks`` row's change reached the tables, and when each address
    it removed left them.

    The simulator commits a step's tasks at the step's instant, the row's own time. The
    emulator places them one by one (an agent request each), so a change is timed at the
    last owner commit of its tasks (``add`` for the ``added``, ``delete`` for the
    ``removed``), looked for from the row's time until the service's next row; and each
    removed address gets its own start, its delete commit (for ``DnsTracker.removed``).
    A change no commit made (a crash) keeps the row's time. Returns (row index -> time,
    [(time, network, service, ip)] removals)."""
    commits: dict[tuple[str, str, str], list[float]] = {}
    for lines in logs.values():
        for line in lines:
            if line.get("kind") == "entry_commit":
                k = (str(line.get("network")), str(line.get("key")), str(line.get("op")))
                commits.setdefault(k, []).append(float(line["t"]) - t0)
    rows = [(i, r) for i, r in enumerate(truth.rows) if r[2] == _SERVICE_TASKS]
    out: dict[int, float] = {}
    removals: list[tuple[float, str, str, str]] = []
    for j, (i, row) in enumerate(rows):
        t, network, service = row[0], row[4], row[3]
        detail = json.loads(row[7] or "{}")
        until = next(
            (r[0] for _, r in rows[j + 1 :] if (r[4], r[3]) == (network, service)), math.inf
        )
        last = t
        for key in detail.get("added", []):
            c = _first(commits.get((network, key, "add"), []), t, until)
            last = max(last, c) if c is not None else last
        for key, ip in (detail.get("removed") or {}).items():
            c = _first(commits.get((network, key, "delete"), []), t, until)
            if c is not None:
                last = max(last, c)
                removals.append((c, network, service, ip))
        if last != t:
            out[i] = last
    return out, removals


def _first(times: list[float], start: float, until: float) -> float | None:
    """The earliest of ``times`` in ``[start, until)``, or None."""
    inside = [c for c in times if start <= c < until]
    return min(inside) if inside else None


def _seen_event(line: Mapping[str, Any]) -> EntryEvent | None:
    """The endpoint-table event an ``entry_seen`` line describes (a create or update
    only with its value; a delete needs none)."""
    kind = _SEEN_KINDS.get(str(line.get("op", "")))
    value = line.get("value", {} if kind is EntryEventKind.DELETE else None)
    if line.get("table") != ENDPOINTS or not isinstance(value, dict) or kind is None:
        return None
    return EntryEvent(
        kind,
        str(line.get("network", "")),
        ENDPOINTS,
        str(line.get("key", "")),
        str(line.get("owner", "")),
        {str(k): str(v) for k, v in value.items()},
    )


class _Traffic:
    """Per-node per-second bins and per-kind totals from ``traffic`` log lines.

    A line carries counts since the agent's previous line; it is binned at its own
    time (the lines come every second, so a bin holds about one line per node).
    """

    def __init__(self) -> None:
        self.counter = TrafficCounter()  # the simulator's bins and rows, fed per line
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
        self.counter.add_counts(t, node, counts)
        for kind, values in (line.get("by_type") or {}).items():
            self.counter.add_counts(t, node, [int(v) for v in list(values)[:4]], str(kind))

    def rows(self) -> list[dict[str, object]]:
        return self.counter.rows()

    def kind_rows(self) -> list[dict[str, object]]:
        return self.counter.kind_rows()
