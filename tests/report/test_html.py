"""`overlaysim report --html`: one self-contained, escaped page."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html import escape
from pathlib import Path

import pytest

from overlaysim.cli import main
from overlaysim.metrics.results import PLOT_FILES, load_run
from overlaysim.report.html import render_html, write_html
from overlaysim.report.plots import write_plots
from overlaysim.report.summary import summary_rows
from overlaysim.scenario.loader import load_scenario
from overlaysim.sim.runner import run_simulation

QUICKSTART = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "qs"
    assert run_simulation(load_scenario(QUICKSTART), out, progress=False) == "complete"
    write_plots(load_run(out), out / "plots")
    return out


@pytest.fixture
def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run_dir, dest)
    return dest


def test_page_is_self_contained_with_summary_and_plots(run_copy):
    run = load_run(run_copy)
    dest = write_html(run)
    assert dest == run_copy / "report.html"
    page = dest.read_text(encoding="utf-8")
    for _section, measure, value in summary_rows(run.metrics):
        assert f"<td>{escape(measure)}</td>" in page
        assert f">{escape(value)}</td>" in page
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) == len(PLOT_FILES)
    assert base64.b64decode(imgs[0]) == (run_copy / "plots" / "convergence_cdf.png").read_bytes()
    assert "http://" not in page and "https://" not in page
    assert "href=" not in page
    assert re.findall(r'src="(?!data:)', page) == []
    assert "profile: lan" in page  # the resolved scenario
    assert "simulated per-link Bernoulli drop" in page  # a mechanism
    assert "complete" in page


def test_text_is_escaped(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["name"] = "<script>alert(1)</script> & co"
    manifest["status"] = "failed"
    manifest["error"] = "boom <b>"
    manifest["capabilities"] = {
        "vxlan": {"ok": False, "detail": "no <module>", "disables": "the data plane"}
    }
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    page = render_html(load_run(run_copy))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "boom &lt;b&gt;" in page
    assert "no &lt;module&gt;" in page and "the data plane" in page
    assert 'class="status-failed"' in page


def test_missing_plots_are_noted_not_linked(run_copy):
    shutil.rmtree(run_copy / "plots")
    page = render_html(load_run(run_copy))
    assert "data:image/png" not in page
    assert page.count("not drawn") == len(PLOT_FILES)
    assert "<img" not in page


def test_cli_report_html_to_path(run_copy, tmp_path, capsys):
    dest = tmp_path / "mail" / "page.html"
    assert main(["report", str(run_copy), "--no-plots", "--html", str(dest)]) == 0
    assert dest.is_file() and "data:image/png;base64," in dest.read_text()
    assert not (run_copy / "report.html").exists()
    assert main(["report", str(run_copy), "--html"]) == 0
    assert (run_copy / "report.html").is_file()
    assert "html:" in capsys.readouterr().out
