"""``overlaysim animate`` on an emulation's results folder (real agents on Mininet).

A short emulated run (3 hosts, ``local`` timing, an entry on a network, a crash) must
record the same ``entry_held`` rows as the simulator (from the agents' programmed
kernel entries) and animate like a simulator folder. As root; about 30 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import emulation_or_skip
from PIL import Image

from overlaysim.emu.runner import run_emulation
from overlaysim.metrics.results import load_run
from overlaysim.report.animate import write_animation
from overlaysim.report.story import build_story
from overlaysim.scenario.loader import load_scenario

SCENARIO = """
name: animate-emu
seed: 1
duration: 12
profile: local
topology: {generator: star, hosts: 3}
networks:
  - {name: web, subnet: 10.60.0.0/24, attachable: true}
containers:
  - {name: c1, host: h1, networks: [web]}
  - {name: c2, host: h2, networks: [web]}
  - {name: c3, host: h3, networks: [web]}
events:
  - {at: 4, action: crash, host: h3}
"""


@pytest.mark.emu
def test_emulation_folder_animates_an_entry_and_a_crash(tmp_path: Path) -> None:
    emulation_or_skip()
    (tmp_path / "s.yaml").write_text(SCENARIO)
    out = tmp_path / "run"
    status = run_emulation(load_scenario(tmp_path / "s.yaml"), out, progress=False)
    assert status == "complete"
    run = load_run(out)
    assert run.manifest["backend"] == "emu"
    held = run.events.query("kind == 'entry_held' and key == 'c2'")
    assert set(held["node"]) >= {"h1", "h3"}  # both other hosts programmed c2

    story = build_story(run, entry="c2")
    last = story.frames[-1]
    assert last.states["h1"] == "holds" and last.states["h2"] == "holds"
    assert "converged in" in last.status
    crash = build_story(run, crash="h3")
    assert crash.frames[-1].states["h3"] == "subject"
    assert {crash.frames[-1].states[h] for h in ("h1", "h2")} <= {"suspect", "dead"}
    gif = write_animation(crash, tmp_path / "crash.gif")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames > 1
