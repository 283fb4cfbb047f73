"""Plan a scenario's timeline into concrete, ordered steps that any backend applies.

Planning happens before anything runs: churn (a Poisson process) is expanded into
explicit attach/detach steps with container names and hosts, and timed impairments get
their matching ``clear`` step. The plan depends only on the scenario and its seed, so the
simulator and the emulator play exactly the same timeline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from overlaysim.scenario.expand import ContainerSpec, expand_containers
from overlaysim.scenario.schema import Scenario


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One thing to do at time ``at``.

    ``action`` is a scenario action name (loss, crash, attach, ...); ``params`` its fields
    (without ``at``/``action``); ``origin`` the index in ``events`` it comes from.
    """

    at: float
    action: str
    params: dict[str, Any] = field(default_factory=dict)
    origin: int = -1

    def describe(self) -> dict[str, Any]:
        return {"at": self.at, "action": self.action, **self.params}


@dataclass(slots=True)
class Plan:
    """Initial containers, hosts that start at t=0, and the ordered steps."""

    containers: list[ContainerSpec]
    initial_hosts: list[str]
    steps: list[Step]


def plan(scenario: Scenario, seed: int | None = None) -> Plan:
    """Expand ``scenario`` into a :class:`Plan` (deterministic in ``seed``)."""
    seed = scenario.seed if seed is None else seed
    rng = random.Random(f"timeline:{seed}")
    topo = scenario.resolved_topology
    containers = expand_containers(scenario)
    events = sorted(enumerate(scenario.events), key=lambda ie: (ie[1].at, ie[0]))
    # Hosts whose first lifecycle event is a join start later.
    late: set[str] = set()
    seen_host: set[str] = set()
    for _, ev in events:
        host = getattr(ev, "host", None)
        if ev.action in ("join", "crash", "restart", "leave") and host not in seen_host:
            seen_host.add(host)
            if ev.action == "join":
                late.add(host)
    initial_hosts = [h for h in topo.hosts if h not in late]

    raw: list[Step] = []
    for i, ev in events:
        params = ev.model_dump(mode="json", exclude={"at", "action"}, exclude_none=True)
        if ev.action == "churn":
            continue  # expanded below, once up/down times are known
        raw.append(Step(at=float(ev.at), action=ev.action, params=params, origin=i))
        dur = getattr(ev, "duration", None)
        if ev.action in ("loss", "delay", "rate") and dur:
            end = min(float(ev.at) + dur, float(scenario.duration))
            clear = {"link": params["link"]} if "link" in params else {}
            clear["only"] = ev.action
            raw.append(Step(at=end, action="clear", params=clear, origin=i))

    # Host liveness along the timeline, to place churn only on running hosts.
    up_changes: list[tuple[float, str, bool]] = []
    for s in raw:
        if s.action in ("crash", "leave"):
            up_changes.append((s.at, s.params["host"], False))
        elif s.action in ("restart", "join"):
            up_changes.append((s.at, s.params["host"], True))

    def up_at(t: float) -> set[str]:
        up = set(initial_hosts)
        for at, h, is_up in up_changes:
            if at > t:
                break
            (up.add if is_up else up.discard)(h)
        return up

    up_changes.sort(key=lambda x: x[0])
    for i, ev in events:
        if ev.action != "churn":
            continue
        raw.extend(_churn_steps(ev, i, rng, up_at, topo.hosts, scenario.duration))
    raw.sort(key=lambda s: (s.at, _ORDER.get(s.action, 5), s.origin))
    return Plan(containers=containers, initial_hosts=initial_hosts, steps=raw)


# Within one instant: repair before breaking, lifecycle before endpoints.
_ORDER = {"clear": 0, "heal": 1, "restart": 2, "join": 2, "attach": 4, "detach": 4}


def _churn_steps(
    ev: Any, origin: int, rng: random.Random, up_at, all_hosts, duration
) -> list[Step]:
    """A Poisson stream of attach/detach steps on one network.

    Each arrival attaches a new container on a random running host, or (with
    probability 1/2, when any churned container exists) detaches a random one.
    """
    hosts = list(ev.hosts or all_hosts)
    t = float(ev.at)
    end = min(float(ev.at) + ev.duration, float(duration))
    live: list[tuple[str, str]] = []  # (container, host)
    n = 0
    out: list[Step] = []
    while True:
        t += rng.expovariate(ev.rate_per_s)
        if t >= end:
            break
        up = up_at(t)
        running = [c for c in live if c[1] in up]
        if running and rng.random() < 0.5:
            name, host = running[rng.randrange(len(running))]
            live.remove((name, host))
            out.append(
                Step(
                    at=t,
                    action="detach",
                    params={"container": name, "network": ev.network},
                    origin=origin,
                )
            )
            continue
        candidates = [h for h in hosts if h in up]
        if not candidates:
            continue
        host = candidates[rng.randrange(len(candidates))]
        n += 1
        name = f"churn{origin}-{n}"
        live.append((name, host))
        out.append(
            Step(
                at=t,
                action="attach",
                params={"container": name, "host": host, "network": ev.network},
                origin=origin,
            )
        )
    return out
