"""Can this machine run the emulator? One check, one clear message.

:func:`require_emulation` is called before anything is built, so a missing piece is
reported up front ("run as root (sudo)", "apt-get install mininet", ...) instead of as a
traceback from deep inside Mininet halfway through building a network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass

from overlaysim.errors import UserError


class EmulationUnavailable(UserError):
    """The emulator cannot run here; the message says what is missing and how to get it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    """One thing the emulator needs: what it is, and how to get it when missing."""

    name: str
    ok: bool
    fix: str


#: Executables the underlay uses directly, with the Debian package that provides each.
_TOOLS = (
    ("mnexec", "apt-get install mininet"),
    ("ip", "apt-get install iproute2"),
    ("tc", "apt-get install iproute2"),
    ("nft", "apt-get install nftables"),
    # Mininet's Host configures addresses with ifconfig.
    ("ifconfig", "apt-get install net-tools"),
)


def requirements() -> list[Requirement]:
    """Every requirement with its current state (nothing is changed)."""
    reqs = [
        Requirement(name="root", ok=os.geteuid() == 0, fix="run as root (sudo)"),
        Requirement(
            name="mininet (Python package)",
            ok=importlib.util.find_spec("mininet") is not None,
            fix="pip install mininet==2.3.0.dev6 (`make test` installs it into .venv)",
        ),
    ]
    for tool, fix in _TOOLS:
        reqs.append(Requirement(name=tool, ok=shutil.which(tool) is not None, fix=fix))
    return reqs


def emulation_problems() -> list[str]:
    """Human-readable lines, one per missing requirement; empty when all is well."""
    return [f"{r.name} is missing: {r.fix}" for r in requirements() if not r.ok]


def require_emulation() -> None:
    """Raise :class:`EmulationUnavailable` naming everything that is missing.

    >>> require_emulation()  # doctest: +SKIP  (as root with Mininet installed: no output)
    """
    problems = emulation_problems()
    if problems:
        lines = "\n  ".join(problems)
        raise EmulationUnavailable(
            f"emulation is not available on this machine:\n  {lines}\n"
            "(`overlaysim doctor` lists every kernel feature; the simulator needs none of this)"
        )
