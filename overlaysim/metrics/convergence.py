"""Online endpoint-convergence tracking, shared by the simulator and the emulation.

A commit (an owner adds or deletes an endpoint entry) waits for every *target* — the
hosts attached to the network and alive at the commit's instant, including those
attached later in that same instant — to hold the entry in that state. The tracker is
fed five kinds of facts in time order and yields one row of ``convergence.csv`` per
commit:

* ``commit`` opens a pending record; the owner counts as having seen it at once.
  A commit on a (network, key) that still has one pending closes the older one as
  ``superseded``.
* ``attached`` makes a host that came onto a network at the instant of commits on it
  one more target of each. A simulator plays an instant's facts one after another
  (the boot burst: every initial container at t=0, host by host), an emulator's
  attaches take wall time and precede its agents' commits; without this rule the
  first of the simulator's boot commits would wait for its owner alone, the last for
  every host, and the emulator's for every host (``docs/metrics.md``). The attaches
  are applied lazily, as one C-level batch per commit the first time anything else
  happens (another fact, a read): applied one by one, the boot burst's N^2/2
  (commit, late host) pairs were most of a 10,000-host run's boot.
* ``seen`` removes a node from the waiting set (idempotent; non-targets, unknown keys
  and a different op are ignored). It is two dict lookups and a byte flag, because at
  1,000 nodes it is called millions of times.
* ``node_gone`` drops a crashed/left node from every waiting set (a detached node from
  those of one network); a commit that only waited for it converges at the time its
  last other target saw it (the commit time if none had).
* ``finish`` closes what is left as ``unconverged``.

A waiting set is one byte per host (hosts get small numbers the first time they are
targets, :class:`_Hosts`) and a count, not a set of names: the boot burst opens a
commit per host with every host waiting, N^2 members at once (66 B each as sets of
names at 2,000 hosts, 1 B as flags). Nothing reads a waiting set's order.

Known limit: ``seen`` carries no version, so if an owner re-commits the same op on a
key while the first is pending, the older one is superseded and later observations
count for the newer one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import repeat


class Status(StrEnum):
    CONVERGED = "converged"
    UNCONVERGED = "unconverged"
    SUPERSEDED = "superseded"


class _Hosts:
    """Small numbers for host names, given the first time a host is a target."""

    __slots__ = ("ids",)

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def id(self, host: str) -> int:
        ids = self.ids
        i = ids.get(host)
        if i is None:
            i = ids[host] = len(ids)
        return i


@dataclass(slots=True)
class _Commit:
    t_commit: float
    owner: str
    network: str
    key: str
    op: str
    targets: int
    #: ``waiting[id] == 1``: host ``id`` (:class:`_Hosts`) does not hold it yet.
    waiting: bytearray = field(default_factory=bytearray)
    #: How many flags of ``waiting`` are set.
    left: int = 0
    last_seen_t: float = 0.0
    converged_t: float | None = None
    status: Status | None = None
    #: Hosts (ids) attached to the network at the commit's instant, in order (shared by
    #: the instant's commits on that network); those from ``late_from`` on came after
    #: this commit and are not yet among its targets (:meth:`ConvergenceTracker._settle`).
    late: list[int] | None = None
    late_from: int = 0

    def waits_for(self, i: int) -> bool:
        w = self.waiting
        return i < len(w) and w[i] == 1

    def drop(self, i: int) -> None:
        """Host ``i`` no longer waits (it must have)."""
        self.waiting[i] = 0
        self.left -= 1

    def close(self, status: Status, converged_t: float | None = None) -> None:
        self.status = status
        self.converged_t = converged_t
        self.waiting, self.left = bytearray(), 0  # free memory early (reopened by attached)

    def row(self) -> dict[str, object]:
        latency = None if self.converged_t is None else self.converged_t - self.t_commit
        return {
            "t_commit": self.t_commit,
            "owner": self.owner,
            "network": self.network,
            "key": self.key,
            "op": self.op,
            "targets": self.targets,
            "converged_t": self.converged_t,
            "latency_s": latency,
            "status": str(self.status),
        }


class ConvergenceTracker:
    """Measures, per entry commit, the time until every target holds the entry."""

    def __init__(self) -> None:
        self._all: list[_Commit] = []  # in commit order: the row order of the output
        # At most one pending commit per (network, key): a newer one supersedes it.
        self._pending: dict[tuple[str, str], _Commit] = {}
        # The latest commit per (network, key) made at the latest commit instant: a host
        # attached at that same instant joins its targets (:meth:`attached`).
        self._instant: float | None = None
        self._at_instant: dict[str, dict[str, _Commit]] = {}
        # Per network, the hosts attached at that instant after its first commit there
        # (ids, in order), and whether some are not applied to the commits yet.
        self._late: dict[str, list[int]] = {}
        self._unsettled = False
        self._finished = False
        self._hosts = _Hosts()

    @property
    def pending(self) -> int:
        """Number of commits still waiting for some target."""
        self._settle_all()
        return len(self._pending)

    def commit(
        self, t: float, owner: str, network: str, key: str, op: str, targets: Iterable[str]
    ) -> None:
        """``owner`` committed ``op`` (add|delete) on ``key`` in ``network`` at ``t``.

        ``targets`` are the hosts attached to ``network`` and alive at ``t``.
        """
        self._check_open()
        if t != self._instant:
            self._settle_all()
        else:
            # The instant's previous commit on this key takes no more late hosts once
            # this one replaces it (as superseded, or as the key's latest commit).
            prev = self._at_instant.get(network, {}).get(key)
            if prev is not None:
                self._settle(prev)
        old = self._pending.pop((network, key), None)
        if old is not None:
            old.close(Status.SUPERSEDED)
        hosts = self._hosts
        if not isinstance(targets, (list, tuple, set, frozenset)):
            targets = list(targets)
        ids_get = hosts.ids.get
        ids = list(map(ids_get, targets))
        if None in ids:  # hosts never targets before: numbered in name order
            for h in sorted(h for h, i in zip(targets, ids, strict=True) if i is None):
                hosts.id(h)
            ids = list(map(ids_get, targets))
        waiting = bytearray(len(hosts.ids))
        deque(map(waiting.__setitem__, ids, repeat(1)), maxlen=0)  # C-level fill
        count = waiting.count(1)
        rec = _Commit(t, owner, network, key, op, count, waiting, count, last_seen_t=t)
        self._all.append(rec)
        if t != self._instant:
            self._instant, self._at_instant, self._late = t, {}, {}
        self._at_instant.setdefault(network, {})[key] = rec
        rec.late = late = self._late.setdefault(network, [])
        rec.late_from = len(late)
        own = hosts.ids.get(owner)
        if own is not None and rec.waits_for(own):  # the owner holds its own entry from the start
            rec.drop(own)
        if rec.left:
            self._pending[(network, key)] = rec
        else:
            rec.close(Status.CONVERGED, t)

    def attached(self, t: float, node: str, network: str) -> None:
        """``node`` (up) came onto ``network`` at ``t``: if commits on that network were
        made at this same instant, it is one more target of each (one that converged
        within the instant waits again, for it). Earlier instants' commits keep theirs.

        Called once per host coming onto the network (the truth's ``net_attach``). The
        host is noted, and added to the commits when anything else happens."""
        if t != self._instant:
            return
        late = self._late.get(network)
        if late is None:
            return  # no commit on that network at this instant
        late.append(self._hosts.id(node))
        self._unsettled = True

    def _settle_all(self) -> None:
        """Apply the hosts attached late at the current instant to its commits."""
        if not self._unsettled:
            return
        self._unsettled = False
        for recs in self._at_instant.values():
            for rec in recs.values():
                self._settle(rec)

    def _settle(self, rec: _Commit) -> None:
        """Make ``rec``'s late hosts (attached after it, at its instant) targets: the
        owner and hosts already waiting excepted; a superseded commit takes none."""
        late = rec.late
        if late is None or rec.late_from >= len(late):
            return
        ids = late[rec.late_from :]
        rec.late_from = len(late)
        if rec.status is Status.SUPERSEDED:
            return
        w = rec.waiting
        top = max(ids)
        if top >= len(w):
            w.extend(bytes(top + 1 - len(w)))
        before = w.count(1)
        own = self._hosts.ids.get(rec.owner)
        kept = w[own] if own is not None and own < len(w) else None
        deque(map(w.__setitem__, ids, repeat(1)), maxlen=0)  # C-level
        if kept is not None:
            w[own] = kept  # the owner is never a new target
        added = w.count(1) - before
        if not added:
            return
        rec.targets += added
        rec.left += added
        if rec.status is Status.CONVERGED:  # converged within the instant: reopen
            rec.status, rec.converged_t = None, None
            self._pending[(rec.network, rec.key)] = rec

    def seen(self, t: float, node: str, network: str, key: str, op: str) -> None:
        """``node`` holds (or has programmed) ``key`` in state ``op`` at ``t``."""
        if self._unsettled:
            if t != self._instant:
                self._settle_all()  # the instant is over: no more late hosts for it
            else:
                # Only this key's commit can change. (The owner sees its own commit at
                # once, between a burst's attaches: settling all each time is N^2.)
                at = self._at_instant.get(network, {}).get(key)
                if at is not None:
                    self._settle(at)
        rec = self._pending.get((network, key))
        if rec is None or rec.op != op:
            return
        i = self._hosts.ids.get(node)
        w = rec.waiting
        if i is None or i >= len(w) or not w[i]:
            return
        w[i] = 0
        rec.left -= 1
        rec.last_seen_t = t
        if not rec.left:
            del self._pending[(network, key)]
            rec.close(Status.CONVERGED, t)

    def node_gone(self, t: float, node: str, network: str | None = None) -> None:
        """``node`` crashed or left (or, with ``network``, detached from it) at ``t``:
        stop waiting for it."""
        # A scan over pending commits: node_gone is rare next to seen, and an index
        # node -> commits would cost on every seen call.
        self._settle_all()
        done = []
        i = self._hosts.ids.get(node)
        if i is None:  # never a target
            return
        for k, rec in self._pending.items():
            if rec.waits_for(i) and (network is None or k[0] == network):
                rec.drop(i)
                if not rec.left:
                    done.append(k)
        for k in done:
            rec = self._pending.pop(k)
            rec.close(Status.CONVERGED, rec.last_seen_t)

    def finish(self, t_end: float) -> list[dict[str, object]]:
        """Close every pending commit as unconverged and return all rows in commit order.

        ``t_end`` is the time the run stopped; unconverged rows have no convergence
        time, so it is only checked against. The tracker accepts no more input afterwards.
        """
        self._check_open()
        self._settle_all()
        if self._all and t_end < self._all[-1].t_commit:
            raise ValueError(f"t_end={t_end} is before the last commit")
        for rec in self._pending.values():
            rec.close(Status.UNCONVERGED)
        self._pending.clear()
        self._finished = True
        return [rec.row() for rec in self._all]

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("ConvergenceTracker.finish() was already called")
