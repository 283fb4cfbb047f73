"""Per-host lanes: one host's slow steps run in order on a worker thread of their own.

The emulator's agents take real time to do what a step asks (a container's namespace
and veth, a new agent that must answer first); a scenario's timeline must not stop for
one host while the others have steps due. :class:`HostLanes` gives each host one worker
thread: work submitted for a host runs after the earlier work of that host, and in
parallel with other hosts' work. :meth:`HostLanes.settle` waits for hosts' lanes to
drain (a step that needs a host's state as the earlier steps left it) and raises the
first error met there, so a failure still surfaces on the timeline, once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor


class HostLanes:
    """One serial worker per host; see the module docstring."""

    def __init__(self) -> None:
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._pending: dict[str, list[Future[None]]] = {}
        self._lock = threading.Lock()

    def submit(self, host: str, work: Callable[[], None]) -> None:
        """Run ``work`` on ``host``'s lane, after what was submitted there before."""
        with self._lock:
            pool = self._pools.get(host)
            if pool is None:
                pool = self._pools[host] = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"lane-{host}"
                )
            self._pending.setdefault(host, []).append(pool.submit(work))

    def busy(self, host: str) -> bool:
        """Whether ``host``'s lane has work not yet finished."""
        with self._lock:
            return any(not f.done() for f in self._pending.get(host, ()))

    def settle(self, hosts: Collection[str] | None = None) -> None:
        """Wait until the lanes of ``hosts`` (None: all) are empty; raise the first error
        their work met (each error once)."""
        with self._lock:
            names = (
                list(self._pending) if hosts is None else [h for h in hosts if h in self._pending]
            )
            futures = [f for h in names for f in self._pending.pop(h)]
        error: BaseException | None = None
        for f in futures:
            exc = f.exception()
            if exc is not None and error is None:
                error = exc
        if error is not None:
            raise error

    def close(self) -> list[BaseException]:
        """Finish what runs, drop what waits, stop the workers; return the errors met
        (never raises: a run's teardown goes on)."""
        with self._lock:
            pools, self._pools = self._pools, {}
            pending, self._pending = self._pending, {}
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        return [
            exc
            for futures in pending.values()
            for f in futures
            if not f.cancelled() and (exc := f.exception()) is not None
        ]
