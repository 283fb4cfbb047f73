"""The one fold of a run's ground truth: which hosts are up, which are on each network.

The world (while it plays the timeline), ``emu.collect`` (replaying the recorded truth
between agents' log lines) and the liveness model of the metrics all fold the same
lifecycle and attachment events through this module, so the rule "the targets of a
commit are the hosts attached to its network and up at the commit's instant, including
those attached later in that same instant" lives here once: :meth:`Truth.targets` names
the hosts on the network when the commit is registered, and a host coming onto it at
the same instant is added by the tracker (:meth:`ConvergenceTracker.attached`).
"""

from __future__ import annotations

from overlaysim.metrics.convergence import ConvergenceTracker
from overlaysim.metrics.records import DOWN_KINDS, UP_KINDS, EventKind

_UP = frozenset(str(k) for k in UP_KINDS)
_DOWN = frozenset(str(k) for k in DOWN_KINDS)


def lifecycle(kind: str) -> bool | None:
    """True if event ``kind`` brings its subject host up, False if it takes it down,
    None if it is no lifecycle event."""
    if kind in _UP:
        return True
    if kind in _DOWN:
        return False
    return None


class Truth:
    """Hosts up and hosts per network, folded event by event.

    With a ``tracker``, hosts going down (or leaving a network) stop being waited for
    and :meth:`commit` registers commits with their targets.
    """

    __slots__ = ("net_hosts", "tracker", "up")

    def __init__(self, tracker: ConvergenceTracker | None = None) -> None:
        self.up: set[str] = set()
        self.net_hosts: dict[str, set[str]] = {}
        self.tracker = tracker

    def fold(
        self, t: float, kind: str, *, node: str = "", subject: str = "", network: str = ""
    ) -> None:
        """Apply one ground-truth event (other kinds are ignored)."""
        life = lifecycle(kind)
        if life is True:
            self.up.add(subject)
        elif life is False:
            self.up.discard(subject)
            for hosts in self.net_hosts.values():
                hosts.discard(subject)
            if self.tracker is not None:
                self.tracker.node_gone(t, subject)
        elif kind == EventKind.NET_ATTACH:
            hosts = self.net_hosts.setdefault(network, set())
            if node not in hosts:
                hosts.add(node)
                if self.tracker is not None and node in self.up:
                    self.tracker.attached(t, node, network)
        elif kind == EventKind.NET_DETACH:
            self.net_hosts.setdefault(network, set()).discard(node)
            if self.tracker is not None:
                self.tracker.node_gone(t, node, network=network)

    def on_network(self, host: str, network: str) -> bool:
        """Whether ``host`` is attached to ``network`` now."""
        return host in self.net_hosts.get(network, ())

    def targets(self, network: str) -> list[str]:
        """The hosts attached to ``network`` and up now, sorted: a commit's targets as it
        is registered (hosts attached later in its instant are added to them)."""
        return sorted(self._target_set(network))

    def _target_set(self, network: str) -> set[str]:
        hosts = self.net_hosts.get(network)
        return hosts & self.up if hosts else set()

    def commit(self, t: float, owner: str, network: str, key: str, op: str) -> None:
        """Register ``owner``'s commit with the tracker, targets as of now."""
        if self.tracker is not None:
            # The set, unsorted: the tracker needs no order, and at a boot burst sorting
            # N names per commit was N^2 log N work.
            self.tracker.commit(t, owner, network, key, op, self._target_set(network))
