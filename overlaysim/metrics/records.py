"""The record tables every backend produces, and a small log to build the events table.

A table is described once here (:data:`TABLES`): its file name, its columns with their
types, and the order rows are written in. The writer, the reader and the metrics all
use these schemas, so a column cannot be spelled two ways. The full reference, with
definitions, is ``docs/results.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from overlaysim.core.events import MemberEvent

ColumnType = Literal["float", "int", "str", "bool", "nfloat"]
"""``nfloat`` is a float that may be missing (written as an empty cell, read as NaN)."""


@dataclass(frozen=True, slots=True)
class TableSchema:
    """One CSV table of a results folder."""

    name: str
    columns: tuple[tuple[str, ColumnType], ...]
    #: Rows are stably sorted by these columns before writing, so the order in which
    #: a backend happened to collect them (agents report in any order) does not matter.
    sort_by: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def types(self) -> dict[str, ColumnType]:
        return dict(self.columns)


class EventKind(StrEnum):
    """Every value of the ``kind`` column of ``events.csv``."""

    # ground truth, recorded by the runner
    SCENARIO = "scenario"
    NODE_START = "node_start"
    NODE_CRASH = "node_crash"
    NODE_RESTART = "node_restart"
    NODE_LEAVE = "node_leave"
    NODE_JOIN = "node_join"
    NET_ATTACH = "net_attach"
    NET_DETACH = "net_detach"
    PARTITION = "partition"
    HEAL = "heal"
    CONTAINER_ATTACH = "container_attach"
    CONTAINER_DETACH = "container_detach"
    ROTATE_KEYS = "rotate_keys"  # detail: generation, primary key tag, hosts, took_s
    # a service's live task set changed (subject = service; detail: ips)
    SERVICE_TASKS = "service_tasks"
    #: A service's published ports and task command; ``detail.run`` says whether the
    #: backend ran them (the emulator) or only recorded them (simulator, dry run).
    SERVICE_SPEC = "service_spec"
    # membership views, reported by agents (node = observer, subject = observed)
    MEMBER_JOIN = "member_join"
    MEMBER_SUSPECT = "member_suspect"
    MEMBER_ALIVE = "member_alive"
    MEMBER_DEAD = "member_dead"
    MEMBER_LEAVE = "member_leave"
    MEMBER_UPDATE = "member_update"
    # table facts
    ENTRY_COMMIT = "entry_commit"
    # node now holds (add) or no longer holds (delete) an endpoint entry: only in runs
    # of at most HOLD_EVENTS_MAX_HOSTS hosts (what ``overlaysim animate`` draws)
    ENTRY_HELD = "entry_held"


#: ``entry_held`` rows grow with hosts x entries x changes (millions at 1,000 hosts),
#: so only runs this small record them; an animation of more hosts is unreadable anyway.
HOLD_EVENTS_MAX_HOSTS = 64


#: Lifecycle kinds that bring a host up / take it down (subject = host).
UP_KINDS = frozenset({EventKind.NODE_START, EventKind.NODE_JOIN, EventKind.NODE_RESTART})
DOWN_KINDS = frozenset({EventKind.NODE_CRASH, EventKind.NODE_LEAVE})
#: Membership views reported by agents.
MEMBER_KINDS = frozenset(k for k in EventKind if k.value.startswith("member_"))
#: Membership views saying "the subject is alive".
ALIVE_VIEW_KINDS = frozenset(
    {EventKind.MEMBER_JOIN, EventKind.MEMBER_ALIVE, EventKind.MEMBER_UPDATE}
)

EVENTS = TableSchema(
    "events",
    (
        ("t", "float"),
        ("node", "str"),
        ("kind", "str"),
        ("subject", "str"),
        ("network", "str"),
        ("key", "str"),
        ("op", "str"),
        ("detail", "str"),
    ),
    sort_by=("t",),
)
CONVERGENCE = TableSchema(
    "convergence",
    (
        ("t_commit", "float"),
        ("owner", "str"),
        ("network", "str"),
        ("key", "str"),
        ("op", "str"),
        ("targets", "int"),
        ("converged_t", "nfloat"),
        ("latency_s", "nfloat"),
        ("status", "str"),
    ),
    sort_by=("t_commit",),
)
TRAFFIC = TableSchema(
    "traffic",
    (
        ("t", "int"),
        ("node", "str"),
        ("bytes_sent", "int"),
        ("msgs_sent", "int"),
        ("bytes_recv", "int"),
        ("msgs_recv", "int"),
    ),
    sort_by=("t", "node"),
)
TRAFFIC_KINDS = TableSchema(
    "traffic_kinds",
    (
        ("kind", "str"),
        ("bytes_sent", "int"),
        ("msgs_sent", "int"),
        ("bytes_recv", "int"),
        ("msgs_recv", "int"),
    ),
    sort_by=("kind",),
)
REACHABILITY = TableSchema(
    "reachability",
    (
        ("t", "float"),
        ("src", "str"),
        ("dst", "str"),
        ("network", "str"),
        ("expected", "bool"),
        ("reachable", "bool"),
        ("sites", "str"),
        ("rtt_ms", "nfloat"),
    ),
    sort_by=("t", "src", "dst", "network"),
)
THROUGHPUT = TableSchema(
    "throughput",
    (
        ("src", "str"),
        ("dst", "str"),
        ("proto", "str"),
        ("overlay_bps", "nfloat"),
        ("underlay_bps", "nfloat"),
        ("ratio", "nfloat"),
        ("reason", "str"),
    ),
    sort_by=("src", "dst", "proto"),
)

#: Service DNS (``metrics/dns.py``): one row per change of a service's live task set
#: (``dns_convergence_s``) and per task address a change removed (``stale_dns_window_s``).
#: ``tasks``: live tasks after the change; ``targets``: the running hosts attached to the
#: network at the change (those waited for).
DNS = TableSchema(
    "dns",
    (
        ("metric", "str"),
        ("t", "float"),
        ("network", "str"),
        ("service", "str"),
        ("ip", "str"),
        ("tasks", "int"),
        ("targets", "int"),
        ("value_s", "nfloat"),
        ("status", "str"),
    ),
    sort_by=("t", "metric", "service", "ip"),
)

#: Load-balancing probe (``measure.lb_probe``, emulation only): ``kind`` ``task`` rows
#: name the service's live tasks when the probe ran (``answer`` is the task), ``connection``
#: rows say which task answered connection ``seq`` ("" when it failed). ``metrics/lbspread.py``
#: turns them into ``lb_spread``.
LB_PROBE = TableSchema(
    "lb_probe",
    (
        ("t", "float"),
        ("service", "str"),
        ("client", "str"),
        ("vip", "str"),
        ("port", "int"),
        ("kind", "str"),
        ("seq", "int"),
        ("answer", "str"),
    ),
    sort_by=("kind", "seq", "answer"),
)

#: The tables every results folder holds.
TABLES: dict[str, TableSchema] = {
    s.name: s for s in (EVENTS, CONVERGENCE, TRAFFIC, TRAFFIC_KINDS, REACHABILITY, THROUGHPUT)
}
#: Tables a folder holds only when the run had what they measure (``dns``: services;
#: ``lb_probe``: an emulation with ``measure.lb_probe``).
OPTIONAL_TABLES: dict[str, TableSchema] = {DNS.name: DNS, LB_PROBE.name: LB_PROBE}
#: Every table a folder may hold.
ALL_TABLES: dict[str, TableSchema] = {**TABLES, **OPTIONAL_TABLES}

#: Throughput reason the simulator writes (it has no data plane to measure).
NOT_MEASURED_BY_SIM = "not measured by the simulator"


def detail_json(detail: Any) -> str:
    """Encode a ``detail`` cell: compact JSON with sorted keys, or "" for None."""
    if detail is None or detail == "":
        return ""
    if isinstance(detail, str):
        return detail
    return json.dumps(detail, sort_keys=True, separators=(",", ":"))


class EventLog:
    """Accumulates ``events.csv`` rows in the order they happen.

    A runner calls :meth:`add` for ground truth and :meth:`member` for each membership
    event an agent reports. Unknown kinds raise ``ValueError`` (a runner bug).
    """

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: list[tuple[float, str, str, str, str, str, str, str]] = []

    def add(
        self,
        t: float,
        kind: str,
        *,
        node: str = "",
        subject: str = "",
        network: str = "",
        key: str = "",
        op: str = "",
        detail: Any = None,
    ) -> None:
        """Append one event; ``detail`` may be a JSON-able object or a JSON string."""
        kind = EventKind(kind).value
        self.rows.append((float(t), node, kind, subject, network, key, op, detail_json(detail)))

    def member(self, t: float, observer: str, event: MemberEvent) -> None:
        """Record a core :class:`MemberEvent` seen by ``observer`` as ``member_<kind>``."""
        self.add(t, f"member_{event.kind.value}", node=observer, subject=event.node)

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows given as mappings (e.g. collected from remote agents)."""
        for r in rows:
            self.add(
                r["t"],
                r["kind"],
                node=r.get("node", ""),
                subject=r.get("subject", ""),
                network=r.get("network", ""),
                key=r.get("key", ""),
                op=r.get("op", ""),
                detail=r.get("detail"),
            )

    def __len__(self) -> int:
        return len(self.rows)
