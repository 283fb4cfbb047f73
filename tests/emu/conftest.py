"""Shared guards for emulation tests: they need root and a few system tools.

Outside CI a missing requirement skips the test with the reason. Under CI
(``CI=true``, or ``OVERLAYSIM_REQUIRE_EMU=1``) the same condition fails it: a CI run
that silently skips the emulation tier proves nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

import pytest


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
