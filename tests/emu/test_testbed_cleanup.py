"""A crash does not wait for the dead boot's kernel clean-up; a restart does (no root).

The testbed runs over a stand-in underlay whose "agents" are ``sleep`` processes, and
the clean-up (an interpreter started inside the host, seconds on a busy machine) is
replaced by a function the test holds until it says so.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from overlaysim.emu.testbed import Testbed, TestbedError


class FakeUnderlay:
    def __init__(self, tmp: Path) -> None:
        self.record = SimpleNamespace(path=tmp / "underlay.jsonl")
        self.plan = SimpleNamespace(prefix="osimzz")
        self.procs: list[subprocess.Popen[bytes]] = []

    def underlay_ip(self, host: str) -> str:
        return "10.0.0." + host[1:]

    def spawn_agent(self, host: str, argv: Any, stderr: Path) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "30"])
        self.procs.append(proc)
        return proc


@pytest.fixture
def testbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    underlay = FakeUnderlay(tmp_path)
    tb = Testbed(underlay, managers=["h1"], fork_agents=True)  # type: ignore[arg-type]
    tb.release = threading.Event()  # type: ignore[attr-defined]
    tb.order = []  # type: ignore[attr-defined]
    tb.fail = set()  # type: ignore[attr-defined]

    def clean(self: Testbed, host: str) -> None:
        if host in self.agents and not self.agents[host].running():
            assert self.release.wait(10)  # type: ignore[attr-defined]
            self.order.append(("cleaned", host))  # type: ignore[attr-defined]
            if host in self.fail:  # type: ignore[attr-defined]
                raise TestbedError(f"could not clean {host}")

    monkeypatch.setattr(Testbed, "_clean_kernel", clean)
    monkeypatch.setattr(Testbed, "argv", lambda self, host, seeds, keyed=True: ["sleep"])
    yield tb
    tb.release.set()  # type: ignore[attr-defined]
    for p in underlay.procs:
        p.kill()
        p.wait()


def test_a_crash_returns_before_the_clean_up_and_a_restart_waits_for_it(testbed) -> None:
    testbed.start_agent("h2", [])
    testbed.kill_agent("h2", clean_later=True)  # returns although the clean-up is held
    assert not testbed.agents["h2"].running()
    assert testbed.order == []

    restarted = threading.Thread(target=lambda: testbed.start_agent("h2", []))
    restarted.start()
    restarted.join(0.3)
    assert restarted.is_alive()  # the restart waits for the dead boot's clean-up
    testbed.release.set()
    restarted.join(10)
    assert testbed.order == [("cleaned", "h2")]
    assert testbed.agents["h2"].running() and testbed.agents["h2"].boot == 2


def test_a_failed_deferred_clean_up_surfaces_at_the_restart(testbed) -> None:
    testbed.fail.add("h3")
    testbed.start_agent("h3", [])
    testbed.kill_agent("h3", clean_later=True)
    testbed.release.set()
    with pytest.raises(TestbedError, match="could not clean h3"):
        testbed.start_agent("h3", [])


def test_stop_waits_for_pending_clean_ups_and_keeps_their_errors(testbed) -> None:
    testbed.fail.add("h4")
    testbed.start_agent("h4", [])
    testbed.kill_agent("h4", clean_later=True)
    testbed.release.set()
    testbed.stop(timeout=1.0)
    assert ("cleaned", "h4") in testbed.order
    assert testbed.errors == ["could not clean h4"]
