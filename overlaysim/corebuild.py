"""Which build of the hot modules the simulator runs: the Python sources, or the optional
compiled build.

``make compiled`` (``scripts/build_compiled.py``) compiles the table layer and the
broadcast queue (``core/tables.py``, ``core/queue.py``, the bulk of a large run's time)
with mypyc from the very same .py files into ``build/compiled``, and records each
source's SHA-256 in ``build/compiled/BUILD.json``. Nothing is loaded unless asked:
``overlaysim sim --core compiled`` (and ``bench/sim_scale.py --core compiled``) call
:func:`install` before the protocol core is imported, which puts a finder in front of
the import system that loads the binaries instead of the sources, but only while every
recorded hash matches the .py on disk and the build was made for this interpreter. A
stale build is never used: :func:`install` says why and refuses.

Both builds run the same code and a run gives the same results folder either way
(``tests/sim/test_compiled_core.py``); the compiled one is faster. It is for the
simulator only: mypyc checks every annotated argument at run time, so a malformed record
from the wire, which the sources count and drop, would raise ``TypeError`` in compiled
code. The agent never calls :func:`install`; it runs the sources, which is what its
garbage-input tests check. This module imports nothing from the project.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_DIR = "OVERLAYSIM_COMPILED_DIR"
_ROOT = Path(__file__).resolve().parents[1]
#: The choices of ``--core``.
CHOICES = ("python", "compiled", "auto")


class CoreBuildError(Exception):
    """``--core compiled`` asked for a build that is missing, stale or unusable."""


@dataclass(frozen=True)
class CoreStatus:
    """The build in use: ``core`` is ``compiled`` or ``python``; ``reason`` says why."""

    core: str
    reason: str
    build_dir: str
    modules: tuple[str, ...] = ()


_status: CoreStatus | None = None


def build_dir() -> Path:
    """Where ``make compiled`` puts the build (``OVERLAYSIM_COMPILED_DIR`` overrides)."""
    override = os.environ.get(ENV_DIR)
    return Path(override) if override else _ROOT / "build" / "compiled"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check(out: Path) -> tuple[dict[str, Path] | None, str]:
    """The binaries to load by module name, or None and the reason not to."""
    manifest = out / "BUILD.json"
    if not manifest.exists():
        return None, f"no compiled build ({manifest} missing; `make compiled` builds it)"
    try:
        info = json.loads(manifest.read_text())
        modules = info["modules"]
        runtime = info["runtime"]
        suffix = info["ext_suffix"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"compiled build unreadable ({manifest}: {exc}); run `make compiled`"
    if suffix != importlib.machinery.EXTENSION_SUFFIXES[0]:
        return None, (
            f"compiled build is for another interpreter ({suffix}; this one loads "
            f"{importlib.machinery.EXTENSION_SUFFIXES[0]}); run `make compiled`"
        )
    if info.get("python") != sys.version.split()[0]:
        return None, (
            f"compiled build is for Python {info.get('python')}, this is "
            f"{sys.version.split()[0]}; run `make compiled`"
        )
    found: dict[str, Path] = {}
    for name, rec in sorted(modules.items()):
        src = _ROOT / rec["source"]
        if not src.exists() or _sha256(src) != rec["sha256"]:
            return None, (
                f"compiled build is stale: {rec['source']} changed since it was built "
                "(run `make compiled` again)"
            )
        found[name] = out / rec["binary"]
    found[runtime["module"]] = out / runtime["binary"]
    missing = [str(p) for p in found.values() if not p.exists()]
    if missing:
        return None, f"compiled build incomplete: {missing[0]} missing; run `make compiled`"
    return found, f"{len(modules)} modules from {out}"


class _Finder(importlib.abc.MetaPathFinder):
    """Loads the listed modules (and the build's shared runtime) from their binaries."""

    def __init__(self, binaries: dict[str, Path]) -> None:
        self.binaries = binaries

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        binary = self.binaries.get(fullname)
        if binary is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(binary))
        return importlib.util.spec_from_file_location(fullname, str(binary), loader=loader)


def install(choice: str = "python") -> CoreStatus:
    """Choose the build for this process, once: ``python`` (the sources), ``compiled``
    (the build, or :class:`CoreBuildError` saying why not) or ``auto`` (the build if it
    is there and fresh, else the sources). Call it before the protocol core is imported.
    """
    global _status
    if choice not in CHOICES:
        raise CoreBuildError(f"--core {choice!r}: expected one of {', '.join(CHOICES)}")
    if _status is not None:
        if choice == "compiled" and _status.core != "compiled":
            raise CoreBuildError(
                f"--core compiled: this process already runs the sources ({_status.reason})"
            )
        return _status
    out = build_dir()
    if choice == "python":
        _status = CoreStatus("python", "--core python", str(out))
        return _status
    binaries, reason = _check(out)
    if binaries is not None:
        already = sorted(m for m in binaries if m in sys.modules)
        if already:  # loaded from source first: mixing would give two copies of a class
            binaries, reason = None, f"imported from source before the build: {', '.join(already)}"
    if binaries is None:
        if choice == "compiled":
            raise CoreBuildError(f"--core compiled: {reason}")
        _status = CoreStatus("python", reason, str(out))
        return _status
    sys.meta_path.insert(0, _Finder(binaries))
    compiled = tuple(m for m in binaries if m.startswith("overlaysim."))
    _status = CoreStatus("compiled", reason, str(out), compiled)
    return _status


def status() -> CoreStatus:
    """The build this process uses (the sources unless :func:`install` chose the build)."""
    return _status or CoreStatus("python", "the sources (no --core given)", str(build_dir()))


def describe() -> str:
    """One line for a run's log: ``core: compiled (2 modules from ...)``."""
    s = status()
    return f"core: {s.core} ({s.reason})"
