"""The optional compiled build of the table layer and queue (``make compiled``, mypyc).

It must run the same code as the sources: the same results folder, byte for byte, for
the same seed; a build that no longer matches its sources must never be used; and
nothing loads it unless asked.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build_compiled.py"
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _env(build: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["OVERLAYSIM_COMPILED_DIR"] = str(build)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _probe(choice: str | None, build: Path) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter that chooses ``choice`` (None: chooses nothing), then imports
    the tables and prints the build in use and where the tables came from."""
    code = "import overlaysim.corebuild as c\n"
    if choice is not None:
        code += (
            "try:\n"
            f"    c.install({choice!r})\n"
            "except c.CoreBuildError as e:\n"
            "    raise SystemExit(f'refused: {e}')\n"
        )
    code += "import overlaysim.core.tables as t\nprint(c.status().core); print(t.__file__)\n"
    return subprocess.run(
        [sys.executable, "-c", code], env=_env(build), capture_output=True, text=True
    )


def _fake_build(tmp_path: Path, sha: str) -> Path:
    """A BUILD.json naming tables.py with hash ``sha`` (its binaries are placeholders)."""
    binary = "lib/overlaysim/core/tables" + SUFFIX
    runtime = "lib/fake__mypyc" + SUFFIX
    for b in (binary, runtime):
        (tmp_path / b).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / b).write_bytes(b"not a real extension")
    info = {
        "python": sys.version.split()[0],
        "ext_suffix": SUFFIX,
        "mypy": "x",
        "runtime": {"module": "fake__mypyc", "binary": runtime},
        "modules": {
            "overlaysim.core.tables": {
                "source": "overlaysim/core/tables.py",
                "sha256": sha,
                "binary": binary,
            }
        },
    }
    (tmp_path / "BUILD.json").write_text(json.dumps(info))
    return tmp_path


def test_nothing_loads_a_build_unless_asked(tmp_path: Path) -> None:
    sha = hashlib.sha256((ROOT / "overlaysim/core/tables.py").read_bytes()).hexdigest()
    _fake_build(tmp_path, sha)  # matches the sources (its binaries would fail to load)
    for choice in (None, "python"):
        r = _probe(choice, tmp_path)
        assert r.returncode == 0, r.stderr
        core, path = r.stdout.split()
        assert core == "python" and path.endswith("tables.py")


def test_no_build_means_sources_and_compiled_is_refused(tmp_path: Path) -> None:
    r = _probe("auto", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "python"
    forced = _probe("compiled", tmp_path)
    assert forced.returncode != 0
    assert "refused: --core compiled: no compiled build" in forced.stderr
    assert "make compiled" in forced.stderr


def test_a_stale_build_is_never_used(tmp_path: Path) -> None:
    _fake_build(tmp_path, "0" * 64)  # built from other sources than the ones on disk
    r = _probe("auto", tmp_path)
    assert r.returncode == 0, r.stderr
    core, path = r.stdout.split()
    assert core == "python" and path.endswith("tables.py")
    forced = _probe("compiled", tmp_path)
    assert forced.returncode != 0
    assert "stale: overlaysim/core/tables.py changed" in forced.stderr
    assert "Traceback" not in forced.stderr


def test_the_cli_refuses_a_missing_build_plainly(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "overlaysim.cli", "sim", str(ROOT / "scenarios/quickstart.yaml"),
         "--out", str(tmp_path / "out"), "--core", "compiled"],
        env=_env(tmp_path / "nothing-here"), capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.startswith("overlaysim: error: --core compiled: no compiled build")
    assert not (tmp_path / "out").exists()  # refused before anything ran


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
    """A build of the current sources, made here (mypy is a test dependency; needs gcc)."""
    pytest.importorskip("mypyc", reason="mypy not installed (pip install -e '.[compiled]')")
    out = tmp_path_factory.mktemp("compiled")
    r = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(out)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _run(core: str, build: Path, scenario: Path, out: Path) -> dict[str, bytes]:
    r = subprocess.run(
        [sys.executable, "-m", "overlaysim.cli", "sim", str(scenario), "--out", str(out),
         "--core", core],
        env=_env(build), capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("core: compiled (2 modules" in r.stderr) == (core == "compiled")  # says which
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_the_build_loads_binaries(compiled_build: Path) -> None:
    r = _probe("compiled", compiled_build)
    assert r.returncode == 0, r.stderr
    core, path = r.stdout.split()
    assert core == "compiled" and path.endswith(SUFFIX)


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
    assert "metrics.json" in pure and "convergence.csv" in pure and len(pure) > 3
    assert sorted(pure) == sorted(fast)
    differ = [f for f in pure if pure[f] != fast[f]]
    assert differ == [], f"files differ between the python and compiled runs: {differ}"
