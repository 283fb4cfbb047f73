"""Build the optional compiled core: the hot modules compiled by Cython from their own .py.

``make compiled`` runs this. It compiles the unchanged sources (no type annotations are
turned into C types, so every value is the same Python object as in the pure run) into
``build/compiled/lib`` and writes ``build/compiled/BUILD.json``: per module the SHA-256 of
the .py it was built from, plus the interpreter and Cython versions. Nothing is written
next to the sources. ``overlaysim.corebuild`` loads these modules in place of the sources
only while every recorded hash still matches the .py on disk (else it says the build is
stale and uses the sources); ``OVERLAYSIM_CORE=python`` turns it off.

Usage:
  python scripts/build_compiled.py              # the default module set
  python scripts/build_compiled.py --clean      # remove build/compiled
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

#: Where the time goes (docs/scale.md): the table layer, the broadcast queue, the
#: membership rounds, the wire sizes, the node glue, and the simulator's driver.
MODULES = [
    "overlaysim.core.tables",
    "overlaysim.core.queue",
    "overlaysim.core.membership",
    "overlaysim.core.suspicion",
    "overlaysim.core.wire",
    "overlaysim.core.node",
    "overlaysim.core.endpoint",
    "overlaysim.core.events",
    "overlaysim.sim.engine",
    "overlaysim.sim.underlay",
    "overlaysim.sim.runner",
    "overlaysim.metrics.traffic",
    "overlaysim.metrics.convergence",
]

#: Behaviour-neutral compilation: annotations stay annotations (``x: float`` must not
#: turn an int into a C double), functions stay introspectable Python-like callables.
DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
    "embedsignature": False,
}


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clean(out: Path) -> None:
    """Remove what a build wrote there (only that: ``--out`` may name any folder)."""
    (out / "BUILD.json").unlink(missing_ok=True)  # first: a half-removed build is never used
    for sub in ("lib", "c", "tmp"):
        shutil.rmtree(out / sub, ignore_errors=True)


def build(modules: list[str], jobs: int, out: Path = OUT) -> dict:
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError:
        sys.exit(
            "build_compiled: Cython is not installed; `make compiled` installs it "
            "(pip install -e '.[compiled]')"
        )
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    # Hash before compiling: a source edited during the build makes the build stale.
    hashes = {m: sha256(source_of(m)) for m in modules}
    clean(out)
    (out / "lib").mkdir(parents=True)
    exts = [Extension(m, [str(source_of(m).relative_to(ROOT))]) for m in modules]
    cwd = os.getcwd()
    os.chdir(ROOT)  # module names come from the package layout under ROOT
    try:
        ext_modules = cythonize(
            exts,
            build_dir=str(out / "c"),
            compiler_directives=DIRECTIVES,
            nthreads=jobs,
            quiet=True,
        )
        dist = Distribution({"name": "overlaysim-compiled-core", "ext_modules": ext_modules})
        cmd = build_ext(dist)
        cmd.build_lib = str(out / "lib")
        cmd.build_temp = str(out / "tmp")
        cmd.parallel = jobs
        cmd.ensure_finalized()
        cmd.run()
    finally:
        os.chdir(cwd)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    info = {
        "python": sys.version.split()[0],
        "ext_suffix": suffix,
        "cython": Cython.__version__,
        "directives": DIRECTIVES,
        "modules": {},
    }
    for m in modules:
        so = Path("lib", *m.split(".")).with_suffix("")
        so = so.with_name(so.name + suffix)
        if not (out / so).exists():
            sys.exit(f"build_compiled: {m} was not built ({out / so} missing)")
        info["modules"][m] = {
            "source": str(source_of(m).relative_to(ROOT)),
            "sha256": hashes[m],
            "binary": str(so),
        }
    shutil.rmtree(out / "tmp", ignore_errors=True)
    (out / "BUILD.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clean", action="store_true", help="remove build/compiled and stop")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--out", type=Path, default=OUT, help="build directory (default build/compiled)"
    )
    ap.add_argument("modules", nargs="*", help=f"modules to compile (default: {len(MODULES)})")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    if args.clean:
        clean(out)
        print(f"removed the compiled build in {out}")
        return 0
    info = build(args.modules or MODULES, args.jobs, out)
    print(
        f"compiled {len(info['modules'])} modules with Cython {info['cython']} into "
        f"{out}/lib (used unless OVERLAYSIM_CORE=python; "
        "`overlaysim doctor --core` shows which path is in use)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
