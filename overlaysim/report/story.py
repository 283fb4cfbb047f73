"""What an animation shows: one run's events.csv turned into a sequence of frames.

A *story* follows one thing through a run — an endpoint entry (who holds it), a crashed
host (who suspects it, who declared it dead) or a joining host (who knows it) — and
says, at each frame time, the state of every host, the impairments on the links, the
active partition and how far convergence has got. Nothing here draws: the frames are
plain data (``overlaysim.report.animate`` draws them), so they are tested on their own.

Frame times are the times something changed (every event of the story, every scenario
step) plus a regular clock tick, so a burst of gossip within milliseconds gets one frame
per change (slow motion) and a quiet minute passes in a few frames.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from overlaysim.errors import UserError
from overlaysim.metrics.groundtruth import Liveness
from overlaysim.metrics.membership import failure_detections, join_visibilities
from overlaysim.metrics.records import HOLD_EVENTS_MAX_HOSTS, EventKind
from overlaysim.metrics.results import Run
from overlaysim.scenario.topologies import TopologyDoc
from overlaysim.scenario.topology import Link, LinkSpec, Topology

#: At most this many frames (change times are binned beyond it).
MAX_FRAMES = 240
#: Seconds shown before the story's first event and after its last.
LEAD_S = 1.0
TAIL_S = 2.0
#: Names listed in an error message before "... and N more".
MAX_LISTED = 12

#: Host states with their legend text, per story kind (order = legend order).
STATES: dict[str, tuple[tuple[str, str], ...]] = {
    "entry": (
        ("holds", "holds the entry"),
        ("waiting", "on the network, not yet"),
        ("off", "not on the network"),
        ("down", "down"),
    ),
    "crash": (
        ("alive", "sees it alive"),
        ("suspect", "suspects it"),
        ("dead", "declared it dead"),
        ("subject", "crashed host"),
        ("down", "down"),
    ),
    "join": (
        ("knows", "knows it"),
        ("unaware", "does not know it yet"),
        ("subject", "joining host"),
        ("down", "down"),
    ),
}


@dataclass(frozen=True, slots=True)
class Frame:
    """The picture at one time ``t`` (seconds since the run started)."""

    t: float
    states: Mapping[str, str]  # host -> state (a key of STATES[kind])
    link_labels: Mapping[tuple[str, str], str]  # impaired links -> "loss 5%"...
    banner: str  # impairments on every link, partition; "" if none
    status: str  # convergence so far, e.g. "converged in 9.0 ms"


@dataclass(frozen=True, slots=True)
class Story:
    """Everything the animation needs: title, topology, legend and frames."""

    kind: str  # entry | crash | join
    title: str
    topology: Topology
    frames: tuple[Frame, ...]
    t_start: float
    t_end: float
    markers: tuple[tuple[float, str], ...]  # scenario steps in the window: (t, label)

    @property
    def legend(self) -> tuple[tuple[str, str], ...]:
        return STATES[self.kind]


# --- topology -------------------------------------------------------------------------


def run_topology(run: Run) -> Topology:
    """The underlay the run used, from its manifest (resolved, so every run has one)."""
    scenario = run.manifest.get("scenario") or {}
    topo = scenario.get("topology")
    if not isinstance(topo, dict) or "links" not in topo:
        raise UserError(f"{run.path}: manifest.json has no resolved scenario.topology")
    doc = TopologyDoc.model_validate(topo)
    d = doc.defaults
    links = tuple(
        Link(
            a=lk.a,
            b=lk.b,
            spec=LinkSpec(
                latency_ms=d.latency_ms if lk.latency_ms is None else lk.latency_ms,
                bandwidth_mbps=d.bandwidth_mbps if lk.bandwidth_mbps is None else lk.bandwidth_mbps,
                loss_pct=d.loss_pct if lk.loss_pct is None else lk.loss_pct,
            ),
        )
        for lk in doc.links
    )
    return Topology(
        name=doc.name or "topology", hosts=doc.hosts, switches=doc.switches, links=links
    )


# --- impairments ----------------------------------------------------------------------


def _fmt_num(v: float) -> str:
    return f"{v:g}"


def _impairment_text(step: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, label) of a loss/delay/rate step."""
    a = step.get("action")
    if a == "loss":
        return "loss", f"loss {_fmt_num(float(step['percent']))}%"
    if a == "delay":
        jitter = step.get("jitter_ms")
        j = f" ±{_fmt_num(float(jitter))}" if jitter else ""
        return "delay", f"+{_fmt_num(float(step['ms']))}{j} ms"
    if a == "rate":
        return "rate", f"{_fmt_num(float(step['mbps']))} Mbit/s"
    return None


class _Impairments:
    """Replays loss/delay/rate/clear/partition/heal steps; answers labels at a time."""

    def __init__(self, topology: Topology, steps: list[tuple[float, dict[str, Any]]]):
        self._links = {tuple(sorted((lk.a, lk.b))): lk for lk in topology.links}
        self._steps = steps

    def at(self, t: float) -> tuple[dict[tuple[str, str], str], str]:
        every: dict[str, tuple[str, float]] = {}  # kind -> (label, until)
        per: dict[tuple[str, str], dict[str, tuple[str, float]]] = {}
        partition = ""
        for ts, step in self._steps:
            if ts > t:
                break
            a = step.get("action")
            link = step.get("link")
            target = per.setdefault(tuple(sorted(link)), {}) if link else every
            if a == "clear":
                if link:
                    per.pop(tuple(sorted(link)), None)
                else:
                    every.clear()
                    per.clear()
            elif a == "partition":
                groups = step.get("groups") or []
                partition = " | ".join(" ".join(g) for g in groups)
                if step.get("rest"):
                    partition += " | the rest"
            elif a == "heal":
                partition = ""
            else:
                imp = _impairment_text(step)
                if imp is not None:
                    dur = step.get("duration")
                    until = ts + float(dur) if dur else math.inf
                    target[imp[0]] = (imp[1], until)
        labels: dict[tuple[str, str], str] = {}
        for key, lk in self._links.items():
            if lk.spec.loss_pct > 0:
                labels[key] = f"loss {_fmt_num(lk.spec.loss_pct)}%"
        for key, kinds in per.items():
            texts = [label for label, until in kinds.values() if t < until]
            if texts:
                labels[key] = ", ".join(texts)
        banner = [label for label, until in every.values() if t < until]
        if banner:  # an impairment of every link is drawn on every link too
            for key in self._links:
                labels[key] = ", ".join(filter(None, (labels.get(key), *banner)))
        parts = []
        if banner:
            parts.append("every link: " + ", ".join(banner))
        if partition:
            parts.append("partition: " + partition)
        return labels, "   ".join(parts)


# --- frame times ------------------------------------------------------------------------


def _tick(span: float) -> float:
    """A clock step giving at most about 60 ticks over ``span`` seconds."""
    for step in (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0):
        if span / step <= 60:
            return step
    return span / 60


def frame_times(changes: Iterable[float], t0: float, t1: float) -> list[float]:
    """Each change time in [t0, t1] plus a regular tick, at most MAX_FRAMES (binned)."""
    step = _tick(t1 - t0)
    ticks = [t0 + i * step for i in range(int((t1 - t0) / step) + 1)]
    inner = sorted({round(c, 6) for c in changes if t0 <= c <= t1})
    room = MAX_FRAMES - len(ticks)
    if len(inner) > room > 0:
        # Too many changes: keep the last change time of each of `room` equal bins.
        width = (t1 - t0) / room
        binned: dict[int, float] = {}
        for c in inner:
            binned[min(int((c - t0) / width), room - 1)] = c
        inner = sorted(binned.values())
    return sorted({round(t, 6) for t in ticks} | set(inner) | {round(t1, 6)})


# --- the three stories ------------------------------------------------------------------


def _listing(names: Iterable[str]) -> str:
    names = sorted(set(names))
    if not names:
        return "none"
    head = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return head + (f" ... and {more} more" if more > 0 else "")


def _scenario_steps(events: pd.DataFrame) -> list[tuple[float, dict[str, Any]]]:
    rows = events[events["kind"] == EventKind.SCENARIO]
    out = []
    for t, detail in zip(rows["t"], rows["detail"], strict=True):
        try:
            step = json.loads(detail) if detail else {}
        except ValueError:
            continue
        if isinstance(step, dict):
            out.append((float(t), step))
    return out


_MARKED = {"crash", "restart", "leave", "join", "partition", "heal", "loss", "delay", "rate"}


def _markers(steps: list[tuple[float, dict[str, Any]]], t0: float, t1: float):
    out = []
    for t, step in steps:
        a = step.get("action")
        if a in _MARKED and t0 <= t <= t1:
            who = step.get("host") or ""
            out.append((t, f"{a} {who}".strip()))
    return tuple(out)


def _duration(run: Run) -> float:
    scenario = run.manifest.get("scenario") or {}
    d = scenario.get("duration")
    if d is None and len(run.events):
        return float(run.events["t"].max())
    return float(d or 0.0)


def _fmt_s(v: float) -> str:
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def _networks(events: pd.DataFrame) -> set[str]:
    return set(events.loc[events["network"] != "", "network"])


def _entry_story(run: Run, key: str, network: str | None, topo: Topology) -> Story:
    ev = run.events
    commits = ev[ev["kind"] == EventKind.ENTRY_COMMIT]
    nets = _networks(ev)
    if network is not None and network not in nets:
        raise UserError(f"{run.path}: no network {network!r}; the run has: {_listing(nets)}")
    mine = commits[commits["key"] == key]
    if network is not None:
        mine = mine[mine["network"] == network]
    if mine.empty:
        pool = commits if network is None else commits[commits["network"] == network]
        where = f" in network {network!r}" if network else ""
        raise UserError(
            f"{run.path}: no entry {key!r}{where}; the run has: {_listing(pool['key'])}"
        )
    if network is None:
        network = sorted(set(mine["network"]))[0]
        mine = mine[mine["network"] == network]
    held = ev[
        (ev["kind"] == EventKind.ENTRY_HELD) & (ev["network"] == network) & (ev["key"] == key)
    ]
    if not (ev["kind"] == EventKind.ENTRY_HELD).any():
        raise UserError(
            f"{run.path}: events.csv has no entry_held rows (recorded only in runs of at most "
            f"{HOLD_EVENTS_MAX_HOSTS} hosts, by this version of overlaysim): run it again"
        )
    duration = _duration(run)
    t0 = max(0.0, float(mine["t"].min()) - LEAD_S)
    last = max(float(mine["t"].max()), float(held["t"].max()) if len(held) else 0.0)
    conv = run.convergence
    conv = conv[(conv["network"] == network) & (conv["key"] == key)]
    done = conv["converged_t"].dropna()
    if len(done):
        last = max(last, float(done.max()))
    t1 = min(duration, last + TAIL_S) if duration > 0 else last + TAIL_S
    live = Liveness(ev)
    attach = ev[
        ev["kind"].isin((EventKind.NET_ATTACH, EventKind.NET_DETACH)) & (ev["network"] == network)
    ]
    steps = _scenario_steps(ev)
    imp = _Impairments(topo, steps)

    changes = list(held["t"]) + list(attach["t"]) + list(mine["t"]) + [t for t, _ in steps]
    changes += list(done)
    changes += list(ev.loc[ev["kind"].isin(_LIFE), "t"])
    frames = []
    hold_rows = list(zip(held["t"], held["node"], held["op"], strict=True))
    att_rows = list(zip(attach["t"], attach["node"], attach["kind"], strict=True))
    commit_rows = list(zip(mine["t"], mine["node"], mine["op"], strict=True))
    conv_rows = list(
        zip(
            conv["t_commit"],
            conv["op"],
            conv["owner"],
            conv["status"],
            conv["latency_s"],
            strict=True,
        )
    )
    for t in frame_times(changes, t0, t1):
        holds: dict[str, bool] = {}
        for tc, node, op in commit_rows:  # the owner holds its own entry from the commit
            if tc <= t:
                holds[node] = op == "add"
        for th, node, op in hold_rows:
            if th <= t:
                holds[node] = op == "add"
        on: dict[str, bool] = {}
        for ta, node, kind in att_rows:
            if ta <= t:
                on[node] = kind == EventKind.NET_ATTACH
        states = {}
        for h in topo.hosts:
            if not live.is_up(h, t):
                states[h] = "down"
            elif holds.get(h):
                states[h] = "holds"
            else:
                states[h] = "waiting" if on.get(h) else "off"
        labels, banner = imp.at(t)
        frames.append(Frame(t, states, labels, banner, _entry_status(conv_rows, t)))
    return Story(
        "entry",
        f"entry {key} on network {network}",
        topo,
        tuple(frames),
        t0,
        t1,
        _markers(steps, t0, t1),
    )


_LIFE = (
    EventKind.NODE_START,
    EventKind.NODE_JOIN,
    EventKind.NODE_RESTART,
    EventKind.NODE_CRASH,
    EventKind.NODE_LEAVE,
)


def _entry_status(conv_rows: list[tuple[Any, ...]], t: float) -> str:
    latest = None
    for row in conv_rows:
        if row[0] <= t:
            latest = row
    if latest is None:
        return ""
    tc, op, owner, status, latency = latest
    head = f"{op} by {owner} at {tc:.2f} s: "
    if status == "converged" and tc + float(latency) <= t:
        return head + f"every host on the network has it, converged in {_fmt_s(float(latency))}"
    if status == "superseded":
        return head + "superseded by a newer commit"
    return head + "spreading..."


def _member_story(run: Run, kind: str, host: str, topo: Topology) -> Story:
    ev = run.events
    duration = _duration(run)
    live = Liveness(ev)
    if kind == "crash":
        table = failure_detections(ev, duration, live)
        what = "crash"
    else:
        table = join_visibilities(ev, duration, live)
        what = "join or restart"
    rows = table[table["node"] == host]
    if rows.empty:
        raise UserError(
            f"{run.path}: no {what} of {host!r}; hosts with one: {_listing(table['node'])}"
        )
    row = rows.iloc[0]
    tx = float(row["t"])
    if kind == "crash":
        reached = [
            (float(row["first_suspect_s"]), "first suspicion"),
            (float(row["all_dead_s"]), "every live host declared it dead"),
        ]
    else:
        reached = [(float(row["visibility_s"]), "every live host knows it")]
    reached = [(tx + v, text) for v, text in reached if not math.isnan(v)]
    end = max([tx] + [r for r, _ in reached])
    t0 = max(0.0, tx - LEAD_S)
    t1 = min(float(row["window_end"]), end + TAIL_S)
    if duration > 0:
        t1 = min(t1, duration)
    t1 = max(t1, min(tx + TAIL_S, duration) if duration > 0 else tx + TAIL_S)
    views = ev[
        ev["kind"].str.startswith("member_") & (ev["subject"] == host) & (ev["node"] != host)
    ]
    view_rows = list(zip(views["t"], views["node"], views["kind"], strict=True))
    steps = _scenario_steps(ev)
    imp = _Impairments(topo, steps)
    changes = list(views["t"]) + [t for t, _ in steps] + [r for r, _ in reached]
    changes += list(ev.loc[ev["kind"].isin(_LIFE), "t"])
    frames = []
    for t in frame_times(changes, t0, t1):
        view: dict[str, str] = {}
        for tv, node, k in view_rows:
            if tv > t:
                break
            if tv < tx:  # only what was learned since the crash (or in this life) counts
                continue
            table_ = _CRASH_VIEW if kind == "crash" else _JOIN_VIEW
            view[node] = table_.get(k, view.get(node, ""))
        states = {}
        for h in topo.hosts:
            if h == host:
                up = live.is_up(h, t)
                if kind == "crash":
                    states[h] = "subject" if t >= tx and not up else "alive"
                else:
                    states[h] = "subject" if up else "down"
            elif not live.is_up(h, t):
                states[h] = "down"
            elif kind == "crash":
                states[h] = view.get(h) or "alive"
            else:
                states[h] = view.get(h) or "unaware"
        labels, banner = imp.at(t)
        if t < tx:
            status = f"{host} {'crashes' if kind == 'crash' else 'starts'} at {tx:.2f} s"
        else:
            done = [f"{text} after {_fmt_s(r - tx)}" for r, text in reached if r <= t]
            status = "; ".join(done) or (
                "waiting for the first suspicion..." if kind == "crash" else "spreading..."
            )
        frames.append(Frame(t, states, labels, banner, status))
    title = f"crash of {host}" if kind == "crash" else f"{host} joins"
    return Story(kind, title, topo, tuple(frames), t0, t1, _markers(steps, t0, t1))


_CRASH_VIEW = {
    str(EventKind.MEMBER_SUSPECT): "suspect",
    str(EventKind.MEMBER_DEAD): "dead",
    str(EventKind.MEMBER_LEAVE): "dead",
    str(EventKind.MEMBER_ALIVE): "alive",
    str(EventKind.MEMBER_JOIN): "alive",
    str(EventKind.MEMBER_UPDATE): "alive",
}
_JOIN_VIEW = {
    str(EventKind.MEMBER_JOIN): "knows",
    str(EventKind.MEMBER_ALIVE): "knows",
    str(EventKind.MEMBER_UPDATE): "knows",
    str(EventKind.MEMBER_DEAD): "unaware",
    str(EventKind.MEMBER_LEAVE): "unaware",
}


def build_story(
    run: Run,
    *,
    entry: str | None = None,
    crash: str | None = None,
    join: str | None = None,
    network: str | None = None,
) -> Story:
    """The story of exactly one of ``entry`` (with optional ``network``), ``crash``, ``join``.

    Raises :class:`UserError` with one line listing what the run has when the entry,
    host or network is not in it.
    """
    chosen = [x for x in (entry, crash, join) if x is not None]
    if len(chosen) != 1:
        raise UserError("animate: give exactly one of --entry KEY, --crash HOST, --join HOST")
    topo = run_topology(run)
    if network is not None and entry is None:
        raise UserError("animate: --network goes with --entry")
    if entry is not None:
        return _entry_story(run, entry, network, topo)
    host = crash if crash is not None else join
    if host not in topo.hosts:
        raise UserError(f"{run.path}: no host {host!r}; the run has: {_listing(topo.hosts)}")
    return _member_story(run, "crash" if crash is not None else "join", str(host), topo)


__all__ = ["Frame", "Story", "build_story", "frame_times", "run_topology"]
