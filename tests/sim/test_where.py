"""bench/where.py: sampling where a run's time goes changes nothing and counts self time.

``bench/sim_scale.py --where`` samples the interrupted stack a few hundred times per CPU
second. Its table is only worth reading if the sampled run is the same run (same
messages, same convergence), a sample is counted for the innermost named step (self
time, so nested steps are not counted twice), and the process's signal handling and
timer are as they were afterwards.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.timeline import plan
from overlaysim.sim.runner import SimWorld

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from where import OTHER, Sampler, protocol_sections  # noqa: E402

SCENARIO = {
    "name": "where",
    "seed": 3,
    "duration": 12,
    "profile": "lan",
    "boot": "formed",
    "topology": {"generator": "star", "hosts": 24},
    "networks": [{"name": "app", "subnet": "10.64.0.0/24", "attachable": True}],
    "containers": [{"per_host": 1, "networks": ["app"]}],
    "events": [
        {"at": 1, "action": "churn", "network": "app", "rate_per_s": 3, "duration": 8},
        {"at": 4, "action": "crash", "host": "h5"},
    ],
    "measure": {"probes": False},
}


def _run(sampler: Sampler | None):
    scenario = validate_scenario(SCENARIO)
    world = SimWorld(scenario, scenario.seed)
    world.start(plan(scenario, scenario.seed))
    if sampler is not None:
        sampler.start()
    try:
        world.env.run(until=scenario.duration)
    finally:
        if sampler is not None:
            sampler.stop()
    c = world.cluster
    counts = (c.messages_sent, c.messages_delivered, c.messages_lost, c.timers_fired)
    return world.tracker.finish(scenario.duration), counts


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        sum(range(200))


def test_sampled_run_is_the_same_run_and_samples_name_protocol_steps():
    before = signal.getsignal(signal.SIGPROF)
    plain = _run(None)
    sampler = protocol_sections()
    sampled = _run(sampler)
    assert sampled == plain
    assert any(r["status"] == "converged" for r in sampled[0])
    assert signal.getsignal(signal.SIGPROF) == before
    assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)

    rows = sampler.rows(10.0)
    assert sum(samples for _, _, samples in rows) > 0
    assert abs(sum(secs for _, secs, _ in rows) - 10.0) < 1e-9
    named = [label for label, _, _ in rows if label != OTHER]
    assert named, rows  # the run's time is spent in named steps, not outside them
    known = set(protocol_sections().sections.values())
    for label in named:
        assert label in known or (label.startswith("receive ") and label.endswith(" (rest)"))


def _inner() -> None:
    _burn(0.3)


def _outer() -> None:
    _burn(0.3)  # the outer step's own time
    _inner()  # counted for the inner step only


def test_a_sample_counts_for_the_innermost_named_step():
    sampler = Sampler({_outer.__code__: "outer", _inner.__code__: "inner"}, hz=500)
    sampler.start()
    try:
        _outer()
        first = sampler.window()
        _burn(0.3)  # no named step on the stack
    finally:
        sampler.stop()
    second = sampler.window()
    counts = sampler.counts
    # Windows split the samples between them (the progress lines' "busiest").
    assert OTHER not in first or first[OTHER] <= 2
    assert set(second) <= {OTHER, "inner"}  # after _outer returned: unnamed code only
    for label in counts:
        assert first.get(label, 0) + second.get(label, 0) == counts[label]
    total = sum(counts.values())
    assert total > 100
    # A third each (CPU-time samples, so other load on the machine does not move them).
    for label in ("outer", "inner", OTHER):
        assert 0.15 < counts.get(label, 0) / total < 0.5, counts
