"""Building a run manifest: what ran, with which software, at which commit.

For the simulator a manifest must be a pure function of the scenario and the seed, so
it holds no wall-clock time, host name or absolute path. A backend that wants wall
clock (the emulation's ``started``/``ended``) adds it explicitly.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import overlaysim
from overlaysim.core.config import configs

#: Distributions whose versions are recorded (missing ones are recorded as null).
VERSIONED = ("simpy", "networkx", "msgpack", "pandas", "numpy", "matplotlib", "pyroute2")


def versions(extra: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Versions of overlaysim, Python and the libraries that shape results."""
    out: dict[str, str | None] = {
        "overlaysim": overlaysim.__version__,
        "python": platform.python_version(),
    }
    for dist in (*VERSIONED, *extra):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def git_commit(repo: Path | None = None) -> str | None:
    """The commit checked out in ``repo`` (default: the source tree), or None.

    Read-only (``git rev-parse HEAD``); None when git or the repository is absent.
    """
    repo = repo or Path(overlaysim.__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def base_manifest(
    *,
    name: str,
    backend: str,
    seed: int,
    scenario: Mapping[str, Any],
    capabilities: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest keys every backend writes; ``extra`` keys are appended as given.

    ``scenario`` is the resolved scenario (defaults filled in) as plain JSON data.
    """
    return {
        "name": name,
        "backend": backend,
        "seed": seed,
        "status": "running",
        "error": None,
        "scenario": dict(scenario),
        "versions": versions(),
        "git_commit": git_commit(),
        "capabilities": dict(capabilities or {}),
        **extra,
    }


def protocol_settings(profile: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's ``protocol`` block: the membership and table settings of a run, the
    profile's with the scenario's overrides applied (``scenario.protocol`` as plain data)."""
    mconf, tconf = configs(profile, **overrides)
    return {"membership": dataclasses.asdict(mconf), "tables": dataclasses.asdict(tconf)}
