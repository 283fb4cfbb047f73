"""Load scenario and topology files: YAML in, validated ``Scenario``/``Topology`` out.

Steps: parse YAML (syntax errors give file:line:col; duplicate keys are errors), apply
``--set dotted.path=value`` overrides (values parsed as YAML), validate with the pydantic
schema, resolve the topology (generator, file or inline), then run the cross-field checks.
Every failure is one ``ScenarioError`` listing all problems, each naming the file, field path,
value and what was expected, plus the YAML line where the field was written.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel, Discriminator, Tag, ValidationError
from pydantic.fields import FieldInfo

from overlaysim.scenario.checks import check_scenario
from overlaysim.scenario.fields import NAME_EXPECTED
from overlaysim.scenario.generators import build_topology, topology_problems
from overlaysim.scenario.problems import Problem, ScenarioError, show
from overlaysim.scenario.schema import Scenario
from overlaysim.scenario.topologies import TopologyDoc, TopologyFile
from overlaysim.scenario.topology import Topology

__all__ = [
    "ScenarioError",
    "apply_overrides",
    "load_scenario",
    "load_topology",
    "validate_scenario",
]

#: Where ``topology: {file: ...}`` looks after the scenario's own folder.
REPO_ROOT = Path(__file__).resolve().parents[2]

Part = str | int
Lines = dict[tuple[Part, ...], int]


def load_scenario(path: str | os.PathLike[str], overrides: Iterable[str] | None = ()) -> Scenario:
    """Read, override, validate and resolve the scenario file at ``path``.

    ``overrides`` are ``dotted.path=value`` strings (``topology.hosts=5000``,
    ``events.0.percent=10``, ``events=[]``); numeric parts index lists and values are YAML.
    Raises ``ScenarioError`` naming every problem.
    """
    source = str(path)
    data, lines = _read_yaml(Path(path), source)
    return _validate(data, source, Path(path).parent, list(overrides or ()), lines)


def validate_scenario(
    data: Mapping[str, Any],
    *,
    source: str = "<scenario>",
    base_dir: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] | None = (),
) -> Scenario:
    """Validate scenario data already in memory (e.g. ``Scenario.resolved()`` or a sweep).

    ``source`` names it in messages; ``base_dir`` is where topology files are looked up
    first (default: the working directory). ``data`` is not modified.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    return _validate(data, source, base, list(overrides or ()), {})


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and check a topology file (see ``docs/scenarios.md`` for the format)."""
    return _topology_from_file(Path(path))


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> list[tuple[Part, ...]]:
    """Apply ``dotted.path=value`` overrides to ``data`` in place; return the paths set.

    Raises ``ScenarioError`` (source ``--set``) when an override is malformed or its path
    does not fit the data.
    """
    problems: list[Problem] = []
    touched = _apply(data, list(overrides), problems)
    if problems:
        raise ScenarioError("--set", problems)
    return [parts for parts, _ in touched]


# ---------------------------------------------------------------------------- pipeline


def _validate(
    data: Any, source: str, base_dir: Path, overrides: list[str], lines: Lines
) -> Scenario:
    data = copy.deepcopy(data)
    problems: list[Problem] = []
    touched = _apply(data, overrides, problems)
    if problems:
        raise ScenarioError(source, problems)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = [_translate(err, data, Scenario) for err in exc.errors()]
        raise ScenarioError(source, _locate(problems, lines, touched)) from None
    spec = scenario.topology
    if isinstance(spec, TopologyFile):
        try:
            topo = _topology_from_file(_find_topology(spec.file, base_dir, source))
        except ScenarioError as exc:  # its problems already name the topology file
            raise ScenarioError(source, exc.problems) from None
    else:
        if isinstance(spec, TopologyDoc):
            problems = topology_problems(spec, prefix="topology.")
            if problems:
                raise ScenarioError(source, _locate(problems, lines, touched))
        topo = build_topology(spec, seed=scenario.seed)
    problems = check_scenario(scenario, topo)
    if problems:
        raise ScenarioError(source, _locate(problems, lines, touched))
    if scenario.managers is None:
        scenario = scenario.model_copy(update={"managers": (topo.hosts[0],)})
    return scenario.with_topology(topo)


def _find_topology(name: str, base_dir: Path, source: str) -> Path:
    given = Path(name)
    candidates = [given] if given.is_absolute() else []
    candidates += [base_dir / given, REPO_ROOT / given]
    if len(given.parts) == 1:
        candidates.append(REPO_ROOT / "topologies" / given)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(dict.fromkeys(_display(c) for c in candidates))
    raise ScenarioError(
        source,
        [
            Problem.invalid(
                "topology.file", name, f"an existing topology file (looked for {looked})"
            )
        ],
    )


def _topology_from_file(path: Path) -> Topology:
    source = _display(path)
    data, lines = _read_yaml(path, source)
    try:
        doc = TopologyDoc.model_validate(data)
    except ValidationError as exc:
        problems = [_translate(err, data, TopologyDoc) for err in exc.errors()]
        raise ScenarioError(source, _locate(problems, lines, [], source)) from None
    problems = topology_problems(doc)
    if problems:
        raise ScenarioError(source, _locate(problems, lines, [], source))
    return build_topology(doc, name=doc.name or path.stem)


def _display(path: Path) -> str:
    """A path relative to the working directory when it is below it."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


# ---------------------------------------------------------------------------- YAML


def _read_yaml(path: Path, source: str) -> tuple[Any, Lines]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ScenarioError(
            source, [Problem(path="", message=f"cannot read file: {reason}")]
        ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem and exc.context_mark:
            what += f" ({exc.context} that starts at line {exc.context_mark.line + 1})"
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise ScenarioError(
            source, [Problem(path="", message=f"invalid YAML: {what}", line=line, column=col)]
        ) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(source, [Problem(path="", message=f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    if data is None:
        raise ScenarioError(source, [Problem(path="", message="empty file: expected a mapping")])
    lines: Lines = {}
    problems: list[Problem] = []
    _index(node, (), lines, problems)
    if problems:
        raise ScenarioError(source, problems)
    return data, lines


def _index(node: yaml.Node, at_path: tuple[Part, ...], lines: Lines, out: list[Problem]) -> None:
    """Record the line of every field, and report keys written twice (YAML keeps the last)."""
    lines[at_path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            line = key_node.start_mark.line + 1
            if key in first:
                out.append(
                    Problem(
                        path=_render(at_path + (key,)),
                        message=f"written twice (lines {first[key]} and {line}): expected once",
                        line=line,
                    )
                )
            first.setdefault(key, line)
            _index(value_node, at_path + (key,), lines, out)
            lines[at_path + (key,)] = line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, at_path + (i,), lines, out)


def _render(parts: Iterable[Part]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_PATH_PART = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


def _parse_path(path: str) -> tuple[Part, ...]:
    return tuple(int(i) if i else key for i, key in _PATH_PART.findall(path))


def _locate(
    problems: list[Problem],
    lines: Lines,
    touched: list[tuple[tuple[Part, ...], str]],
    source: str | None = None,
) -> list[Problem]:
    """Add the YAML line (or the override that set the value) to each problem; drop repeats."""
    out: dict[tuple[str, str], Problem] = {}
    for p in problems:
        parts = _parse_path(p.path)
        note = next(
            (f"set by --set {text}" for t, text in reversed(touched) if parts[: len(t)] == t), None
        )
        line = p.line
        if line is None and note is None:
            for n in range(len(parts), -1, -1):
                if parts[:n] in lines:
                    line = lines[parts[:n]]
                    break
        fixed = Problem(
            path=p.path,
            message=p.message,
            source=p.source or source,
            line=line,
            column=p.column,
            note=p.note or note,
        )
        out.setdefault((p.path, p.message), fixed)
    # File order: by line where known (stable, so same-line problems keep their order).
    return sorted(out.values(), key=lambda p: p.line if p.line is not None else 0)


# ---------------------------------------------------------------------------- overrides


def _apply(
    data: Any, overrides: list[str], out: list[Problem]
) -> list[tuple[tuple[Part, ...], str]]:
    """Apply overrides in order; return (path set, override text) pairs."""
    touched: list[tuple[tuple[Part, ...], str]] = []
    for text in overrides:
        where = f"--set {text}"
        path_text, eq, value_text = text.partition("=")
        keys = path_text.strip().split(".")
        if not eq or not all(keys):
            out.append(Problem.invalid(where, text, "dotted.path=value, e.g. events.0.percent=10"))
            continue
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError as exc:
            reason = getattr(exc, "problem", None) or "syntax error"
            out.append(Problem.invalid(where, value_text, f"a YAML value ({reason})"))
            continue
        parts = _set(data, keys, value, where, out)
        if parts is not None:
            touched.append((parts, text))
    return touched


def _set(data: Any, keys: list[str], value: Any, where: str, out: list[Problem]) -> tuple | None:
    """Set ``value`` at ``keys``; missing mapping keys are created, list indexes must exist.

    An index one past the end of a list appends to it.
    """
    cur = data
    parts: list[Part] = []
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        here = ".".join(keys[: depth + 1])
        if isinstance(cur, list):
            limit = len(cur) if last else len(cur) - 1
            if not key.isdigit() or int(key) > limit:
                span = f"an index from 0 to {limit}" if limit >= 0 else "index 0"
                size = f"{'.'.join(keys[:depth]) or 'the document'} has {len(cur)} items"
                out.append(Problem.invalid(where, here, f"{span} ({size})"))
                return None
            idx = int(key)
            parts.append(idx)
            if last:
                cur[idx : idx + 1] = [value]
            else:
                cur = cur[idx]
        elif isinstance(cur, dict):
            parts.append(key)
            if last:
                cur[key] = value
            else:
                if cur.get(key) is None:
                    cur[key] = {}
                cur = cur[key]
        else:
            parent = ".".join(keys[:depth]) or "the document"
            out.append(
                Problem.invalid(
                    where, here, f"a path into a mapping or list ({parent} is {show(cur)})"
                )
            )
            return None
    return tuple(parts)


# ---------------------------------------------------------------------------- pydantic errors


def _translate(err: Mapping[str, Any], data: Any, root: type[BaseModel]) -> Problem:
    """One pydantic error as a Problem with a clean path and an 'expected' phrase."""
    loc = tuple(p for p in err["loc"] if p != "[key]")  # a bad mapping key: name the key
    parts, owner, info, ann = _resolve(loc, root)
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if (kind == "missing" and parts and isinstance(parts[-1], int)) or kind == "too_long":
        # Fixed-size lists are pairs ([a, b] links and container pairs): report the list.
        pair = parts[:-1] if kind == "missing" else parts
        return Problem.invalid(_render(pair), _dig(data, pair), "a pair of names [a, b]")
    path = _render(parts)
    if kind == "finite_number":
        return Problem.invalid(path, value, "a finite number")
    if kind == "missing":
        return Problem.missing(path, _field_expect(info, ann))
    if kind == "extra_forbidden":
        allowed = list(owner.model_fields) if owner else []
        near = difflib.get_close_matches(str(parts[-1]), allowed, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        return Problem(
            path=path,
            message=f"unknown field (value {show(value)}): expected one of {', '.join(allowed)}"
            + hint,
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key = str(ctx.get("discriminator", "")).strip("'")
        key = "generator" if key.endswith("()") else key
        tags = _union_tags(ann)
        if root is Scenario and parts == ["topology"]:
            tags = [t for t in tags if t not in ("file", "inline")]
            expected = f"one of {', '.join(tags)} (or file: to load a topology file)"
        else:
            expected = f"one of {', '.join(tags)}"
        if not isinstance(_dig(data, parts), dict):
            return Problem.invalid(path, _dig(data, parts), f"a mapping with {key}: {expected}")
        if kind == "union_tag_not_found":
            return Problem.missing(_render([*parts, key]), expected)
        return Problem.invalid(_render([*parts, key]), ctx.get("tag"), expected)
    if kind == "value_error":
        return Problem.invalid(path, value, str(ctx.get("error") or err["msg"]))
    if kind == "literal_error":
        options = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        return Problem.invalid(path, value, f"one of {options}")
    if kind in ("string_pattern_mismatch", "string_too_long"):
        return Problem.invalid(path, value, f"{NAME_EXPECTED}, at most 63 characters")
    if kind == "string_too_short":  # a word of a command
        return Problem.invalid(path, value, "a non-empty string")
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return Problem.invalid(path, value, "a non-empty list" if n == 1 else f"{n} or more items")
    return Problem.invalid(path, value, _field_expect(info, ann, prefer_type=True))


def _dig(data: Any, parts: list[Part]) -> Any:
    for part in parts:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _resolve(
    loc: tuple[Part, ...], root: type[BaseModel]
) -> tuple[list[Part], type[BaseModel] | None, FieldInfo | None, Any]:
    """Follow a pydantic error location through the schema types.

    Returns the user-facing path (union tags removed), the model owning the last field, that
    field's FieldInfo (None inside lists) and the annotation expected at the location.
    """
    parts: list[Part] = []
    ann: Any = root
    owner: type[BaseModel] | None = None
    info: FieldInfo | None = None
    for part in loc:
        ann = _strip(ann)
        if _is_union(ann):
            members = _union_members(ann)
            if isinstance(part, str) and part in members:
                ann = members[part]
                continue
        parts.append(part)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            owner, info = ann, ann.model_fields.get(str(part))
            ann = info.annotation if info else None
            if info and info.discriminator:  # a tagged union field keeps its tagging
                ann = Annotated[ann, Discriminator(info.discriminator)]
            continue
        info = None
        origin, args = get_origin(ann), get_args(ann)
        if origin is tuple and args and args[-1] is not Ellipsis:
            ann = args[part] if isinstance(part, int) and part < len(args) else None
        elif origin in (tuple, list) and args:
            ann = args[0]
        elif origin is dict and args:
            ann = args[1]
        else:
            ann = None
    return parts, owner, info, ann


def _strip(ann: Any) -> Any:
    """Drop ``Annotated`` wrappers (keeping tagged unions intact) and ``| None``."""
    while True:
        if get_origin(ann) is Annotated:
            inner = get_args(ann)[0]
            if _is_union(inner):
                return inner
            ann = inner
        elif _is_union(ann):
            rest = [a for a in get_args(ann) if a is not type(None)]
            if len(rest) != 1:
                return ann
            ann = rest[0]
        else:
            return ann


def _is_union(ann: Any) -> bool:
    return get_origin(ann) in (Union, types.UnionType)


def _union_members(ann: Any) -> dict[str, Any]:
    """Tag -> member model of a tagged union (Tag metadata, else the Literal field value)."""
    out: dict[str, Any] = {}
    for member in get_args(ann):
        tag = None
        if get_origin(member) is Annotated:
            tag = next((m.tag for m in get_args(member)[1:] if isinstance(m, Tag)), None)
            member = get_args(member)[0]
        if tag is None and isinstance(member, type) and issubclass(member, BaseModel):
            for f in member.model_fields.values():
                if get_origin(f.annotation) is Literal and len(get_args(f.annotation)) == 1:
                    tag = str(get_args(f.annotation)[0])
                    break
        if tag is not None:
            out[tag] = member
    return out


def _union_tags(ann: Any) -> list[str]:
    return list(_union_members(_strip(ann))) if ann is not None else []


def _field_expect(info: FieldInfo | None, ann: Any, prefer_type: bool = False) -> str:
    """What a field expects: its description, or a phrase from its type and bounds."""
    typed = _type_expect(ann, list(info.metadata) if info else [])
    if info is not None and info.description and not (prefer_type and typed):
        return info.description
    return typed or "a valid value"


def _type_expect(ann: Any, metadata: list[Any]) -> str | None:
    while get_origin(ann) is Annotated:
        metadata = metadata + list(get_args(ann)[1:])
        ann = get_args(ann)[0]
    ann = _strip(ann)
    if ann is bool:
        return "true or false"
    if ann in (int, float):
        noun = "an integer" if ann is int else "a number"
        b = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le", "lt") if _has(m, k)}
        if "ge" in b and "le" in b:
            return f"{noun} between {b['ge']} and {b['le']}"
        words = [f"{w} {b[k]}" for k, w in _BOUND_WORDS if k in b]
        return f"{noun} {' and '.join(words)}" if words else noun
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(ann))
    if ann is str:
        return NAME_EXPECTED if any(getattr(m, "pattern", None) for m in metadata) else "a string"
    if get_origin(ann) in (tuple, list):
        return "a list"
    if get_origin(ann) is dict:
        return "a mapping"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return f"a mapping with fields {', '.join(ann.model_fields)}"
    if _is_union(ann):
        return "a mapping"
    return None


_BOUND_WORDS = (
    ("ge", "of at least"),
    ("gt", "greater than"),
    ("le", "of at most"),
    ("lt", "below"),
)


def _has(meta: Any, key: str) -> bool:
    kinds = {"ge": at.Ge, "gt": at.Gt, "le": at.Le, "lt": at.Lt}
    return isinstance(meta, kinds[key])
