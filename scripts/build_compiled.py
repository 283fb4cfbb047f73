"""Build the optional compiled core: the table layer and the broadcast queue, compiled by
mypyc from their own .py files.

``make compiled`` runs this. It compiles ``core/tables.py`` and ``core/queue.py`` (the
bulk of a large simulator run's time, docs/scale.md) into ``build/compiled/lib`` and
writes ``build/compiled/BUILD.json``: per module the SHA-256 of the .py it was built
from, the interpreter, mypy's version and the shared runtime library mypyc adds. Nothing
is written next to the sources, so a plain import never picks the build up: only
``overlaysim sim --core compiled`` and ``bench/sim_scale.py --core compiled`` load it,
through ``overlaysim.corebuild``, and only while every recorded hash still matches the
.py on disk. Needs mypy (``pip install -e '.[compiled]'``, which ``make compiled`` does)
and a C compiler.

Usage:
  python scripts/build_compiled.py              # build (about 20 s of gcc)
  python scripts/build_compiled.py --clean      # remove what a build wrote
  python scripts/build_compiled.py --out DIR    # build elsewhere (the tests do)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "compiled"  # overlaysim.corebuild looks here (OVERLAYSIM_COMPILED_DIR)

#: Where the time goes at thousands of hosts (docs/scale.md): accepting records, the held
#: checks, the bulk syncs and the broadcast queues. The other modules stay interpreted:
#: formed boots hand the tables duck-typed views of ByName maps and node sets, which a
#: compiled ByName would reject, and the driver's times must stay the ints or floats
#: SimPy gives (mypyc makes every ``float`` argument a C double).
MODULES = ["overlaysim.core.tables", "overlaysim.core.queue"]


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clean(out: Path) -> None:
    """Remove what a build wrote there (only that: ``--out`` may name any folder)."""
    (out / "BUILD.json").unlink(missing_ok=True)  # first: a half-removed build is never used
    for sub in ("lib", "c", "tmp"):
        shutil.rmtree(out / sub, ignore_errors=True)


def _binary(name: str, suffix: str) -> str:
    return str(Path("lib", *name.split("."))) + suffix


def build(modules: list[str], out: Path = OUT) -> dict:
    try:
        import mypy.version
        from mypyc.build import mypycify
    except ImportError:
        sys.exit(
            "build_compiled: mypy (with mypyc) is not installed; `make compiled` installs "
            "it (pip install -e '.[compiled]')"
        )
    from setuptools import Distribution
    from setuptools.command.build_ext import build_ext

    # Hash before compiling: a source edited during the build makes the build stale.
    hashes = {m: sha256(source_of(m)) for m in modules}
    clean(out)
    (out / "lib").mkdir(parents=True)
    cwd = os.getcwd()
    os.chdir(ROOT)  # module names come from the package layout under ROOT
    try:
        paths = [str(source_of(m).relative_to(ROOT)) for m in modules]
        # The other modules are read for their types (never compiled): silently, since
        # only these must type-check for mypyc.
        exts = mypycify(
            ["--ignore-missing-imports", "--follow-imports=silent", *paths],
            opt_level="3",
            target_dir=str(out / "c"),
        )
        # A bare Distribution: setup() would read the project's pyproject.toml.
        cmd = build_ext(Distribution({"name": "overlaysim-compiled-core", "ext_modules": exts}))
        cmd.build_lib = str(out / "lib")
        cmd.build_temp = str(out / "tmp")
        cmd.ensure_finalized()
        cmd.run()
    finally:
        os.chdir(cwd)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    runtime = [e.name for e in exts if e.name not in modules]
    if len(runtime) != 1:
        sys.exit(f"build_compiled: expected one shared runtime library, mypyc made {runtime}")
    info = {
        "python": sys.version.split()[0],
        "ext_suffix": suffix,
        "mypy": mypy.version.__version__,
        "runtime": {"module": runtime[0], "binary": _binary(runtime[0], suffix)},
        "modules": {},
    }
    for m in modules:
        binary = _binary(m, suffix)
        if not (out / binary).exists():
            sys.exit(f"build_compiled: {m} was not built ({out / binary} missing)")
        info["modules"][m] = {
            "source": str(source_of(m).relative_to(ROOT)),
            "sha256": hashes[m],
            "binary": binary,
        }
    shutil.rmtree(out / "tmp", ignore_errors=True)
    (out / "BUILD.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clean", action="store_true", help="remove the build and stop")
    ap.add_argument(
        "--out", type=Path, default=OUT, help="build directory (default build/compiled)"
    )
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.clean:
        clean(out)
        print(f"removed the compiled build in {out}")
        return 0
    info = build(MODULES, out)
    print(
        f"compiled {', '.join(info['modules'])} with mypyc {info['mypy']} into {out}/lib; "
        "used only when asked: overlaysim sim --core compiled, "
        "bench/sim_scale.py --core compiled"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
