"""Run one call in a thread of its own, for namespace system calls.

``unshare`` and ``setns`` change only the calling thread's namespaces. Making them in a
short-lived thread leaves the agent's own threads where they were, and costs far less
than forking a helper process per container.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["call_in_own_thread"]

T = TypeVar("T")


def call_in_own_thread(fn: Callable[[], T], name: str) -> T:
    """Call ``fn`` in a new thread named ``name``, wait for it, and return its result.

    Whatever ``fn`` raises is raised again in the caller's thread.
    """
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
