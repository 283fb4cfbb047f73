"""Where a simulator run's time goes, by protocol step, sampled in the run itself.

``bench/sim_scale.py --where`` uses this to print, after each endpoint run, the share of
the simulated part's CPU time spent in each of the protocol's main steps: receiving each
kind of message, the held checks, accepting records, the broadcast queues, gossip and
bulk-sync rounds, membership timers, the driver's dispatch and sending, the underlay,
the metrics observers and SimPy's event loop.

It samples: a profiling timer (``ITIMER_PROF``, CPU time) interrupts the process a few
hundred times a second and the handler walks the interrupted Python stack from the
innermost frame out, counting the sample for the first function that names a section.
So a section's share is its *self* share: a held check inside receiving a gossip
message counts as the held check, and what receiving does besides its named steps
counts as "receive <message> (rest)". Python runs the handler at its next check for
signals, not at the instant the timer fires: time in a C call (a list insert, the cyclic
collector started by an allocation) counts for the function that made it or, when the
check comes as the next function starts, for that one: a share is good to a few percent,
not to the call. Each sample costs a stack walk of a few dozen frames, so the run itself
is not measurably slower (docs/scale.md, twenty-fifth round); nothing in the protocol or
the driver is wrapped or changed.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from types import CodeType, FrameType
from typing import Any

__all__ = ["Sampler", "protocol_sections", "top"]

#: Label of a sample whose stack has no named section (the bench's own loop, set-up).
OTHER = "other (the bench's loop, collector callbacks)"


class Sampler:
    """Count CPU-time samples by the innermost section on the stack.

    ``sections`` maps a function's code object to its label, or to a callable that
    makes the label from that function's frame (e.g. from the message it handles).
    """

    def __init__(self, sections: dict[CodeType, str | Callable[[FrameType], str]], hz: int = 250):
        self.sections = sections
        self.interval = 1.0 / hz
        self.counts: dict[str, int] = {}
        self._seen: dict[str, int] = {}  # counts at the last window()
        self._old: Any = None

    def start(self) -> None:
        """Install the handler and the timer (main thread only)."""
        self._old = signal.signal(signal.SIGPROF, self._sample)
        signal.siginterrupt(signal.SIGPROF, False)  # restart system calls it interrupts
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        """Stop the timer and give the signal its previous handler back."""
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, self._old if self._old is not None else signal.SIG_DFL)

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        sections = self.sections
        label: Any = OTHER
        while frame is not None:
            found = sections.get(frame.f_code)
            if found is not None:
                label = found if type(found) is str else found(frame)
                break
            frame = frame.f_back
        self.counts[label] = self.counts.get(label, 0) + 1

    def window(self) -> dict[str, int]:
        """Samples per label since the previous call (since the start, the first time)."""
        now = dict(self.counts)
        out = {k: v - self._seen.get(k, 0) for k, v in now.items() if v > self._seen.get(k, 0)}
        self._seen = now
        return out

    def rows(self, seconds: float) -> list[tuple[str, float, int]]:
        """(label, estimated seconds, samples), largest first: each label's share of the
        samples times ``seconds`` (the sampled part's wall or CPU time)."""
        total = sum(self.counts.values())
        rows = [(k, seconds * v / total if total else 0.0, v) for k, v in self.counts.items()]
        rows.sort(key=lambda r: (-r[2], r[0]))
        return rows


def top(counts: dict[str, int], k: int = 3) -> str:
    """The ``k`` largest labels of ``counts`` with their shares, e.g. for a progress line."""
    total = sum(counts.values())
    if not total:
        return "no samples"
    best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return ", ".join(f"{label} {100 * v / total:.0f}%" for label, v in best)


def _codes(owner: Any, names: Iterable[str]) -> list[CodeType]:
    return [getattr(owner, n).__code__ for n in names]


def _message_label(frame: FrameType) -> str:
    msg = frame.f_locals.get("msg")
    return f"receive {type(msg).__name__} (rest)"


def protocol_sections(extra_observers: Iterable[Callable] = ()) -> Sampler:
    """A :class:`Sampler` over the protocol's main steps (the same classes the simulator
    and the agent run), the simulator's driver and underlay, the metrics observers and
    SimPy's loop. ``extra_observers``: more functions to count as observers (a caller's
    own tap)."""
    import simpy

    from overlaysim.core.membership import Membership
    from overlaysim.core.node import Node
    from overlaysim.core.queue import TransmitLimitedQueue
    from overlaysim.core.tables import Tables
    from overlaysim.sim.engine import SimCluster
    from overlaysim.sim.runner import _Recorder
    from overlaysim.sim.underlay import Underlay

    named: dict[CodeType, str | Callable[[FrameType], str]] = {
        Node.receive.__code__: _message_label
    }
    table: list[tuple[Any, tuple[str, ...], str]] = [
        (Node, ("handle_timer",), "timers (rest)"),
        (Membership, ("handle_timer",), "membership timers: probes, suspicion, gossip"),
        (
            Tables,
            ("_first_not_held", "_entries_not_held", "_attachments_not_held"),
            "held checks",
        ),
        (Tables, ("_merge",), "accepting records: entries"),
        (Tables, ("_merge_attachment",), "accepting records: attachments"),
        (Tables, ("_bulk_msg",), "bulk sync: building one"),
        (Tables, ("_gossip_round",), "table gossip rounds (rest)"),
        (Tables, ("_bulk_round",), "bulk sync rounds (rest)"),
        (TransmitLimitedQueue, ("get",), "broadcast queues: get (rest)"),
        (TransmitLimitedQueue, ("_advance",), "broadcast queues: moving taken items on"),
        (TransmitLimitedQueue, ("queue",), "broadcast queues: queue"),
        (SimCluster, ("_after",), "driver: sending (rest)"),
        (SimCluster, ("_push",), "driver: scheduling"),
        (SimCluster, ("_run", "_deliver", "_fire"), "driver: dispatch"),
        (Underlay, ("transit",), "underlay: delay and loss"),
        (_Recorder, ("received", "sent", "member_event", "entry_event"), "observers (metrics)"),
        (simpy.Environment, ("step", "run"), "SimPy's event loop"),
    ]
    for owner, names, label in table:
        for code in _codes(owner, names):
            named[code] = label
    for fn in extra_observers:
        named[fn.__code__] = "observers (metrics)"
    return Sampler(named)
