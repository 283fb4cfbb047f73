"""A commit's targets are one definition for both backends: the hosts attached to its
network and up at the commit's instant, including those attached later in that instant.

The simulator plays the boot burst (every initial container at t=0) one fact after
another at the same instant; the emulator's attaches take wall time and come before its
agents' commits. The fold of the truth (:class:`~overlaysim.metrics.truth.Truth`) must
give both the same targets.
"""

from __future__ import annotations

from pathlib import Path

from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.metrics.truth import Truth

HOSTS = ["h1", "h2", "h3", "h4", "h5"]


def _targets(rows: list[dict[str, object]]) -> dict[str, object]:
    return {str(r["key"]): r["targets"] for r in rows}


def test_the_simulators_and_the_emulators_boot_burst_give_the_same_targets() -> None:
    # the simulator: at t=0, host after host: its network attach, then its commit
    sim = Truth(ConvergenceTracker())
    for h in HOSTS:
        sim.fold(0.0, "node_start", subject=h)
    for i, h in enumerate(HOSTS, 1):
        sim.fold(0.0, "net_attach", node=h, network="web")
        sim.commit(0.0, h, "web", f"c{i}", "add")
    # the emulator: the attaches stamped when each host's began, the commits later
    emu = Truth(ConvergenceTracker())
    for h in HOSTS:
        emu.fold(0.0, "node_start", subject=h)
    for i, h in enumerate(HOSTS):
        emu.fold(0.01 * i, "net_attach", node=h, network="web")
    for i, h in enumerate(HOSTS, 1):
        emu.commit(0.3 + 0.01 * i, h, "web", f"c{i}", "add")
    assert sim.tracker is not None and emu.tracker is not None
    want = {f"c{i}": len(HOSTS) for i in range(1, 6)}
    assert _targets(sim.tracker.finish(1.0)) == _targets(emu.tracker.finish(1.0)) == want


def test_a_host_that_is_down_or_attached_later_is_no_target() -> None:
    truth = Truth(ConvergenceTracker())
    truth.fold(0.0, "node_start", subject="h1")
    truth.fold(0.0, "net_attach", node="h1", network="web")
    truth.commit(0.0, "h1", "web", "c1", "add")
    truth.fold(0.0, "net_attach", node="h2", network="web")  # h2 is not up
    truth.fold(1.0, "node_start", subject="h3")
    truth.fold(1.0, "net_attach", node="h3", network="web")  # a later instant
    assert truth.tracker is not None
    (row,) = truth.tracker.finish(2.0)
    assert row["targets"] == 1 and row["status"] == "converged"


#: Five hosts, a container each on one network at t=0 (also run on both backends by
#: ``tests/emu/test_emu_runner.py``).
BURST = Path(__file__).with_name("boot-burst.yaml")


def test_a_simulated_boot_burst_targets_every_host(tmp_path: Path) -> None:
    from overlaysim.metrics.results import load_run
    from overlaysim.scenario.loader import load_scenario
    from overlaysim.sim.runner import run_simulation

    scenario = load_scenario(BURST)
    assert run_simulation(scenario, tmp_path / "run", progress=False) == "complete"
    conv = load_run(tmp_path / "run").convergence
    assert sorted(conv["key"]) == ["c1", "c2", "c3", "c4", "c5"]
    assert set(conv["targets"]) == {5}
    assert set(conv["status"]) == {"converged"}
