"""The layering of the packages, checked by walking every import in the source.

Each package's ``__init__`` docstring says what it may import; :data:`ALLOWED` is the same
list. The package graph must be a DAG (lazy imports inside functions count too); the
module graph must have no cycle, neither of import-time imports nor of every import
(lazy and ``if TYPE_CHECKING`` ones included: two modules that name each other's types
are one concept, or need an interface between them, like ``emu/underlay_view.py``); and
no module reaches into a private member (``obj._name``) it does not define itself.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "overlaysim"

#: package (or top-level module) -> what it may import from the project.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    # Chooses the build of the core's hot modules before they are imported: nothing.
    "corebuild": set(),
    "errors": {"core"},
    "agent": {"core"},
    "scenario": {"core", "errors"},
    "metrics": {"core", "errors"},
    "world": {"core", "errors", "scenario", "metrics"},
    "report": {"core", "errors", "scenario", "metrics"},
    "sim": {"core", "errors", "scenario", "metrics", "world"},
    "emu": {"core", "errors", "scenario", "metrics", "world", "agent"},
    "lab": {"core", "errors", "scenario", "metrics", "world", "agent", "emu"},
    "sweep": {"core", "errors", "scenario", "metrics", "world", "report", "sim", "emu"},
    "known_issues": {"core", "errors", "scenario", "metrics", "sim", "emu"},
    "testbed_cli": {"core", "errors", "agent", "emu", "lab", "scenario", "metrics", "listing"},
    "service_cli": {"core", "errors", "agent", "emu", "listing"},
    "listing": set(),  # the testbed commands' tables
    "run_cli": {"*"},  # the scenario commands run everything: validate, sim, sweep, emu
    "results_cli": {"core", "errors", "scenario", "metrics", "report"},
    "host_cli": {"core", "errors", "agent", "emu", "lab", "scenario", "metrics", "world"},
    "cli": {"*"},  # the command line sits on top of everything
    "": set(),  # overlaysim/__init__.py: the version only
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(path: Path, *, import_time_only: bool) -> set[str]:
    """Project modules imported by ``path`` (``import_time_only``: at module level, outside
    ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if not (import_time_only and "TYPE_CHECKING" in test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
            elif not import_time_only:
                visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)])

    visit(tree.body)
    return {m for m in found if m == "overlaysim" or m.startswith("overlaysim.")}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := dfs(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := dfs(n)):
            return found
    return None


def test_packages_import_only_what_their_docstring_allows() -> None:
    modules = _modules()
    wrong = []
    for name, path in sorted(modules.items()):
        src = _package(name)
        allowed = ALLOWED.get(src)
        assert allowed is not None, f"{name}: package {src!r} is missing from ALLOWED"
        if "*" in allowed:
            continue
        for imp in sorted(_imports(path, import_time_only=False)):
            dst = _package(imp)
            if dst and dst != src and dst not in allowed:
                wrong.append(f"{name} imports {imp}")
    assert wrong == []


def test_no_import_cycles() -> None:
    modules = _modules()
    packages: dict[str, set[str]] = defaultdict(set)
    module_graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for imp in _imports(path, import_time_only=False):
            if _package(imp) != _package(name):
                packages[_package(name)].add(_package(imp))
        deps = set()
        for imp in _imports(path, import_time_only=True):
            # ``from pkg import name`` may name a submodule or an attribute
            target = imp if imp in modules else imp.rsplit(".", 1)[0]
            if target in modules and target != name:
                deps.add(target)
        module_graph[name] = deps
    assert _cycle(packages) is None, f"package cycle: {' -> '.join(_cycle(packages) or [])}"
    # a package __init__ importing its own submodules is not a cycle worth reporting
    for name in module_graph:
        module_graph[name] = {d for d in module_graph[name] if not name.startswith(d + ".")}
    assert _cycle(module_graph) is None, f"import cycle: {' -> '.join(_cycle(module_graph) or [])}"


def _module_graph(modules: dict[str, Path], *, import_time_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imp in _imports(path, import_time_only=import_time_only):
            target = imp if imp in modules else imp.rsplit(".", 1)[0]
            # a package __init__ importing its own submodules is not a cycle worth reporting
            if target in modules and target != name and not name.startswith(target + "."):
                deps.add(target)
        graph[name] = deps
    return graph


def test_no_module_cycle_even_through_lazy_or_type_only_imports() -> None:
    graph = _module_graph(_modules(), import_time_only=False)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


#: The standard library's private names the project may use anywhere.
STDLIB_PRIVATE_OK = {"os._exit", "argparse._SubParsersAction"}
#: Private members a module may use on objects other than ``self``/``cls`` although it
#: does not define them itself.
PRIVATE_OK = {
    # RunRecord.create writes the first line of a new record through its base Journal
    ("overlaysim.emu.record", "rec._append"),
}


def _defined(tree: ast.Module) -> set[str]:
    """Names a module defines: functions, classes, module/class names, ``self.x`` stores."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if ast.unparse(node.value) in ("self", "cls"):
                out.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.add(node.target.id)
        elif isinstance(node, ast.Assign):
            out.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return out


def test_no_module_reaches_into_private_members_of_another() -> None:
    reaches = []
    for name, path in sorted(_modules().items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = _defined(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            base = ast.unparse(node.value)
            if node.attr.startswith("__") or base in ("self", "cls") or base.startswith("super("):
                continue
            used = f"{base}.{node.attr}"
            if node.attr in own or used in STDLIB_PRIVATE_OK or (name, used) in PRIVATE_OK:
                continue
            reaches.append(f"{name}:{node.lineno}: {used}")
    assert reaches == []


def test_the_walker_sees_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
