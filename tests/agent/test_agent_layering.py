"""The agent package imports only the core and itself (the emulator builds on it)."""

from __future__ import annotations

import ast
from pathlib import Path

import overlaysim.agent

AGENT = Path(overlaysim.agent.__file__).resolve().parent


def _imported(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m.startswith("overlaysim")}


def test_agent_imports_only_core_and_itself() -> None:
    allowed = ("overlaysim.agent", "overlaysim.core")
    bad = {
        f"{path.relative_to(AGENT)}: {module}"
        for path in sorted(AGENT.rglob("*.py"))
        for module in _imported(path)
        if not module.startswith(allowed)
    }
    assert bad == set()


def test_dataplane_knows_nothing_of_gossip_or_the_daemon() -> None:
    upper = ("daemon", "containers", "keys", "programmer", "control", "manager", "transport")
    bad = {
        f"{path.name}: {module}"
        for path in sorted((AGENT / "dataplane").glob("*.py"))
        for module in _imported(path)
        if module.startswith(tuple(f"overlaysim.agent.{m}" for m in upper))
    }
    assert bad == set()
