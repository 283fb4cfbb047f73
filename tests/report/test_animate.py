"""``overlaysim animate``: stories built from a run's events.csv, and the files drawn.

One small simulated run (4 hosts, an entry committed on a network, a crash, loss on one
link) is made once; the stories are checked against the run's own tables
(convergence.csv, the failure-detection metrics), then a GIF and an HTML page are
written and opened. The emulation's log merge is checked to record the same
``entry_held`` rows the simulator does.
"""

from __future__ import annotations

import re

import pytest
from PIL import Image

from overlaysim.cli import main
from overlaysim.emu.collect import collect
from overlaysim.errors import UserError
from overlaysim.metrics.membership import failure_detections
from overlaysim.metrics.records import EventLog
from overlaysim.metrics.results import load_run
from overlaysim.report.animate import HOLD_END_S, layout, write_animation
from overlaysim.report.story import MAX_FRAMES, build_story, frame_times
from overlaysim.scenario.loader import load_scenario
from overlaysim.scenario.topology import Link, Topology
from overlaysim.sim.runner import run_simulation

SCENARIO = """
name: tiny
seed: 3
duration: 14
profile: local
topology: {generator: star, hosts: 4}
networks:
  - {name: web, subnet: 10.10.0.0/24, attachable: true}
  - {name: db, subnet: 10.20.0.0/24, attachable: true}
containers:
  - {name: c1, host: h1, networks: [web]}
  - {name: c2, host: h2, networks: [web, db]}
  - {name: c3, host: h3, networks: [web]}
events:
  - {at: 1, action: loss, percent: 10, link: [h1, s1]}
  - {at: 3, action: crash, host: h4}
  - {at: 6, action: attach, container: c4, host: h3, network: web}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("animate")
    (d / "tiny.yaml").write_text(SCENARIO)
    out = d / "run"
    assert run_simulation(load_scenario(d / "tiny.yaml"), out, seed=3) == "complete"
    return load_run(out)


def test_entry_story_follows_the_holders_and_ends_with_the_measured_convergence(run) -> None:
    story = build_story(run, entry="c2", network="web")
    first, last = story.frames[0], story.frames[-1]
    assert first.t == story.t_start == 0.0
    assert first.states["h2"] == "holds"  # the owner holds its entry from the commit
    assert [last.states[h] for h in ("h1", "h2", "h3")] == ["holds"] * 3
    assert last.states["h4"] == "off"  # not on web
    # the convergence shown is the one convergence.csv measured
    conv = run.convergence.query("network == 'web' and key == 'c2'").iloc[0]
    assert f"converged in {conv['latency_s'] * 1000:.1f} ms" in last.status
    # before every host held it, some frame shows a target still waiting
    assert any("waiting" in f.states.values() for f in story.frames)
    # the loss on h1-s1 is on that link only, from t=1
    assert all(not f.link_labels for f in story.frames if f.t < 1)
    assert last.link_labels == {("h1", "s1"): "loss 10%"}
    times = [f.t for f in story.frames]
    assert times == sorted(times)


def test_entry_story_picks_a_network_when_not_given(run) -> None:
    assert build_story(run, entry="c2").title == "entry c2 on network db"


def test_crash_story_shows_suspicion_then_death_at_the_measured_times(run) -> None:
    story = build_story(run, crash="h4")
    fd = failure_detections(run.events, 14.0).iloc[0]
    before = [f for f in story.frames if f.t < 3.0]
    after = story.frames[-1]
    assert before and all(set(f.states.values()) == {"alive"} for f in before)
    assert after.states["h4"] == "subject"
    assert {after.states[h] for h in ("h1", "h2", "h3")} == {"dead"}
    assert f"after {fd['all_dead_s']:.2f} s" in after.status
    # every observer went through suspicion or straight to dead, never back to alive
    seen = {h: [f.states[h] for f in story.frames if f.t >= 3.0] for h in ("h1", "h2", "h3")}
    for states in seen.values():
        assert states[-1] == "dead" and "alive" not in states[states.index("dead") :]


def test_join_story_on_a_restart_free_run_lists_nothing(run) -> None:
    with pytest.raises(UserError, match=r"no join or restart of 'h4'; hosts with one: none"):
        build_story(run, join="h4")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"entry": "c9"}, r"no entry 'c9'; the run has: c1, c2, c3, c4$"),
        ({"entry": "c1", "network": "db"}, r"no entry 'c1' in network 'db'; the run has: c2$"),
        ({"entry": "c1", "network": "x"}, r"no network 'x'; the run has: db, web$"),
        ({"crash": "h1"}, r"no crash of 'h1'; hosts with one: h4$"),
        ({"crash": "h7"}, r"no host 'h7'; the run has: h1, h2, h3, h4$"),
        ({"crash": "h4", "join": "h4"}, r"exactly one of"),
    ],
)
def test_unknown_names_get_one_line_listing_what_the_run_has(run, kwargs, message) -> None:
    with pytest.raises(UserError, match=message) as info:
        build_story(run, **kwargs)
    assert "\n" not in str(info.value)


def test_cli_reports_unknown_names_and_bad_output_without_traceback(run, tmp_path, capsys) -> None:
    assert main(["animate", str(run.path), "--crash", "h9", "--out", str(tmp_path / "a.gif")]) == 2
    assert main(["animate", str(run.path), "--crash", "h4", "--out", str(tmp_path / "a.mp4")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("overlaysim: error:") and "the run has: h1, h2, h3, h4" in err[0]
    assert "expected a file name ending in .gif or .html" in err[1]
    assert not (tmp_path / "a.gif").exists()


def test_gif_has_one_image_per_frame_plus_a_pause_and_stays_small(run, tmp_path) -> None:
    story = build_story(run, crash="h4")
    out = write_animation(story, tmp_path / "crash.gif", fps=4)
    with Image.open(out) as im:
        assert im.format == "GIF"
        # Pillow folds identical consecutive frames into one longer frame: count time
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
        assert sum(durations) == (len(story.frames) + int(HOLD_END_S * 4)) * 250
        assert durations[-1] >= HOLD_END_S * 1000  # the last picture stays on screen
        assert im.size == (960, 540)
    assert out.stat().st_size < 2_000_000
    assert [p.name for p in tmp_path.iterdir()] == ["crash.gif"]  # no temporary left


def test_html_is_self_contained(run, tmp_path) -> None:
    assert (
        main(["animate", str(run.path), "--entry", "c1", "--out", str(tmp_path / "c1.html")]) == 0
    )
    page = (tmp_path / "c1.html").read_text()
    story = build_story(run, entry="c1")
    assert page.count("data:image/png;base64,") == len(story.frames) + int(HOLD_END_S * 4)
    # nothing fetched from elsewhere: no URL, no src/href other than inline data
    assert not re.search(r"https?://|//cdn|<link\b", page)
    for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page):
        assert ref.startswith("data:") or ref.startswith("#") or ref == "", ref


def test_frame_times_are_capped_and_keep_the_window(run) -> None:
    changes = [i / 1000 for i in range(10_000)]
    times = frame_times(changes, 0.0, 10.0)
    assert len(times) <= MAX_FRAMES + 1
    assert times[0] == 0.0 and times[-1] == 10.0
    assert times == sorted(set(times))


def test_layout_groups_each_site_around_its_switch() -> None:
    links = [Link(a=f"h{i}", b="s1") for i in (1, 2, 3)]
    links += [Link(a=f"h{i}", b="s2") for i in (4, 5, 6)]
    links += [Link(a="s1", b="s2")]
    topo = Topology(
        name="two",
        hosts=tuple(f"h{i}" for i in range(1, 7)),
        switches=("s1", "s2"),
        links=tuple(links),
    )
    pos = layout(topo)

    def d(a: str, b: str) -> float:
        return ((pos[a][0] - pos[b][0]) ** 2 + (pos[a][1] - pos[b][1]) ** 2) ** 0.5

    for h, own, other in [("h1", "s1", "s2"), ("h5", "s2", "s1")]:
        assert d(h, own) < d(h, other)


def test_emulation_logs_give_the_same_entry_held_rows() -> None:
    truth = EventLog()
    for h in ("h1", "h2"):
        truth.add(0.0, "node_start", subject=h)
        truth.add(0.0, "net_attach", node=h, network="web")
    logs = {
        "h1": [
            {
                "t": 1.0,
                "node": "h1",
                "kind": "entry_commit",
                "network": "web",
                "key": "c1",
                "op": "add",
            }
        ],
        "h2": [
            {
                "t": 1.2,
                "node": "h2",
                "kind": "entry_programmed",
                "network": "web",
                "key": "c1",
                "op": "add",
            }
        ],
    }
    out = collect(truth, logs, t0=0.0, t_end=5.0)
    held = [r for r in out.events if r[2] == "entry_held"]
    assert held == [(1.2, "h2", "entry_held", "", "web", "c1", "add", "")]
