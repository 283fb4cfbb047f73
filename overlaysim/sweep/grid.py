"""Sweep grids: ``--grid key=v1,v2`` specs, their cartesian product, and point ids.

A *point* is one combination of grid values; it becomes ``--set key=value`` overrides
for the scenario loader and a folder name (its *id*) under the sweep's output folder.
Ids are stable (keys sorted, values in a canonical form) so a resumed sweep finds the
runs of an earlier one, and readable (``events.0.percent=5__topology.hosts=20``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from overlaysim.errors import UserError

#: Index columns a grid key may not take.
RESERVED_KEYS = frozenset({"point", "seed", "status", "error", "path"})
#: Characters kept as they are in a point id; anything else is replaced.
_SAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
#: A point id longer than this is cut and made unique with a hash.
MAX_ID_LEN = 120


class SweepError(UserError):
    """A sweep definition is wrong (grid syntax, seeds, a value the scenario rejects)."""


@dataclass(frozen=True, slots=True)
class Grid:
    """One ``--grid`` axis: a dotted scenario path and the values to try.

    ``texts`` are the values as written (handed to the loader as YAML); ``values`` are
    the same parsed as YAML.
    """

    key: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Point:
    """One combination of grid values, keys in sorted order."""

    keys: tuple[str, ...]
    values: tuple[Any, ...]
    texts: tuple[str, ...]

    @property
    def overrides(self) -> list[str]:
        """The point as loader overrides (``key=value`` strings)."""
        return [f"{k}={t}" for k, t in zip(self.keys, self.texts, strict=True)]

    @property
    def mapping(self) -> dict[str, Any]:
        """Grid key -> parsed value."""
        return dict(zip(self.keys, self.values, strict=True))

    @property
    def id(self) -> str:
        """The folder name of this point: ``key=value`` pairs joined by ``__``."""
        return point_id(self.mapping)

    def describe(self) -> str:
        """``key=value, key=value`` for messages (``(no grid)`` when empty)."""
        return ", ".join(self.overrides) or "(no grid)"


def canonical(value: Any) -> str:
    """A value rendered the same way whatever its spelling (``5``, ``[a, b]``, ``lan``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def point_id(mapping: dict[str, Any]) -> str:
    """The stable, filesystem-safe id of a point given as key -> value.

    When characters had to be replaced, or the id is long, a short hash of the exact
    text is appended so two different points never share a folder.
    """
    if not mapping:
        return "base"
    text = "__".join(f"{k}={canonical(mapping[k])}" for k in sorted(mapping))
    slug = _SAFE.sub("_", text)
    if slug != text or len(slug) > MAX_ID_LEN:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        slug = f"{slug[: MAX_ID_LEN - 9]}-{digest}"
    return slug


def split_values(text: str) -> list[str]:
    """Split ``v1,v2`` on commas outside brackets, braces and quotes."""
    parts: list[str] = []
    depth = 0
    quote: str | None = None
    current: list[str] = []
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    if depth != 0 or quote:
        raise ValueError("unbalanced brackets or quotes")
    return parts


def parse_grid(spec: str) -> Grid:
    """Parse ``key=v1,v2,...`` (values are YAML; commas inside ``[...]`` stay).

    Raises ``SweepError`` naming the spec when it is malformed.
    """
    where = f"--grid {spec!r}"
    key, sep, rest = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SweepError(f"{where}: expected KEY=V1,V2,... (e.g. topology.hosts=20,50)")
    if not _KEY.match(key):
        raise SweepError(f"{where}: {key!r} is not a dotted scenario path (e.g. events.0.percent)")
    if key in RESERVED_KEYS:
        hint = " (use --seeds or --seed-list)" if key == "seed" else ""
        raise SweepError(f"{where}: {key!r} cannot be swept{hint}")
    try:
        texts = split_values(rest)
    except ValueError as exc:
        raise SweepError(f"{where}: {exc}") from None
    values = []
    for t in texts:
        if not t:
            raise SweepError(f"{where}: empty value (remove the extra comma)")
        try:
            values.append(yaml.safe_load(t))
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise SweepError(f"{where}: value {t!r} is not valid YAML ({problem})") from None
    ids = [canonical(v) for v in values]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SweepError(f"{where}: value {dupes[0]} is listed twice")
    return Grid(key=key, values=tuple(values), texts=tuple(texts))


def expand_points(grids: Sequence[Grid]) -> list[Point]:
    """The cartesian product of ``grids`` (one point without grids), sorted by point."""
    keys = [g.key for g in grids]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise SweepError(f"--grid {dupes[0]} is given twice (list all values in one --grid)")
    ordered = sorted(grids, key=lambda g: g.key)
    points = []
    for combo in itertools.product(*(range(len(g.values)) for g in ordered)):
        points.append(
            Point(
                keys=tuple(g.key for g in ordered),
                values=tuple(g.values[i] for g, i in zip(ordered, combo, strict=True)),
                texts=tuple(g.texts[i] for g, i in zip(ordered, combo, strict=True)),
            )
        )
    return sorted(points, key=lambda p: point_sort_key(p.mapping))


def point_sort_key(mapping: dict[str, Any]) -> tuple[Any, ...]:
    """Orders points by key, then numbers numerically and anything else as text."""
    out: list[Any] = []
    for k in sorted(mapping):
        v = mapping[k]
        if isinstance(v, int | float) and not isinstance(v, bool):
            out.append((k, 0, float(v), ""))
        else:
            out.append((k, 1, 0.0, canonical(v)))
    return tuple(out)


def parse_seed_list(text: str) -> list[int]:
    """``3,7,11`` -> ``[3, 7, 11]``; raises ``SweepError`` on anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SweepError(f"--seed-list {text!r}: expected integers separated by commas") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SweepError(f"--seed-list {text!r}: expected distinct non-negative integers")
    return seeds


def seeds_from(count: int | None, listed: Iterable[int] | None) -> list[int]:
    """The seeds of a sweep: ``listed`` as given, else ``0..count-1`` (default one seed)."""
    if listed is not None:
        return list(listed)
    n = 1 if count is None else count
    if n < 1:
        raise SweepError(f"--seeds {n}: expected at least 1")
    return list(range(n))
