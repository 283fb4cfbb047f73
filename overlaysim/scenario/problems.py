"""Problems with a scenario or topology file, and the one error that reports them all.

Every check (field by field in the models, across fields in ``checks``, while reading
files in ``loader``, the dry run in ``world.dryrun``) produces ``Problem`` values;
``ScenarioError`` carries them and renders each as one line naming the file, the field
path, the value and what was expected.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from overlaysim.errors import UserError

_MAX_SHOWN = 50  # problems printed in one message; all stay in ``ScenarioError.problems``


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with a scenario or topology file.

    ``path`` is the field path (``events[3].percent``; empty for the whole document) and
    ``message`` says what the value is and what was expected. ``source`` names another file
    than the scenario's (a topology file); ``line``/``column`` point into the YAML text.
    """

    path: str
    message: str
    source: str | None = None
    line: int | None = None
    column: int | None = None
    note: str | None = None

    @classmethod
    def invalid(cls, path: str, value: Any, expected: str, **kw: Any) -> Problem:
        return cls(path=path, message=f"{show(value)} is not valid: expected {expected}", **kw)

    @classmethod
    def missing(cls, path: str, expected: str, **kw: Any) -> Problem:
        return cls(path=path, message=f"missing: expected {expected}", **kw)

    def render(self, default_source: str) -> str:
        """One line: ``file: path: message``, or ``file:line:col: message`` for syntax."""
        where = self.source or default_source
        if self.column is not None:
            where = f"{where}:{self.line}:{self.column}"
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        if self.note:
            text += f" ({self.note})"
        elif self.line is not None and self.column is None:
            text += f" (line {self.line})"
        return text


class ScenarioError(UserError, ValueError):
    """A scenario (or topology file) is invalid; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = [p.render(source) for p in self.problems[:_MAX_SHOWN]]
        if len(self.problems) > _MAX_SHOWN:
            lines.append(f"{source}: ... and {len(self.problems) - _MAX_SHOWN} more problems")
        super().__init__("\n".join(lines) or f"{source}: invalid")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across worker processes
        return (type(self), (self.source, self.problems))


def show(value: Any, limit: int = 60) -> str:
    """A short rendering of a value for messages: strings quoted, long values cut."""
    if isinstance(value, str):
        text = f'"{value}"'
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, list | tuple | dict):
        text = json.dumps(value, default=str)
    else:
        text = repr(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    return text if len(text) <= limit else text[: limit - 3] + "..."
