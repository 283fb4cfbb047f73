"""The optional compiled build of the hot modules (``make compiled``).

It must run the same code as the sources: same results folder, byte for byte, for the
same seed; and a build that no longer matches its sources must never be used.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from overlaysim import corebuild

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build_compiled.py"


def _env(core: str, build: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["OVERLAYSIM_CORE"] = core
    env["OVERLAYSIM_COMPILED_DIR"] = str(build)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _probe(core: str, build: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import overlaysim.core.tables as t, overlaysim.corebuild as c\n"
        "print(c.status().core); print(t.__file__)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=_env(core, build), capture_output=True, text=True
    )


def _fake_build(tmp_path: Path, sha: str) -> Path:
    """A BUILD.json naming tables.py with hash ``sha`` (its binary is a placeholder)."""
    src = "overlaysim/core/tables.py"
    binary = Path("lib/overlaysim/core") / ("tables" + corebuild_suffix())
    (tmp_path / binary).parent.mkdir(parents=True)
    (tmp_path / binary).write_bytes(b"not a real extension")
    info = {
        "python": "3",
        "ext_suffix": corebuild_suffix(),
        "cython": "x",
        "modules": {
            "overlaysim.core.tables": {"source": src, "sha256": sha, "binary": str(binary)}
        },
    }
    (tmp_path / "BUILD.json").write_text(json.dumps(info))
    return tmp_path


def corebuild_suffix() -> str:
    import importlib.machinery

    return importlib.machinery.EXTENSION_SUFFIXES[0]


def test_no_build_means_sources(tmp_path: Path) -> None:
    r = _probe("auto", tmp_path)
    assert r.returncode == 0, r.stderr
    core, path = r.stdout.split()
    assert core == "python" and path.endswith("tables.py")
    assert r.stderr == ""  # nothing built: nothing to warn about


def test_stale_build_is_not_used_and_says_so(tmp_path: Path) -> None:
    _fake_build(tmp_path, "0" * 64)  # built from other sources than the ones on disk
    r = _probe("auto", tmp_path)
    assert r.returncode == 0, r.stderr
    core, path = r.stdout.split()
    assert core == "python" and path.endswith("tables.py")
    assert "stale" in r.stderr and "overlaysim/core/tables.py changed" in r.stderr
    forced = _probe("compiled", tmp_path)
    assert forced.returncode != 0
    assert "OVERLAYSIM_CORE=compiled" in forced.stderr and "stale" in forced.stderr
    assert "Traceback" not in forced.stderr


def test_python_wins_over_a_build_and_bad_values_are_refused(tmp_path: Path) -> None:
    sha = hashlib.sha256((ROOT / "overlaysim/core/tables.py").read_bytes()).hexdigest()
    _fake_build(tmp_path, sha)  # matches the sources; the binary is garbage
    r = _probe("python", tmp_path)
    assert r.returncode == 0 and r.stdout.split()[0] == "python"
    bad = _probe("fast", tmp_path)
    assert bad.returncode != 0 and "expected python, compiled or auto" in bad.stderr


def test_this_process_reports_its_build() -> None:
    s = corebuild.status()
    assert s.core in ("python", "compiled")
    assert corebuild.describe().startswith(f"core: {s.core} (")


# --- the compiled build itself: same results folder, byte for byte ----------------------

ENDPOINT_RUN = """\
name: endpoints-200
seed: 4
duration: 6
profile: lan
boot: formed
topology: {generator: star, hosts: 200, link: {latency_ms: 0.5, bandwidth_mbps: 1000, loss_pct: 1}}
networks: [{name: app, subnet: 10.64.0.0/16, attachable: true}]
containers: [{per_host: 1, networks: [app]}]
events: [{at: 1, action: churn, network: app, rate_per_s: 10, duration: 4}]
measure: {probes: false}
"""


@pytest.fixture(scope="module")
def compiled_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh build of the current sources: ``make compiled``'s if it is fresh, else one
    made here (needs Cython, a test dependency, and a C compiler)."""
    default = corebuild.build_dir()
    if _probe("compiled", default).returncode == 0:
        return default
    pytest.importorskip("Cython", reason="Cython not installed (pip install -e '.[compiled]')")
    out = tmp_path_factory.mktemp("compiled")
    r = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _run(core: str, build: Path, scenario: Path, out: Path) -> dict[str, bytes]:
    r = subprocess.run(
        [sys.executable, "-m", "overlaysim.cli", "sim", str(scenario), "--out", str(out)],
        env=_env(core, build),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("core: compiled" in r.stderr) == (core == "compiled")  # the run says which
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_compiled_build_loads_binaries(compiled_build: Path) -> None:
    r = _probe("compiled", compiled_build)
    assert r.returncode == 0, r.stderr
    core, path = r.stdout.split()
    assert core == "compiled" and path.endswith(corebuild_suffix())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quickstart", "churn", "endpoints-200"])
def test_compiled_gives_the_same_results_folder(
    compiled_build: Path, tmp_path: Path, name: str
) -> None:
    if name == "endpoints-200":
        scenario = tmp_path / "endpoints-200.yaml"
        scenario.write_text(ENDPOINT_RUN)
    else:
        scenario = ROOT / "scenarios" / f"{name}.yaml"
    pure = _run("python", compiled_build, scenario, tmp_path / "python")
    fast = _run("compiled", compiled_build, scenario, tmp_path / "compiled")
    assert "metrics.json" in pure and len(pure) > 3
    assert sorted(pure) == sorted(fast)
    differ = [f for f in pure if pure[f] != fast[f]]
    assert differ == [], f"files differ between the python and compiled runs: {differ}"
