"""Errors a user can fix (bad input, missing capability), as opposed to bugs.

The CLI prints these as one clear message with exit status 2 instead of a traceback.
Imports only the core (for ``ClusterError``); every package may import this module.
"""

from __future__ import annotations


class UserError(Exception):
    """Base for errors caused by the user's input or machine, not by a bug."""


class RunFailed(RuntimeError):
    """A run failed part way; the message names the cause and the partial results folder
    (whose manifest says ``failed`` with the same error)."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """All exception types the CLI reports as user errors (``ScenarioError`` is a
    :class:`UserError`)."""
    from overlaysim.core.cluster_errors import ClusterError

    return (UserError, ClusterError)
