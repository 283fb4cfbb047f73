"""Regression: a timed impairment ends only its own kind.

An untimed ``loss`` on a link followed by a timed ``rate`` on the same link: when the
rate ends, the loss must stay. (It used to be cleared with the rate: the lossy host's
suspicions dropped to zero once the rate step ended.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from overlaysim.scenario.loader import validate_scenario
from overlaysim.sim.runner import run_simulation

RATE_END = 20.0


def _scenario(*, with_rate: bool) -> dict[str, Any]:
    events: list[dict[str, Any]] = [
        {"at": 1, "action": "loss", "percent": 40, "link": ["h2", "s1"]}
    ]
    if with_rate:
        events.append(
            {"at": 10, "action": "rate", "mbps": 100, "link": ["h2", "s1"], "duration": 10}
        )
    return {
        "name": "loss-then-timed-rate",
        "seed": 3,
        "duration": 60,
        "topology": {"generator": "star", "hosts": 5},
        "networks": [{"name": "web", "subnet": "10.10.0.0/24"}],
        "events": events,
        "measure": {"probes": False},
    }


def _suspicions_of_h2_after(folder: Path, t: float) -> int:
    ev = pd.read_csv(folder / "events.csv", keep_default_na=False)
    sel = (ev["kind"] == "member_suspect") & (ev["subject"] == "h2") & (ev["t"] > t)
    return int(sel.sum())


def test_loss_survives_the_end_of_a_timed_rate_on_the_same_link(tmp_path: Path) -> None:
    plain, rated = tmp_path / "loss-only", tmp_path / "loss-then-rate"
    run_simulation(validate_scenario(_scenario(with_rate=False)), plain, progress=False)
    run_simulation(validate_scenario(_scenario(with_rate=True)), rated, progress=False)
    baseline = _suspicions_of_h2_after(plain, RATE_END)
    after = _suspicions_of_h2_after(rated, RATE_END)
    assert baseline > 5, "the 40% loss should make peers suspect h2 often"
    # The rate only slows h2's link a little: suspicions continue at a similar pace.
    assert after > baseline / 2, (
        f"loss on h2's link vanished when the rate ended ({after} vs {baseline})"
    )
