"""A run as one self-contained HTML page, to mail or project.

The page holds the summary table (the rows of :func:`summary_rows`), the figures as
base64 PNG ``data:`` URIs, the resolved scenario as YAML, the status, the protocol
mechanisms and the capabilities of the machine. It references nothing outside itself:
no scripts, stylesheets, fonts or links. Every piece of text from the run is escaped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

import yaml

from overlaysim.metrics.atomic import atomic_write_bytes
from overlaysim.metrics.results import PLOT_FILES, PLOTS_DIR, Run
from overlaysim.report.summary import run_warnings, summary_rows

REPORT_HTML = "report.html"

_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1340px; color: #222; }
h1 { font-size: 1.8em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 1.05em; }
td, th { padding: 0.3em 0.9em; border-bottom: 1px solid #e4e4e4; text-align: left; }
td.value { text-align: right; font-weight: bold; }
td.section { color: #777; }
.status-complete { color: #186a18; } .status-failed, .status-running { color: #b00; }
.status-interrupted { color: #b06000; }
.ok { color: #186a18; } .missing { color: #b00; } .warning { color: #b06000; }
pre { background: #f5f5f5; padding: 1em; overflow-x: auto; font-size: 0.95em; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""


def _text(x: Any) -> str:
    """Escaped text of any value (dicts and lists as compact JSON)."""
    if isinstance(x, Mapping | list | tuple):
        x = json.dumps(x, sort_keys=True, default=str)
    return escape("—" if x is None else str(x))


def _summary(run: Run) -> str:
    if run.metrics is None:
        return "<p>No <code>metrics.json</code> in this folder.</p>"
    rows, last = [], None
    for section, measure, value in summary_rows(run.metrics):
        shown = section if section != last else ""
        last = section
        rows.append(
            f'<tr><td class="section">{_text(shown)}</td><td>{_text(measure)}</td>'
            f'<td class="value">{_text(value)}</td></tr>'
        )
    return "<table><tr><th></th><th>measure</th><th>value</th></tr>" + "".join(rows) + "</table>"


def _warnings(run: Run) -> str:
    """The run's warnings (overloaded emulator, delay-line ceiling), one paragraph each."""
    return "".join(
        f'<p class="warning"><strong>Warning:</strong> {_text(w)}</p>\n' for w in run_warnings(run)
    )


def _plots(plots: Mapping[str, bytes]) -> str:
    parts = []
    for name in PLOT_FILES:
        data = plots.get(name)
        if data is None:
            parts.append(f"<p>{_text(name)}: not drawn (run <code>overlaysim report</code>).</p>")
            continue
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f'<img alt="{_text(name)}" src="data:image/png;base64,{b64}">')
    return "\n".join(parts)


def _capabilities(caps: Mapping[str, Any]) -> str:
    if not caps:
        return "<p>None probed (the simulator needs none).</p>"
    rows = []
    for name, cap in caps.items():
        if isinstance(cap, Mapping):
            ok = bool(cap.get("ok"))
            detail, disables = cap.get("detail", ""), "" if ok else cap.get("disables", "")
        else:
            ok, detail, disables = bool(cap), "", ""
        cls, word = ("ok", "yes") if ok else ("missing", "no")
        rows.append(
            f'<tr><td>{_text(name)}</td><td class="{cls}">{word}</td>'
            f"<td>{_text(detail)}</td><td>{_text(disables)}</td></tr>"
        )
    head = "<tr><th>capability</th><th>present</th><th>detail</th><th>missing disables</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _key_values(items: Mapping[str, Any], empty: str) -> str:
    if not items:
        return f"<p>{_text(empty)}</p>"
    rows = "".join(f"<tr><td>{_text(k)}</td><td>{_text(v)}</td></tr>" for k, v in items.items())
    return f"<table>{rows}</table>"


def _read_plots(run: Run) -> dict[str, bytes]:
    out = {}
    for name in PLOT_FILES:
        f = run.path / PLOTS_DIR / name
        if f.is_file():
            out[name] = f.read_bytes()
    return out


def render_html(run: Run, plots: Mapping[str, bytes] | None = None) -> str:
    """The page for ``run``. ``plots`` maps plot file names to PNG bytes (default: the
    files in ``<run>/plots``; a missing one is noted on the page)."""
    m = run.manifest
    plots = _read_plots(run) if plots is None else plots
    status = run.status
    error = m.get("error")
    status_html = f'<span class="status-{_text(status)}">{_text(status)}</span>'
    if error:
        status_html += f" — {_text(error)}"
    scenario = m.get("scenario")
    scenario_yaml = (
        yaml.safe_dump(scenario, sort_keys=False, allow_unicode=True) if scenario else "(none)"
    )
    versions = m.get("versions") or {}
    ident = (
        f"backend {_text(m.get('backend'))}, seed {_text(m.get('seed'))}, "
        f"commit {_text(m.get('git_commit'))}"
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_text(run.name)} — overlaysim report</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_text(run.name)}</h1>
<p>Status: {status_html}<br>{ident}</p>
<h2>Summary</h2>
{_warnings(run)}{_summary(run)}
<h2>Figures</h2>
{_plots(plots)}
<h2>Mechanisms</h2>
{_key_values(m.get("mechanisms") or {}, "None recorded.")}
<h2>Capabilities</h2>
{_capabilities(m.get("capabilities") or {})}
<h2>Scenario (resolved)</h2>
<pre>{_text(scenario_yaml)}</pre>
<h2>Versions</h2>
{_key_values(versions, "None recorded.")}
</body>
</html>
"""


def write_html(run: Run, dest: Path | str | None = None) -> Path:
    """Write the page to ``dest`` (default ``<run>/report.html``) and return its path."""
    dest = Path(dest) if dest is not None else run.path / REPORT_HTML
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest, render_html(run).encode("utf-8"))
    return dest
