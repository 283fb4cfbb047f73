"""Deterministic CSV encoding of record tables, and typed pandas frames to read them.

Formatting rules (so the same records always give the same bytes):

* floats are written with Python's shortest round-trip ``repr`` (``0.1``, ``12.0``),
  so reading a file back gives the exact value; a missing float is an empty cell;
* ints as decimal, bools as ``true``/``false``, strings as-is (quoted by the CSV
  dialect only when they hold a comma, quote or newline);
* ``\\n`` line endings, a header row, rows stably sorted by the schema's ``sort_by``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import IO, Any

import numpy as np
import pandas as pd

from overlaysim.metrics.records import ALL_TABLES, ColumnType, TableSchema

Rows = pd.DataFrame | Iterable[Mapping[str, Any]] | Iterable[Sequence[Any]]

_TRUE = frozenset({"true", "True", "TRUE", "1"})
_FALSE = frozenset({"false", "False", "FALSE", "0"})


def _missing(x: Any) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def _fmt_float(x: Any) -> str:
    if _missing(x):
        return ""
    f = float(x)
    return "" if math.isnan(f) else repr(f)


def _fmt_int(x: Any) -> str:
    if x.__class__ is int:
        return str(x)
    if _missing(x):
        raise ValueError("missing value in an int column")
    if isinstance(x, float | np.floating) and not float(x).is_integer():
        raise ValueError(f"non-integer value {x!r} in an int column")
    return str(int(x))


def _fmt_bool(x: Any) -> str:
    if isinstance(x, str):
        if x in _TRUE:
            return "true"
        if x in _FALSE:
            return "false"
        raise ValueError(f"not a bool: {x!r}")
    if _missing(x):
        raise ValueError("missing value in a bool column")
    return "true" if bool(x) else "false"


def _fmt_str(x: Any) -> str:
    return "" if _missing(x) else str(x)


def _fmt_any(x: Any) -> str:
    if isinstance(x, bool | np.bool_):
        return _fmt_bool(x)
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        return _fmt_float(x)
    return _fmt_str(x)


_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "float": _fmt_float,
    "nfloat": _fmt_float,
    "int": _fmt_int,
    "bool": _fmt_bool,
    "str": _fmt_str,
    "any": _fmt_any,
}


def schema_for(name: str, columns: Sequence[str] | None = None) -> TableSchema:
    """The schema of a known table, or an untyped one for an extra table."""
    if name in ALL_TABLES:
        schema = ALL_TABLES[name]
        if columns is not None and tuple(columns) != schema.column_names:
            raise ValueError(f"table {name!r} has columns {schema.column_names}, got {columns}")
        return schema
    if not columns:
        raise ValueError(f"unknown table {name!r}: pass its columns")
    return TableSchema(name, tuple((c, "any") for c in columns))  # type: ignore[misc]


def _columns(rows: Rows, cols: tuple[str, ...]) -> list[list[Any]]:
    """The table as one Python list per column (fast to sort and format in bulk)."""
    if isinstance(rows, pd.DataFrame):
        missing = [c for c in cols if c not in rows.columns]
        if missing:
            raise ValueError(f"frame lacks columns {missing}")
        return [rows[c].tolist() for c in cols]
    rows = rows if isinstance(rows, list) else list(rows)
    if not rows:
        return [[] for _ in cols]
    if isinstance(rows[0], Mapping):
        try:
            return [list(map(itemgetter(c), rows)) for c in cols]
        except KeyError:  # some rows omit keys: those cells are missing
            return [[r.get(c) for r in rows] for c in cols]
    lengths = set(map(len, rows))
    if lengths != {len(cols)}:
        bad = next(r for r in rows if len(r) != len(cols))
        raise ValueError(f"row has {len(bad)} fields, expected {len(cols)}: {tuple(bad)!r}")
    return [list(map(itemgetter(i), rows)) for i in range(len(cols))]


def _order(keys: list[list[Any]]) -> list[int]:
    """Stable sort order of rows by ``keys`` columns; missing values sort last."""
    n = len(keys[0])
    rows = list(zip(*keys, strict=True)) if len(keys) > 1 else keys[0]
    try:
        return sorted(range(n), key=rows.__getitem__)
    except TypeError:
        # None next to values, or mixed types: a slower key that orders anything.
        return sorted(range(n), key=lambda i: _tolerant(rows[i], len(keys) > 1))


def _tolerant(row: Any, multi: bool) -> tuple[Any, ...]:
    vals = row if multi else (row,)
    return tuple((_missing(v), "" if _missing(v) else str(v)) for v in vals)


def _format_column(typ: str, col: list[Any]) -> list[str]:
    if typ == "str":
        try:
            "".join(col)  # raises TypeError unless every value is a str
            return col
        except TypeError:
            pass
    elif typ in ("float", "nfloat"):
        try:
            arr = np.asarray(col, dtype=float)
        except (TypeError, ValueError):
            arr = None
        if arr is not None and not np.isnan(arr).any():
            return list(map(repr, arr.tolist()))
    elif typ == "int":
        try:
            arr = np.asarray(col)
        except (TypeError, ValueError):
            arr = None
        if arr is not None and arr.ndim == 1 and arr.dtype.kind in "iu":
            return list(map(str, arr.tolist()))
    fmt = _FORMATTERS[typ]
    return list(map(fmt, col))


def write_csv(f: IO[str], schema: TableSchema, rows: Rows) -> int:
    """Write ``rows`` as CSV to the text stream ``f``; return the number of rows."""
    cols = schema.column_names
    data = _columns(rows, cols)
    n = len(data[0]) if data else 0
    if schema.sort_by and n > 1:
        order = _order([data[cols.index(c)] for c in schema.sort_by])
        if order != list(range(n)):
            data = [[col[i] for i in order] for col in data]
    text = [_format_column(typ, col) for (_, typ), col in zip(schema.columns, data, strict=True)]
    w = csv.writer(f, lineterminator="\n")
    w.writerow(cols)
    w.writerows(zip(*text, strict=True))
    return n


def lists(df: pd.DataFrame, *names: str) -> list[list[Any]]:
    """Columns of ``df`` as Python lists: iterating these is far faster than Series."""
    return [df[n].tolist() for n in names]


def _pandas_dtype(typ: ColumnType | str) -> Any:
    return {"float": "float64", "nfloat": "float64", "int": "int64", "bool": "bool"}.get(typ, "str")


def read_csv(path: Any, schema: TableSchema) -> pd.DataFrame:
    """Read a table written by :func:`write_csv` with one ``pd.read_csv`` call.

    String columns keep empty cells as ``""``; missing floats become NaN.
    """
    types = schema.types()
    return pd.read_csv(
        path,
        dtype={c: _pandas_dtype(t) for c, t in types.items() if t != "bool"},
        true_values=["true"],
        false_values=["false"],
        keep_default_na=False,
        na_values={c: [""] for c, t in types.items() if t in ("float", "nfloat")},
    ).astype({c: "bool" for c, t in types.items() if t == "bool"})


def frame(schema: TableSchema | str, rows: Rows | None = None) -> pd.DataFrame:
    """A typed DataFrame of ``rows`` (default: empty), with the dtypes :func:`read_csv` gives.

    Lets a caller compute metrics from in-memory records without a CSV round trip.
    """
    if isinstance(schema, str):
        schema = ALL_TABLES[schema]
    cols = schema.column_names
    if isinstance(rows, pd.DataFrame):
        df = rows[list(cols)].copy()
    else:
        df = pd.DataFrame(dict(zip(cols, _columns(rows or [], cols), strict=True)))
    for c, t in schema.columns:
        if t == "str":
            if not (df[c].dtype == "str" and not df[c].isna().any()):
                df[c] = df[c].astype(object).where(df[c].notna(), "").astype("str")
        elif t == "bool":
            df[c] = df[c].map(lambda v: _fmt_bool(v) == "true").astype("bool")
        elif t != "any":
            df[c] = df[c].astype(_pandas_dtype(t))
    return df
