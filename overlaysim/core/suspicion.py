"""Lifeguard suspicion timeouts: pure maths plus a small confirmation tracker.

A suspected member is declared dead when its suspicion timer expires. The timer starts
at a maximum and shrinks towards a minimum as *independent* confirmations (Suspect
messages from distinct accusers about the same incarnation) arrive, so a member that is
really down is removed quickly while a lone, possibly unhealthy accuser cannot remove a
live member fast:

- ``min = suspicion_mult * max(1, log10(max(1, n))) * probe_interval``
- ``max = suspicion_max_timeout_mult * min``
- ``k = suspicion_mult - 2`` expected confirmations (0 when ``n - 2 < k``: there are not
  enough other members to confirm)
- after ``c`` confirmations the total timeout is
  ``max(min, max - (max - min) * log(c + 1) / log(k + 1))``, counted from the start.

Nothing here reads a clock: ``start`` and ``elapsed`` are passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def suspicion_min_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """Smallest suspicion timeout for a cluster of ``n`` members (grows with log10 n)."""
    node_scale = max(1.0, math.log10(max(1.0, float(n))))
    return suspicion_mult * node_scale * probe_interval


def expected_confirmations(suspicion_mult: int, n: int) -> int:
    """Confirmations ``k`` that drive the timeout to its minimum.

    Two fewer than the multiplier, since peers probe in no known phase relation to us;
    zero when the cluster has too few other members (``n`` minus us and the suspect) to
    ever deliver them.
    """
    k = suspicion_mult - 2
    if k < 0 or n - 2 < k:
        return 0
    return k


def suspicion_timeout(confirmations: int, k: int, min_timeout: float, max_timeout: float) -> float:
    """Total timeout (from the start of the suspicion) after ``confirmations``."""
    if k < 1:
        return max_timeout
    frac = math.log(confirmations + 1.0) / math.log(k + 1.0)
    return max(min_timeout, max_timeout - frac * (max_timeout - min_timeout))


def remaining_suspicion_time(
    confirmations: int, k: int, elapsed: float, min_timeout: float, max_timeout: float
) -> float:
    """Time left after ``elapsed``; may be negative (then the timer fires at once)."""
    return suspicion_timeout(confirmations, k, min_timeout, max_timeout) - elapsed


@dataclass(slots=True)
class Suspicion:
    """One running suspicion: who accused first, and distinct confirmers since.

    The first accuser never counts as a confirmation: our own Suspect may come back to
    us through gossip.
    """

    accuser: str
    k: int
    min_timeout: float
    max_timeout: float
    start: float
    confirmations: int = 0
    _seen: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self._seen.add(self.accuser)

    @property
    def deadline(self) -> float:
        """Absolute time at which the suspect is declared dead."""
        return self.start + suspicion_timeout(
            self.confirmations, self.k, self.min_timeout, self.max_timeout
        )

    def confirm(self, src: str) -> bool:
        """Count ``src`` as an independent confirmation.

        Returns True when it was new information (worth re-gossiping): False for a
        repeated accuser, or once ``k`` confirmations were already reached.
        """
        if self.confirmations >= self.k or src in self._seen:
            return False
        self._seen.add(src)
        self.confirmations += 1
        return True
