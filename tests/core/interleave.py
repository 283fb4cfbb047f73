"""Run test functions on threads that switch as often as the interpreter allows."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def on_threads(target: Callable[[int], None], n: int = 2) -> None:
    """Run ``target(0)`` ... ``target(n - 1)`` on ``n`` threads at once, switching between
    them as often as the interpreter allows, and wait for all of them."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
