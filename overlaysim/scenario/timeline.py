"""Plan a scenario's timeline into concrete, ordered, typed steps that any backend applies.

Planning happens before anything runs: churn (a Poisson process) is expanded into
explicit :class:`~overlaysim.scenario.steps.Attach`/:class:`~overlaysim.scenario.steps.Detach`
steps with container names and hosts, and each timed impairment gets the matching
:class:`~overlaysim.scenario.steps.Clear` of its own kind. The plan depends only on the
scenario and its seed, so the simulator and the emulator play exactly the same timeline.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from overlaysim.scenario.expand import ContainerSpec, expand_containers
from overlaysim.scenario.schema import Scenario
from overlaysim.scenario.steps import (
    DOWN_STEPS,
    SERVICE_STEPS,
    UP_STEPS,
    Attach,
    Clear,
    Delay,
    Detach,
    Heal,
    Join,
    Loss,
    Rate,
    Restart,
    ServiceCreate,
    ServiceRm,
    ServiceScale,
    ServiceUpdate,
    Step,
    step_from_event,
)

__all__ = ["Plan", "Step", "plan"]


@dataclass(slots=True)
class Plan:
    """Initial containers, hosts that start at t=0, and the ordered steps."""

    containers: list[ContainerSpec]
    initial_hosts: list[str]
    steps: list[Step]

    @property
    def has_services(self) -> bool:
        """Whether any step creates or changes a service (the DNS metrics then apply)."""
        return any(isinstance(s, SERVICE_STEPS) for s in self.steps)


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
        if ev.action == "churn":
            continue  # expanded below, once up/down times are known
        step = step_from_event(ev, i)
        raw.append(step)
        if isinstance(step, Loss | Delay | Rate) and step.duration:
            end = min(step.at + step.duration, float(scenario.duration))
            raw.append(Clear(at=end, origin=i, link=step.link, kind=step.action))  # type: ignore[arg-type]

    # Host liveness along the timeline, to place churn only on running hosts.
    up_changes: list[tuple[float, str, bool]] = []
    for s in raw:
        if isinstance(s, (*DOWN_STEPS, *UP_STEPS)):
            up_changes.append((s.at, s.host, isinstance(s, UP_STEPS)))
    up_changes.sort(key=lambda x: x[0])

    def up_at(t: float) -> set[str]:
        up = set(initial_hosts)
        for at, h, is_up in up_changes:
            if at > t:
                break
            (up.add if is_up else up.discard)(h)
        return up

    for i, ev in events:
        if ev.action != "churn":
            continue
        raw.extend(_churn_steps(ev, i, rng, up_at, topo.hosts, scenario.duration))
    raw.sort(key=lambda s: (s.at, _order(s), s.origin))
    return Plan(containers=containers, initial_hosts=initial_hosts, steps=raw)


def _order(step: Step) -> int:
    """Within one instant: repair before breaking, lifecycle before endpoints."""
    match step:
        case Clear():
            return 0
        case Heal():
            return 1
        case Restart() | Join():
            return 2
        case Attach() | Detach() | ServiceCreate() | ServiceScale() | ServiceUpdate() | ServiceRm():
            return 4
        case _:
            return 5


def _churn_steps(
    ev: Any,
    origin: int,
    rng: random.Random,
    up_at: Callable[[float], set[str]],
    all_hosts: list[str],
    duration: float,
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
            out.append(Detach(at=t, container=name, network=ev.network, origin=origin))
            continue
        candidates = [h for h in hosts if h in up]
        if not candidates:
            continue
        host = candidates[rng.randrange(len(candidates))]
        n += 1
        name = f"churn{origin}-{n}"
        live.append((name, host))
        out.append(Attach(at=t, container=name, host=host, network=ev.network, origin=origin))
    return out
