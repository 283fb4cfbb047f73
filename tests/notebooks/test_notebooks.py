"""Execute every analysis notebook top to bottom, as a user would, and check its output.

Each notebook runs in its own empty working directory on the ``python3`` kernel of this
interpreter's environment, generates its own (small) results, and must draw at least
one figure from them. Notebooks whose metadata says ``needs_emulation`` run Mininet when
this machine can; otherwise they must say clearly that the emulation was skipped (under
CI, where every tier must run, that is a failure).
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


def test_all_five_notebooks_are_present_and_stored_without_outputs():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        # One parameters cell near the top, so a user edits one place.
        assert code[0].source.startswith("# Parameters"), path.name
        assert sum(c.source.startswith("# Parameters") for c in code) == 1, path.name


@pytest.mark.parametrize("path", _params())
def test_notebook_executes_and_draws_from_its_own_results(path: Path, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    needs_emulation = bool(nb.metadata.get("overlaysim", {}).get("needs_emulation"))
    problems = emulation_problems()
    if needs_emulation and problems and _in_ci():
        pytest.fail(f"{path.name} needs emulation under CI: {'; '.join(problems)}")
    probe = nbformat.v4.new_code_cell("import sys\nprint('KERNEL-PREFIX=' + sys.prefix)")
    nb.cells.insert(0, probe)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    text = _text(nb)
    assert f"KERNEL-PREFIX={sys.prefix}\n" in text, "the kernel is not this environment's python"
    runs = _runs(tmp_path)
    generated = [r for r in runs if r["status"] == "complete"]
    if needs_emulation and problems:
        # It must say why, and must not pretend: no emulation folder, no comparison.
        assert SKIP_LINE in text
        assert not any(r["backend"] == "emu" for r in runs)
        if path.stem.startswith("04"):
            assert generated and _figures(nb) >= 1  # the simulator side is still drawn
        return
    assert generated, f"{path.name} wrote no complete results folder of its own"
    if needs_emulation:
        assert SKIP_LINE not in text
        assert any(r["backend"] == "emu" for r in generated)
    assert _figures(nb) >= 1, f"{path.name} drew no figure"
