"""Which build of the hot modules runs: the Python sources, or the optional compiled build.

``make compiled`` (``scripts/build_compiled.py``) compiles a few hot modules (the table
layer, queue, membership, wire, node, the simulator's engine and underlay) with Cython from
their unchanged .py files into ``build/compiled/lib``, and records each source's SHA-256 in
``build/compiled/BUILD.json``. When ``overlaysim`` is imported, :func:`install` puts a finder
in front of the import system that loads those binaries instead of the sources, but only if

* ``OVERLAYSIM_CORE`` is not ``python`` (``python``: always the sources; ``compiled``: the
  build is required and its absence or staleness is an error; unset or ``auto``: the
  build if it is there and fresh, else the sources), and
* every recorded hash matches the .py on disk now, and the build was made for this
  interpreter. A build made from other sources than the ones on disk (a stale build) is
  never used: the sources run, and :func:`status` says why.

Both builds run the same code, so a run gives the same results folder either way; the
compiled one is only faster. The agent imports the same modules, so it runs whichever
build the simulator would. Imports nothing from the project (``overlaysim/__init__`` loads it
before anything else).
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

ENV = "OVERLAYSIM_CORE"
ENV_DIR = "OVERLAYSIM_COMPILED_DIR"
_ROOT = Path(__file__).resolve().parents[1]


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
        suffix = info["ext_suffix"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"compiled build unreadable ({manifest}: {exc}); run `make compiled`"
    if suffix != importlib.machinery.EXTENSION_SUFFIXES[0]:
        return None, (
            f"compiled build is for another interpreter ({suffix}, this one loads "
            f"{importlib.machinery.EXTENSION_SUFFIXES[0]}); run `make compiled`"
        )
    found: dict[str, Path] = {}
    for name, rec in sorted(modules.items()):
        src = _ROOT / rec["source"]
        binary = out / rec["binary"]
        if not src.exists() or _sha256(src) != rec["sha256"]:
            return None, (
                f"compiled build is stale: {rec['source']} changed since it was built; "
                "using the Python sources (run `make compiled` to rebuild)"
            )
        if not binary.exists():
            return None, f"compiled build incomplete: {binary} missing; run `make compiled`"
        found[name] = binary
    return found, f"{len(found)} modules from {out}"


class _Finder(importlib.abc.MetaPathFinder):
    """Loads the listed modules from their compiled binaries."""

    def __init__(self, binaries: dict[str, Path]) -> None:
        self.binaries = binaries

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        binary = self.binaries.get(fullname)
        if binary is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(binary))
        return importlib.util.spec_from_file_location(fullname, str(binary), loader=loader)


def install() -> CoreStatus:
    """Choose the build once per process (see the module docstring) and return it."""
    global _status
    if _status is not None:
        return _status
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    out = build_dir()
    if mode not in ("auto", "python", "compiled"):
        raise SystemExit(f"{ENV}={mode!r}: expected python, compiled or auto")
    if mode == "python":
        _status = CoreStatus("python", f"{ENV}=python", str(out))
        return _status
    binaries, reason = _check(out)
    if binaries is None:
        if mode == "compiled":
            raise SystemExit(f"{ENV}=compiled: {reason}")
        if (out / "BUILD.json").exists():  # built but unusable: say so, once per process
            print(f"overlaysim: {reason}", file=sys.stderr)
        _status = CoreStatus("python", reason, str(out))
        return _status
    already = sorted(m for m in binaries if m in sys.modules)
    if already:  # loaded from source before us: mixing would give two copies of a class
        _status = CoreStatus(
            "python", f"imported before the finder: {', '.join(already)}", str(out)
        )
        return _status
    sys.meta_path.insert(0, _Finder(binaries))
    _status = CoreStatus("compiled", reason, str(out), tuple(binaries))
    return _status


def status() -> CoreStatus:
    """The build this process uses (choosing it now if ``overlaysim`` did not yet)."""
    return install()


def describe() -> str:
    """One line for ``overlaysim doctor`` and the run's log: ``core: compiled (...)``."""
    s = status()
    return f"core: {s.core} ({s.reason})"
