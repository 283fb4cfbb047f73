"""The timeline a world plays: the plan's steps, and the sub-steps the world adds as it goes.

A service step is not one instant: its task changes come one after another
(``service_timing.task_interval`` apart) and a host leaves a network a
``detach_delay`` after its last task there went (see
:mod:`overlaysim.world.services`). The world puts those later pieces on its
:class:`Agenda`; :meth:`Agenda.merge` hands every backend's driver (the simulator's
SimPy process, the emulator's timeline thread, the dry run) one ordered stream of
``(time, work)``: the planned steps and the pieces due, earliest first, a piece before a
step of the same time (it was decided earlier), except a piece added with ``last``,
which comes after everything else due at its time (a host's delayed network leave: a
container attaching there at that very instant keeps the host on the network). A
driver waits until each time (the emulator may be late, never early) and calls the
work.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar


class _Timed(Protocol):
    @property
    def at(self) -> float: ...


S = TypeVar("S", bound=_Timed)
Work = Callable[[], None]


class Agenda:
    """Pieces of work due at given scenario times (see the module docstring)."""

    def __init__(self) -> None:
        #: (time, 1 if last in its instant else 0, order added, work)
        self._heap: list[tuple[float, int, int, Work]] = []
        self._seq = itertools.count()  # equal times: in the order they were added

    def later(self, at: float, work: Work, *, last: bool = False) -> None:
        """Run ``work`` at scenario time ``at``; with ``last``, after every other piece
        and step due then."""
        heapq.heappush(self._heap, (at, int(last), next(self._seq), work))

    def __len__(self) -> int:
        return len(self._heap)

    def merge(self, steps: Sequence[S], apply: Callable[[S], None]) -> Iterator[tuple[float, Work]]:
        """``steps`` (in time order) and the pieces due, in time order; pieces added
        while the stream is consumed join it."""
        i = 0
        while i < len(steps) or self._heap:
            if self._heap and (i >= len(steps) or self._heap[0][:2] <= (steps[i].at, 0)):
                at, _, _, work = heapq.heappop(self._heap)
                yield at, work
                continue
            step = steps[i]
            i += 1
            yield step.at, lambda step=step: apply(step)
