"""Execute every analysis notebook top to bottom, as a user would, and check its output.

Each notebook runs in its own empty working directory on the ``python3`` kernel of this
interpreter's environment, generates its own (small) results, and must draw at least
one figure from them. A notebook's metadata ``overlaysim.needs_emulation`` is false, or
``"compare"`` (it runs Mininet when it can; without, the simulator side is still run and
drawn) or ``"measure"`` (without Mininet there is nothing to draw). Without emulation
such a notebook must say clearly that it skipped it and write no emulation folder; under
CI, where every tier must run, a machine that cannot emulate fails the test instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from overlaysim.emu.setup import emulation_problems

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Per cell; the longest cell is the quickstart emulation (about 1.5 min).
CELL_TIMEOUT_S = 400
#: Notebooks that run Mininet when they can: minutes, not seconds.
SLOW = {"04-sim-vs-emulation", "05-data-plane"}
SKIP_LINE = "EMULATION SKIPPED"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for out in _outputs(nb):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def _figures(nb: nbformat.NotebookNode) -> int:
    return sum(1 for out in _outputs(nb) if "image/png" in out.get("data", {}))


def _runs(folder: Path) -> list[dict]:
    """Manifests of the results folders written under ``folder``."""
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("manifest.json"))]


def _params() -> list:
    return [
        pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else [])
        for p in NOTEBOOKS
    ]


def test_all_six_notebooks_are_present_and_stored_without_outputs():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        # One parameters cell near the top, so a user edits one place.
        assert code[0].source.startswith("# Parameters"), path.name
        assert sum(c.source.startswith("# Parameters") for c in code) == 1, path.name


def _execute(nb: nbformat.NotebookNode, workdir: Path) -> str:
    """Run ``nb`` in place with ``workdir`` as working directory; return its text output."""
    probe = nbformat.v4.new_code_cell("import sys\nprint('KERNEL-PREFIX=' + sys.prefix)")
    nb.cells.insert(0, probe)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    text = _text(nb)
    assert f"KERNEL-PREFIX={sys.prefix}\n" in text, "the kernel is not this environment's python"
    return text


def _check_skipped(nb: nbformat.NotebookNode, text: str, workdir: Path) -> None:
    """A notebook that could not emulate says so and invents nothing."""
    assert SKIP_LINE in text
    runs = _runs(workdir)
    assert not any(r["backend"] == "emu" for r in runs)
    if nb.metadata["overlaysim"]["needs_emulation"] == "compare":
        # The simulator side is still run and drawn.
        assert any(r["status"] == "complete" for r in runs) and _figures(nb) >= 1
    else:
        assert _figures(nb) == 0


@pytest.mark.parametrize("path", _params())
def test_notebook_executes_and_draws_from_its_own_results(path: Path, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    needs_emulation = bool(nb.metadata.get("overlaysim", {}).get("needs_emulation"))
    problems = emulation_problems()
    if needs_emulation and problems and _in_ci():
        pytest.fail(f"{path.name} needs emulation under CI: {'; '.join(problems)}")
    text = _execute(nb, tmp_path)
    if needs_emulation and problems:
        _check_skipped(nb, text, tmp_path)
        return
    generated = [r for r in _runs(tmp_path) if r["status"] == "complete"]
    assert generated, f"{path.name} wrote no complete results folder of its own"
    if needs_emulation:
        assert SKIP_LINE not in text
        assert any(r["backend"] == "emu" for r in generated)
    assert _figures(nb) >= 1, f"{path.name} drew no figure"


@pytest.mark.parametrize(
    "path",
    [p for p in NOTEBOOKS if p.stem in SLOW],
    ids=lambda p: p.stem,
)
def test_emulation_notebooks_say_so_when_they_cannot_emulate(path: Path, tmp_path: Path):
    """The path a machine without root or Mininet takes, forced here on any machine."""
    nb = nbformat.read(path, as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code")
    assert "RUN_EMULATION = True" in params.source
    params.source = params.source.replace("RUN_EMULATION = True", "RUN_EMULATION = False")
    text = _execute(nb, tmp_path)
    _check_skipped(nb, text, tmp_path)
    assert "RUN_EMULATION is False" in text
