"""Service-DNS metrics, one definition for the simulator and the emulation.

Both backends produce the same facts: each host's table events (what its embedded DNS
answers from) and, from the World, each change of a service's truth (the set of live
task IPs on a network, and the hosts attached to that network, alive, at that moment).
:class:`DnsTracker` keeps one :class:`~overlaysim.core.services.Directory` per host,
fed in time order, and measures:

* ``dns_convergence_s``, per change: from the change until every target host's directory
  returns exactly the new task set for ``tasks.<service>`` (the same set behind the VIP
  and the ``dnsrr`` answer). A newer change of the same service before that supersedes
  it; a target that crashes or leaves stops being waited for.
* ``stale_dns_window_s``, per task IP a change removed: from the change until no live
  host's directory returns that IP any more for the service (0 if none did).

Rows that never close are ``unconverged`` at :meth:`DnsTracker.finish`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from overlaysim.core.events import EntryEvent
from overlaysim.core.services import Directory
from overlaysim.metrics.convergence import Status
from overlaysim.metrics.stats import pct, vmax

__all__ = ["DnsTracker", "summarise"]


@dataclass(slots=True)
class _Change:
    t: float
    network: str
    service: str
    truth: frozenset[str]
    targets: int
    waiting: set[str]
    done_t: float | None = None
    status: Status | None = None

    def row(self) -> dict[str, object]:
        return {
            "metric": "dns_convergence_s",
            "t": self.t,
            "network": self.network,
            "service": self.service,
            "ip": "",
            "tasks": len(self.truth),
            "targets": self.targets,
            "value_s": None if self.done_t is None else self.done_t - self.t,
            "status": str(self.status),
        }


@dataclass(slots=True)
class _Stale:
    t: float
    network: str
    service: str
    ip: str
    tasks: int
    holders: set[str] = field(default_factory=set)
    done_t: float | None = None
    status: Status | None = None
    targets: int = 0

    def row(self) -> dict[str, object]:
        return {
            "metric": "stale_dns_window_s",
            "t": self.t,
            "network": self.network,
            "service": self.service,
            "ip": self.ip,
            "tasks": self.tasks,
            "targets": self.targets,
            "value_s": None if self.done_t is None else self.done_t - self.t,
            "status": str(self.status),
        }


class DnsTracker:
    """Per-host directories and the two service-DNS metrics (see the module docstring)."""

    def __init__(self) -> None:
        self._dirs: dict[str, Directory] = {}
        self._gone: set[str] = set()
        self._changes: list[_Change] = []
        self._pending: dict[tuple[str, str], _Change] = {}
        self._stale: list[_Stale] = []
        self._open_stale: list[_Stale] = []
        self._truth: dict[tuple[str, str], frozenset[str]] = {}
        #: Stale windows opened by removed() ahead of their change, per service.
        self._early: dict[tuple[str, str], dict[str, _Stale]] = {}

    def _view(self, host: str, network: str, service: str) -> frozenset[str]:
        d = self._dirs.get(host)
        svc = d.service(network, service) if d is not None else None
        return frozenset(svc.task_ips) if svc is not None else frozenset()

    def host_event(self, t: float, host: str, ev: EntryEvent) -> None:
        """``host``'s tables emitted ``ev`` at ``t``."""
        d = self._dirs.setdefault(host, Directory())
        if not d.apply(ev) or host in self._gone:
            return
        self._check(t, host, ev.network)

    def _check(self, t: float, host: str, network: str) -> None:
        for (net, svc), ch in list(self._pending.items()):
            if net == network and host in ch.waiting and self._view(host, net, svc) == ch.truth:
                ch.waiting.discard(host)
                if not ch.waiting:
                    self._close(ch, Status.CONVERGED, t)
        for st in list(self._open_stale):
            if st.network == network and host in st.holders:
                if st.ip not in self._view(host, network, st.service):
                    st.holders.discard(host)
                    if not st.holders:
                        self._close_stale(st, t)

    def change(
        self, t: float, network: str, service: str, task_ips: Iterable[str], targets: Iterable[str]
    ) -> None:
        """The World says: ``service`` on ``network`` now has exactly ``task_ips``.

        ``targets`` are the hosts attached to ``network`` and alive at ``t``.
        """
        key = (network, service.lower())
        truth = frozenset(task_ips)
        old = self._pending.pop(key, None)
        if old is not None:
            old.status = Status.SUPERSEDED
            old.waiting = set()
        before = self._truth.get(key, frozenset())
        self._truth[key] = truth
        tg = set(targets) - self._gone
        ch = _Change(t, network, key[1], truth, len(tg), set(tg))
        self._changes.append(ch)
        ch.waiting = {h for h in tg if self._view(h, network, key[1]) != truth}
        if ch.waiting:
            self._pending[key] = ch
        else:
            self._close(ch, Status.CONVERGED, t)
        early = self._early.pop(key, {})
        for ip in sorted(before - truth):
            st = early.get(ip)
            if st is not None:  # opened at its own removal (see removed())
                st.tasks, st.targets = len(truth), len(tg)
                continue
            self._open(_Stale(t, network, key[1], ip, len(truth), targets=len(tg)))

    def removed(self, t: float, network: str, service: str, ip: str) -> None:
        """Task address ``ip`` of ``service`` left the tables at ``t``, before the
        :meth:`change` that removes it from the truth (the emulator removes a step's
        tasks one by one): its stale window starts now, not at the change."""
        key = (network, service.lower())
        if ip not in self._truth.get(key, frozenset()) or ip in self._early.get(key, {}):
            return
        st = _Stale(t, network, key[1], ip, 0)
        self._early.setdefault(key, {})[ip] = st
        self._open(st)

    def _open(self, st: _Stale) -> None:
        st.holders = {
            h
            for h in self._dirs
            if h not in self._gone and st.ip in self._view(h, st.network, st.service)
        }
        self._stale.append(st)
        if st.holders:
            self._open_stale.append(st)
        else:
            self._close_stale(st, st.t)

    def host_gone(self, t: float, host: str) -> None:
        """``host`` crashed or left: nobody waits for it, its answers no longer count."""
        self._gone.add(host)
        for ch in list(self._pending.values()):
            if host in ch.waiting:
                ch.waiting.discard(host)
                if not ch.waiting:
                    self._close(ch, Status.CONVERGED, t)
        for st in list(self._open_stale):
            if host in st.holders:
                st.holders.discard(host)
                if not st.holders:
                    self._close_stale(st, t)

    def host_back(self, host: str) -> None:
        """``host`` restarted: a new boot starts with an empty directory."""
        self._gone.discard(host)
        self._dirs[host] = Directory()

    def _close(self, ch: _Change, status: Status, t: float | None) -> None:
        ch.status, ch.done_t, ch.waiting = status, t, set()
        self._pending.pop((ch.network, ch.service), None)

    def _close_stale(self, st: _Stale, t: float | None) -> None:
        st.status = Status.CONVERGED if t is not None else Status.UNCONVERGED
        st.done_t = t
        if st in self._open_stale:
            self._open_stale.remove(st)

    def finish(self) -> list[dict[str, object]]:
        """Close what is open as unconverged; one row per change and per removed IP."""
        for ch in list(self._pending.values()):
            self._close(ch, Status.UNCONVERGED, None)
        for st in list(self._open_stale):
            self._close_stale(st, None)
        rows = [c.row() for c in self._changes] + [s.row() for s in self._stale]
        return sorted(rows, key=lambda r: (r["t"], r["metric"], r["service"], r["ip"]))


def summarise(rows: Iterable[dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per metric: counts by status and p50/p95/max over the converged values."""
    rows = list(rows)
    out: dict[str, dict[str, object]] = {}
    for metric in ("dns_convergence_s", "stale_dns_window_s"):
        sel = [r for r in rows if r["metric"] == metric]
        vals = [float(r["value_s"]) for r in sel if r["status"] == "converged"]  # type: ignore[arg-type]
        out[metric] = {
            "n": len(sel),
            "unconverged": sum(r["status"] == "unconverged" for r in sel),
            "superseded": sum(r["status"] == "superseded" for r in sel),
            "p50": pct(vals, 50),
            "p95": pct(vals, 95),
            "max": vmax(vals),
        }
    return out
