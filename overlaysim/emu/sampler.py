"""Reachability and RTT sampled during an emulated run (``measure.probe_interval``).

A background thread runs a probe round (:func:`overlaysim.emu.probes.reachability`,
one echo per address, no retries) every ``interval`` seconds of scenario time while the
timeline plays; the runner takes the final, retried round itself at the end. A round
that takes longer than the interval delays the next one (rounds never overlap), so the
rows' ``t`` says when each round really started.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from overlaysim.emu.net import Underlay
from overlaysim.emu.probes import MAX_PROBE_PAIRS, Endpoint, reachability


class ProbeSampler:
    """Probe rounds on a thread; :meth:`stop` waits for the round in progress."""

    def __init__(
        self,
        underlay: Underlay,
        endpoints: Callable[[], Sequence[Endpoint]],
        now: Callable[[], float],
        interval: float,
        seed: int = 0,
    ) -> None:
        """Store what a round needs; nothing runs until :meth:`start`."""
        self._u = underlay
        self._endpoints = endpoints
        self._now = now
        self.interval = interval
        self.seed = seed
        self.rows: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling (the first round one interval from now)."""
        self._thread = threading.Thread(target=self._loop, name="probe-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> list[dict[str, Any]]:
        """Stop after the current round; returns every row sampled."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.rows

    def _loop(self) -> None:
        next_t = self._now() + self.interval
        while not self._stop.wait(max(0.0, next_t - self._now())):
            t = self._now()
            try:
                endpoints = list(self._endpoints())
            except RuntimeError:  # the timeline changed the containers mid-copy: next round
                next_t = t + self.interval
                continue
            try:
                self.rows.extend(
                    reachability(
                        self._u,
                        endpoints,
                        t,
                        max_pairs=MAX_PROBE_PAIRS,
                        seed=self.seed,
                        attempts=1,
                        workers=8,
                    )  # fmt: skip
                )
            except Exception as exc:  # a failed round is recorded, never fatal to the run
                self.errors.append(f"t={t:.1f}: {type(exc).__name__}: {exc}")
            next_t = max(t + self.interval, self._now())
