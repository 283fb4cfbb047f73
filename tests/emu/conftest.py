"""Shared guards for emulation tests: they need root and a few system tools.

Outside CI a missing requirement skips the test with the reason. Under CI
(``CI=true``, or ``OVERLAYSIM_REQUIRE_EMU=1``) the same condition fails it: a CI run
that silently skips the emulation tier proves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from overlaysim.emu.net import Underlay
    from overlaysim.emu.runner import EmuWorld
    from overlaysim.scenario.topology import Topology


#: A 3-host star topology file (one switch, no impairments), for the labs and the CLI.
STAR3 = """\
name: star3
hosts: 3
switches: [s1]
defaults: {latency_ms: 0.0, bandwidth_mbps: 1000.0, loss_pct: 0.0}
links:
  - {a: h1, b: s1}
  - {a: h2, b: s1}
  - {a: h3, b: s1}
"""


def _in_ci() -> bool:
    if os.environ.get("OVERLAYSIM_REQUIRE_EMU") == "1":
        return True
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail with it when running under CI."""
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def emulation_or_skip() -> None:
    """Skip unless root, Mininet and the kernel features are here (fail under CI)."""
    from overlaysim.emu.setup import emulation_problems

    problems = emulation_problems()
    if problems:
        skip_or_fail("emulation unavailable: " + "; ".join(problems))


@pytest.fixture
def emu() -> None:
    """:func:`emulation_or_skip` as a fixture."""
    emulation_or_skip()


@pytest.fixture(autouse=True)
def _needs_root(request: pytest.FixtureRequest) -> None:
    """Tests marked ``emu`` create namespaces and interfaces: root only."""
    if request.node.get_closest_marker("emu") and os.geteuid() != 0:
        skip_or_fail("emulation test needs root (network namespaces, veth, vxlan)")


@pytest.fixture
def require_tools() -> Callable[..., None]:
    """Call with program names; skips (fails under CI) unless all are on PATH."""

    def check(*tools: str) -> None:
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if missing:
            skip_or_fail(f"needs {', '.join(missing)} (Debian packages; `make test` installs them)")

    return check


def netns_names() -> set[str]:
    """The named network namespaces (``ip netns``)."""
    out = subprocess.run(["ip", "-j", "netns"], capture_output=True, text=True, check=True)
    return {ns["name"] for ns in json.loads(out.stdout or "[]")}


def link_names() -> set[str]:
    """The root namespace's interface names."""
    out = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def processes_mentioning(*needles: str) -> list[str]:
    """``pid: command line`` of every other process whose command line holds a needle."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def processes_holding(folder: Path) -> list[str]:
    """``pid: command line`` of every other process with a file under ``folder`` open
    (deleted or not). A forked agent's command line is its fork server's, so its open
    log is what names its run."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = os.listdir(Path(entry.path, "fd"))
            targets = [os.readlink(Path(entry.path, "fd", fd)) for fd in fds]
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(t.startswith(f"{folder}/") for t in targets):
            found.append(f"{entry.name}: {cmdline}")
    return found


@contextmanager
def running_underlay(topology: Topology, **kwargs: Any) -> Iterator[Underlay]:
    """An underlay built and started for a module's tests (``kwargs``: more ``Underlay``
    arguments), stopped afterwards."""
    from overlaysim.emu.net import Underlay

    emulation_or_skip()
    shared = Underlay(topology, **kwargs)
    shared.build()
    shared.start()
    try:
        yield shared
    finally:
        shared.stop()


@contextmanager
def booted_world(spec: dict[str, Any], seed: int, **testbed: Any) -> Iterator[EmuWorld]:
    """A scenario (dict ``spec``) booted on a testbed through the runner's ``EmuWorld``
    (h1 serves the manager, ``local`` timing; ``testbed``: more ``Testbed`` arguments).

    Afterwards every agent must have stopped when asked, none may have logged an error,
    and nothing with the run's prefix may remain (namespaces, links, run folder).
    """
    from overlaysim.emu.net import underlay_session
    from overlaysim.emu.runner import EmuWorld
    from overlaysim.emu.testbed import Testbed
    from overlaysim.scenario.loader import validate_scenario
    from overlaysim.scenario.timeline import plan

    emulation_or_skip()
    scenario = validate_scenario(spec)
    with underlay_session(scenario.resolved_topology) as u:
        assert u.plan is not None
        prefix, run_dir = u.plan.prefix, u.record.path.parent if u.record else None
        tb = Testbed(u, managers=["h1"], profile="local", seed=seed, **testbed)
        w = EmuWorld(scenario, seed, tb)
        try:
            w.boot(plan(scenario, seed))
            yield w
        finally:
            assert tb.stop() == []  # every agent stopped when asked
            assert tb.errors == []
            tb.remove_files()
    assert not [n for n in netns_names() if n.startswith(prefix)]
    assert not [n for n in link_names() if n.startswith(prefix)]
    assert run_dir is not None and not run_dir.exists()
