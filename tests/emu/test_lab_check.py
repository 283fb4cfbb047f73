"""``check LAB``: the guided labs graded on a live testbed.

One lab testbed (the workshop's 8-host star, ``local`` timing) is driven through labs
1 to 5 with the lab CLI's own functions, as the docs tell a student. Before each lab's
decisive step the check must report that step as the missing one (with its hint); after
it, every step of the lab must pass. Labs 1 and 5 are also checked from outside the
process, through the agents' control sockets and logs (:class:`LiveProbe`), the way
``overlaysim lab check`` does from another terminal. As root; about two minutes.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import emulation_or_skip

from overlaysim.lab import commands as cmds
from overlaysim.lab.check import LabProbe, LiveProbe, check_lab, render
from overlaysim.lab.commands import Lab

STAR = Path(__file__).resolve().parents[2] / "topologies" / "star.yaml"


def _until(check, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return bool(check())


def _failed(lab: Lab, number: int) -> list[int]:
    return [r.step for r in check_lab(LabProbe(lab), number) if not r.passed]


def _passes(lab: Lab, number: int, timeout: float = 30.0) -> bool:
    return _until(lambda: _failed(lab, number) == [], timeout)


def _live_probe(lab: Lab) -> LiveProbe:
    """What ``overlaysim lab check`` reads from the address book, for this testbed."""
    from overlaysim.emu.live import LiveTestbed

    return LiveProbe(LiveTestbed.of(lab.testbed, lab.hosts, "test"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    emulation_or_skip()
    from overlaysim.lab.session import lab_session

    with lab_session(STAR, profile="local", say=False) as lb:
        yield lb


@pytest.mark.emu
def test_labs_1_to_5_report_the_missing_step_then_pass(lab: Lab) -> None:
    # Lab 1, nothing done yet: the testbed is formed, the network is the missing step.
    results = check_lab(LabProbe(lab), 1)
    assert [r.passed for r in results] == [True, False, False, False]
    assert results[1].hint == "network create web --attachable"
    text = render(results)
    assert "[FAIL] 1.2 an attachable network web" in text and "hint: network create web" in text
    cmds.network_create(lab, "web", subnet="10.50.0.0/24", attachable=True)
    cmds.run(lab, "c1", "web", "h1")
    cmds.run(lab, "c2", "web", "h5")
    assert _passes(lab, 1)
    live = check_lab(_live_probe(lab), 1)  # the same verdict from outside the process
    assert all(r.passed for r in live), render(live)

    # Lab 2: a container removed is the last step.
    assert _failed(lab, 2) == [6]
    cmds.run(lab, "c3", "web", "h3")
    assert _until(lambda: "c3" in cmds.tables(lab, "h1"))
    cmds.rm(lab, "c3")
    assert _passes(lab, 2)

    # Lab 3: before the crash, the crash is what is missing.
    cmds.run(lab, "c3", "web", "h3")
    assert _until(lambda: _failed(lab, 3) == [2, 3])
    cmds.loss(lab, 30)
    cmds.loss(lab, 0)
    cmds.crash(lab, "h3")
    assert _until(lambda: 2 not in _failed(lab, 3))
    assert 3 in _failed(lab, 3)  # not restarted yet
    cmds.restart(lab, "h3")
    assert _until(lambda: 3 not in _failed(lab, 3))
    cmds.run(lab, "c3", "web", "h3")
    assert _passes(lab, 3, timeout=45)

    # Lab 4: containers in both halves; the partition's trace is what is missing.
    cmds.run(lab, "c5", "web", "h6")
    cmds.run(lab, "c6", "web", "h7")
    assert _until(lambda: _failed(lab, 4) == [2])
    try:
        cmds.partition(lab, [["h1", "h2", "h3", "h4"], ["h5", "h6", "h7", "h8"]])
        assert _until(lambda: 2 not in _failed(lab, 4))
    finally:
        cmds.heal(lab)
    assert _passes(lab, 4, timeout=60)

    # Lab 5: a fresh pair of networks; rotation is the last step.
    for c in ("c1", "c2"):
        cmds.rm(lab, c)
    cmds.network_create(lab, "plain", subnet="10.51.0.0/24", attachable=True)
    cmds.network_create(lab, "secure", subnet="10.52.0.0/24", attachable=True, encrypted=True)
    for c, net, h in (("c1", "plain", "h1"), ("c2", "plain", "h2"), ("s1", "secure", "h1")):
        cmds.run(lab, c, net, h)
    cmds.run(lab, "s2", "secure", "h2")
    assert _until(lambda: _failed(lab, 5) == [6])
    cmds.rotate(lab)
    assert _passes(lab, 5)
    results = check_lab(_live_probe(lab), 5)
    assert all(r.passed for r in results), render(results)

    # Machine-readable forms carry the same verdicts.
    doc = json.loads(render(results, "json"))
    assert doc["lab"] == 5 and doc["passed"] is True and len(doc["steps"]) == len(results)
    rows = list(csv.DictReader(io.StringIO(render(results, "csv"))))
    assert [r["passed"] for r in rows] == ["true"] * len(results)
    assert rows[0]["goal"] == "an attachable network plain"
