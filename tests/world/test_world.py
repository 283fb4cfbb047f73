"""The world over a recording backend: one match per step, the truth, the verbs called."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.steps import (
    Attach,
    Clear,
    Crash,
    Detach,
    Loss,
    Partition,
    Rate,
    Restart,
    Step,
)
from overlaysim.scenario.timeline import plan
from overlaysim.world.container import Container
from overlaysim.world.world import World, seed_hosts


class Recording:
    """A backend that does nothing but write down the verbs it was asked for."""

    records_commits = True
    steps_in_background = False

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def refused(self, exc: BaseException) -> str | None:
        return None

    def boot(self, order: Sequence[str], *, formed: bool, seeds: Callable[..., list[str]]):
        self.calls.append(("boot", tuple(order), formed))
        return dict.fromkeys(order, 0.0)

    def prepare_start(self, host: str) -> None:
        self.calls.append(("prepare_start", host))

    def start(self, host: str, seeds: list[str]) -> float:
        self.calls.append(("start", host, tuple(seeds)))
        return self.t

    def crash(self, host: str) -> None:
        self.calls.append(("crash", host))

    def leave(self, host: str) -> None:
        self.calls.append(("leave", host))

    def reserve(self, c: Container, network: str) -> str:
        return ""

    def attach(self, c: Container, networks: Sequence[str], first: Collection[str]):
        self.calls.append(("attach", c.name, tuple(networks), tuple(first)))
        return {n: f"10.0.0.{len(self.calls)}" for n in networks}

    def detach(
        self, c: Container, network: str, *, live: bool, last: bool, stay: bool = False
    ) -> None:
        self.calls.append(("detach", c.name, network, live, last, stay))

    def leave_network(self, host: str, network: str) -> None:
        self.calls.append(("leave_network", host, network, self.t))

    def each_host(self, fn: Callable[[Any], None], items: Iterable[Any], host: Any) -> None:
        for item in items:
            fn(item)

    def impair(self, kind: str, value: float, link: Any, jitter_ms: float) -> None:
        self.calls.append(("impair", kind, value, link))

    def clear(self, kind: Any, link: Any) -> None:
        self.calls.append(("clear", kind, link))

    def partition(self, groups: list[list[str]]) -> None:
        self.calls.append(("partition", groups))

    def heal(self) -> None:
        self.calls.append(("heal",))

    def rotate_keys(self, hosts: list[str]) -> dict[str, Any] | None:
        return None


SCENARIO = {
    "name": "world",
    "duration": 60,
    "topology": {"generator": "star", "hosts": 3},
    "networks": [{"name": "web", "subnet": "10.10.0.0/24"}],
    "containers": [{"name": "c1", "host": "h1", "networks": ["web"]}],
    "events": [
        {"at": 1, "action": "loss", "percent": 30, "link": ["h2", "s1"]},
        {"at": 10, "action": "rate", "mbps": 5, "link": ["h2", "s1"], "duration": 10},
    ],
}


def _world() -> tuple[World, Recording, Any]:
    sc = validate_scenario(SCENARIO)
    backend = Recording()
    world = World(sc, backend, tracker=ConvergenceTracker())
    the_plan = plan(sc)
    world.boot(the_plan)
    return world, backend, the_plan


def test_the_planned_end_of_a_timed_rate_clears_only_the_rate() -> None:
    world, backend, the_plan = _world()
    assert [type(s) for s in the_plan.steps] == [Loss, Rate, Clear]
    end = the_plan.steps[2]
    assert end == Clear(at=20.0, origin=1, link=("h2", "s1"), kind="rate")
    assert end.describe() == {"at": 20.0, "action": "clear", "link": ["h2", "s1"], "kind": "rate"}
    for step in the_plan.steps:
        world.apply(step)
    assert backend.calls[-1] == ("clear", "rate", ("h2", "s1"))
    assert world.impairments == {("loss", ("h2", "s1")): 30.0}


def test_a_full_clear_removes_every_kind_on_the_link() -> None:
    world, backend, _ = _world()
    world.apply(Loss(at=1, percent=5, link=("h2", "s1")))
    world.apply(Rate(at=1, mbps=5, link=("h2", "s1")))
    world.apply(Loss(at=1, percent=2))
    world.apply(Clear(at=2, link=("h2", "s1")))
    assert backend.calls[-1] == ("clear", None, ("h2", "s1"))
    assert world.impairments == {("loss", None): 2.0}


def test_commit_targets_are_the_hosts_attached_and_up() -> None:
    world, backend, _ = _world()

    def at(step: Step) -> None:  # each step at its own instant (a host attached at a
        backend.t = step.at  # commit's instant would be one of its targets)
        world.apply(step)

    at(Attach(at=1, container="c2", host="h2", network="web"))
    at(Crash(at=2, host="h1"))
    at(Attach(at=3, container="c3", host="h3", network="web"))
    assert world.truth.targets("web") == ["h2", "h3"]
    # h1 back: its container is re-announced on web, h1 is a target again
    at(Restart(at=4, host="h1"))
    assert world.truth.targets("web") == ["h1", "h2", "h3"]
    rows = world.truth.tracker.finish(10.0)  # type: ignore[union-attr]
    got = [(r["key"], r["targets"]) for r in rows]
    assert got == [("c1", 1), ("c2", 2), ("c3", 2), ("c1", 3)]


def test_hosts_attached_at_the_same_instant_are_targets_of_each_others_commits() -> None:
    world, backend, _ = _world()
    backend.t = 5.0  # two attaches played one after the other, at one scenario instant
    world.apply(Attach(at=5, container="c2", host="h2", network="web"))
    world.apply(Attach(at=5, container="c3", host="h3", network="web"))
    backend.t = 6.0
    world.apply(Attach(at=6, container="c4", host="h1", network="web"))
    rows = world.truth.tracker.finish(10.0)  # type: ignore[union-attr]
    # c1 (boot, t=0) is older than h2 and h3 on web; c2 waits for h3 as c3 for h2
    assert [(r["key"], r["targets"]) for r in rows] == [("c1", 1), ("c2", 3), ("c3", 3), ("c4", 3)]


class Slow(Recording):
    """Attaching takes wall time, as in the emulator (the clock moves 0.5 s per call)."""

    records_commits = False  # commits come from the agents, later

    def attach(self, c: Container, networks: Sequence[str], first: Collection[str]):
        self.t += 0.5
        return super().attach(c, networks, first)


def test_the_initial_containers_are_one_instant_even_when_attaching_takes_time() -> None:
    sc = validate_scenario(
        {**SCENARIO, "containers": [{"per_host": 1, "prefix": "c", "networks": ["web"]}]}
    )
    backend = Slow()
    world = World(sc, backend, tracker=ConvergenceTracker())
    world.boot(plan(sc))
    assert backend.t == 1.5  # three attaches of 0.5 s each
    attaches = [r for r in world.events.rows if r[2] in ("container_attach", "net_attach")]
    assert len(attaches) == 6 and {r[0] for r in attaches} == {0.0}, attaches
    # so an agent's commit made while later hosts were still attaching waits for them all
    world.commit(0.7, "h1", "web", "c-h1-1", "add")
    assert [r["targets"] for r in world.truth.tracker.finish(10.0)] == [3]  # type: ignore[union-attr]


def test_detach_of_the_last_container_leaves_the_network() -> None:
    world, backend, _ = _world()
    world.apply(Attach(at=1, container="c2", host="h1", network="web"))
    world.apply(Detach(at=2, container="c1"))
    assert backend.calls[-1] == ("detach", "c1", "web", True, False, False)
    world.apply(Detach(at=3, container="c2", network="web"))
    assert backend.calls[-1] == ("detach", "c2", "web", True, True, False)
    assert world.truth.targets("web") == []
    assert "c1" not in world.containers and "c2" not in world.containers


def test_skips_are_recorded_with_their_reason() -> None:
    world, _, _ = _world()
    world.apply(Crash(at=1, host="h2"))
    world.apply(Crash(at=2, host="h2"))
    world.apply(Detach(at=3, container="nope"))
    world.apply(Partition(at=4, groups=(("h1",),), rest=True))
    assert [(s["action"], s["reason"]) for s in world.skipped] == [
        ("crash", "host is not running"),
        ("detach", "no such container"),
    ]
    assert world.partition_groups == [["h1"], ["h2", "h3"]]


def test_seed_hosts_prefers_running_managers() -> None:
    assert seed_hosts("h3", ["h1"], {"h1", "h2"}) == ["h1"]
    assert seed_hosts("h3", ["h1"], {"h2", "h4", "h5", "h6"}) == ["h2", "h4", "h5"]
    assert seed_hosts("h1", ["h1"], {"h1"}) == []


# -- a host's delayed network leave: the world's rule, the same for every backend ---------


def _play(world: World, backend: Recording, steps: list[Step]) -> None:
    """What a driver does with the world's timeline (the backend's clock follows it)."""
    for at, work in world.timeline(steps):
        backend.t = max(backend.t, at)
        work()


def _net_rows(world: World) -> list[tuple[float, str, str]]:
    return [(r[0], r[1], r[2]) for r in world.events.rows if r[2] in ("net_attach", "net_detach")]


def _leaves(backend: Recording) -> list[tuple[Any, ...]]:
    return [c for c in backend.calls if c[0] == "leave_network"]


def test_a_delayed_leave_is_the_worlds_call_at_its_time() -> None:
    world, backend, _ = _world()
    backend.t = 1.0
    world.detach("c1", None, leave_after=0.5)
    # unplugged now, the host kept on the network: the backend is not told when
    assert backend.calls[-1] == ("detach", "c1", "web", True, True, True)
    assert _leaves(backend) == [] and world.truth.on_network("h1", "web")
    _play(world, backend, [])
    assert _leaves(backend) == [("leave_network", "h1", "web", 1.5)]
    assert _net_rows(world)[-1] == (1.5, "h1", "net_detach")
    assert not world.truth.on_network("h1", "web")


def test_an_attach_before_the_leave_or_at_its_instant_keeps_the_host_on_the_network() -> None:
    for attach_at in (1.2, 1.5):  # the leave is due at 1.5: the same instant counts
        world, backend, _ = _world()
        backend.t = 1.0
        world.detach("c1", None, leave_after=0.5)
        before = _net_rows(world)
        _play(world, backend, [Attach(at=attach_at, container="c2", host="h1", network="web")])
        # the host was still on the network: no join, no leave, nothing new to record
        assert ("attach", "c2", ("web",), ()) in backend.calls, attach_at
        assert _leaves(backend) == [], attach_at
        assert _net_rows(world) == before, attach_at
        assert world.truth.on_network("h1", "web")


def test_a_host_that_goes_down_drops_its_pending_leave() -> None:
    world, backend, _ = _world()
    backend.t = 1.0
    world.detach("c1", None, leave_after=0.5)
    _play(world, backend, [Crash(at=1.2, host="h1"), Restart(at=1.4, host="h1")])
    assert _leaves(backend) == []  # the crash took the host off every network
    assert [r for r in _net_rows(world) if r[0] > 1.0] == []


def test_a_leave_due_with_nothing_else_comes_after_a_step_of_the_same_time() -> None:
    world, backend, _ = _world()
    backend.t = 1.0
    world.detach("c1", None, leave_after=0.5)
    _play(world, backend, [Loss(at=1.5, percent=1)])
    kinds = [c[0] for c in backend.calls[-2:]]
    assert kinds == ["impair", "leave_network"]
