"""Listings the testbed commands print (``network ls``, ``ps``, ``service ls/ps``).

One rule for all of them: a header and rows whose columns start at the same places,
each column's width written once (the last column is not padded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def print_table(columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[object]]) -> None:
    """Print ``columns`` (title, width; the last width is ignored) and then each row."""
    widths = [w for _, w in columns[:-1]]

    def line(cells: Sequence[object]) -> str:
        padded = "".join(format(c, f"<{w}") for c, w in zip(cells[:-1], widths, strict=True))
        return f"{padded}{cells[-1]}"

    print(line([title for title, _ in columns]))
    for row in rows:
        print(line(row))
