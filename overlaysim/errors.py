"""Errors a user can fix (bad input, missing capability), as opposed to bugs.

The CLI prints these as one clear message with exit status 2 instead of a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base for errors caused by the user's input or machine, not by a bug."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """All exception types the CLI reports as user errors."""
    types: list[type[BaseException]] = [UserError]
    try:
        from overlaysim.scenario.schema import ScenarioError
    except ImportError:  # pragma: no cover - during partial installs
        ScenarioError = None  # noqa: N806
    if ScenarioError is None:
        try:
            from overlaysim.scenario.loader import ScenarioError  # type: ignore[no-redef]
        except ImportError:  # pragma: no cover
            ScenarioError = None  # noqa: N806
    if ScenarioError is not None:
        types.append(ScenarioError)
    try:
        from overlaysim.core.cluster import ClusterError

        types.append(ClusterError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)
