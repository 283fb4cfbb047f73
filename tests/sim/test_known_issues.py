"""The known-issues library: cases, the table, and one fast case end to end."""

from __future__ import annotations

import pytest

from overlaysim.cli import main
from overlaysim.known_issues import CASES, Outcome, run_case, scenario_path, table
from overlaysim.scenario.loader import load_scenario


def test_every_case_has_a_valid_scenario_and_a_source() -> None:
    assert len({c.id for c in CASES}) == len(CASES)
    for c in CASES:
        assert c.source and c.symptom and c.backend in ("sim", "emu")
        load_scenario(scenario_path(c))


def test_table_says_reproduced_absent_and_fails_a_case_that_does_not_behave() -> None:
    case = CASES[0]
    good = Outcome(case, case.reproduced_above + 1, case.absent_at_most)
    bad = Outcome(case, case.reproduced_above, case.absent_at_most + 1)
    assert good.ok and not bad.ok
    text = table([good, bad])
    assert "(reproduced)" in text and "(absent)" in text
    assert "NOT reproduced" in text and "PRESENT" in text and "FAIL" in text


def test_quick_restart_case_reproduces_under_docker_only(tmp_path, capsys) -> None:
    rc = main(["known-issues", "--only", "quick-restart", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "moby#47728" in out and "1 (reproduced)" in out and "0 (absent)" in out
    assert (tmp_path / "quick-restart" / "docker" / "metrics.json").is_file()


def test_unknown_case_is_one_clear_line(capsys) -> None:
    assert main(["known-issues", "--only", "nope"]) == 2
    assert "expected one of" in capsys.readouterr().out


@pytest.mark.slow
def test_heal_flapping_case_meets_the_issue_targets(tmp_path) -> None:
    """Issue 12: > 100 false positives under docker, <= 25 with the heal rule."""
    case = next(c for c in CASES if c.id == "heal-flapping")
    outcome = run_case(case, tmp_path)
    assert outcome.docker is not None and outcome.docker > 100
    assert outcome.default is not None and outcome.default <= 25


@pytest.mark.parametrize(
    ("case_id", "switch"),
    [
        ("ip-reuse", "epochs"),
        ("add-after-delete", "unknown_tombstones"),
        ("leave-rejoin", "local_tombstones"),
    ],
)
def test_case_reproduces_under_docker_and_its_one_switch_removes_it(
    tmp_path, case_id, switch
) -> None:
    """Each symptom comes from one protocol switch: docker shows it, docker with that
    extension turned back on does not, and neither does the default."""
    import json

    from overlaysim.sim.runner import run_simulation

    case = next(c for c in CASES if c.id == case_id)
    outcome = run_case(case, tmp_path)
    assert outcome.ok, outcome
    sc = load_scenario(
        scenario_path(case),
        ["protocol.variant=docker", f"protocol.extensions.{switch}=true"],
    )
    dest = tmp_path / "docker-with-switch"
    assert run_simulation(sc, dest, seed=sc.seed, progress=False) == "complete"
    metrics = json.loads((dest / "metrics.json").read_text())
    assert case.value(metrics, dest) <= case.absent_at_most
