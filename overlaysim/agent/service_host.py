"""One host's service networking, in one object the agent can drive.

Holds the host's :class:`~overlaysim.core.services.Directory` (fed with the same table
events the programmer gets), the embedded DNS servers of its containers, their
resolv.conf files and UTS namespaces, and their VIP tables:

* :meth:`ServiceHost.start_container` once a container's namespace exists: hostname,
  resolv.conf, DNS server, VIP table;
* :meth:`ServiceHost.on_event` for every table event (on the event loop, cheap): updates
  the directory and returns the local containers whose VIP tables may have changed;
* :meth:`ServiceHost.plan_vips` for those, on the event loop (it reads the directory,
  which only the loop changes), then :meth:`ServiceHost.apply_vips` with the plan on the
  agent's data-plane worker thread (``nft`` is a subprocess); :meth:`sync_vips` does both;
  :meth:`ServiceHost.queue_vips` / :meth:`ServiceHost.apply_queued` do it coalesced: plans
  made while an apply is still queued replace each other per container, so a burst of
  events costs each container one table rewrite, with the newest plan;
* :meth:`ServiceHost.stop_container` before the namespace goes: removes all of it.

A container's UTS namespace file is named after its network namespace
(``/run/overlaysim/uts/<netns>``), which carries the project prefix and the host, so two
hosts of one machine never collide and ``overlaysim clean`` knows which files are ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from overlaysim.agent.dns import EmbeddedDns
from overlaysim.agent.netns import ns_path
from overlaysim.agent.resolvconf import NETNS_ETC, remove_resolv_conf, write_resolv_conf
from overlaysim.agent.uts import UTS_DIR, create_uts, remove_uts
from overlaysim.agent.vip import VipBalancer
from overlaysim.core.events import EntryEvent
from overlaysim.core.services import ENDPOINTS_TABLE, Directory

__all__ = ["LocalContainer", "ServiceHost", "VipPlan"]

#: sync(container, netns, vip -> task IPs) -> True if the kernel was changed.
VipSync = Callable[[str, str, Mapping[str, tuple[str, ...]]], bool]


@dataclass(frozen=True, slots=True)
class LocalContainer:
    name: str
    netns: str  # the ``ip netns`` name
    hostname: str


@dataclass(frozen=True, slots=True)
class VipPlan:
    """One container's VIP table as it must be: VIP -> task IPs."""

    name: str
    netns: str
    backends: Mapping[str, tuple[str, ...]]


class ServiceHost:
    """Names, DNS, resolv.conf, hostnames and VIP tables of one host's containers."""

    def __init__(
        self,
        dns: EmbeddedDns,
        *,
        vip_sync: VipSync | None = None,
        etc_root: Path = NETNS_ETC,
        uts_root: Path = UTS_DIR,
        host_resolv: Path = Path("/etc/resolv.conf"),
    ) -> None:
        self.dns = dns
        self.directory: Directory = dns.responder.directory
        self.balancer = VipBalancer()
        self._vip_sync = vip_sync or self.balancer.sync
        self._etc_root, self._uts_root, self._host_resolv = etc_root, uts_root, host_resolv
        self.containers: dict[str, LocalContainer] = {}
        #: VIP table updates that failed (retried on the next sync).
        self.vip_errors = 0
        #: Plans not applied yet (container -> newest plan) and whether an apply is
        #: queued; the loop adds, the worker takes (see :meth:`queue_vips`).
        self._queued: dict[str, VipPlan] = {}
        self._apply_queued = False
        self._queue_lock = threading.Lock()

    async def start_container(self, name: str, netns: str, hostname: str | None = None) -> None:
        """Give a container whose namespace exists its hostname, resolv.conf and DNS."""
        c = LocalContainer(name, netns, hostname or name)
        if name in self.containers:
            raise ValueError(f"container {name!r}: service networking already started")
        await asyncio.to_thread(create_uts, netns, c.hostname, root=self._uts_root)
        try:
            await asyncio.to_thread(
                write_resolv_conf, netns, host=self._host_resolv, root=self._etc_root
            )
            await self.dns.add(name, ns_path(netns))
        except BaseException:
            await asyncio.to_thread(self._remove_files, c)
            raise
        self.containers[name] = c

    async def stop_container(self, name: str) -> bool:
        """Undo :meth:`start_container`; False if it was not started."""
        c = self.containers.pop(name, None)
        if c is None:
            return False
        await self.dns.remove(name)
        self.balancer.forget(name)
        await asyncio.to_thread(self._remove_files, c)
        return True

    def _remove_files(self, c: LocalContainer) -> None:
        self.remove_files(c.netns)

    def remove_files(self, netns: str) -> None:
        """Delete the resolv.conf and UTS file of namespace ``netns`` (blocking).

        Also for the namespaces a killed previous boot left (the agent's restart).
        """
        remove_resolv_conf(netns, root=self._etc_root)
        with contextlib.suppress(ValueError):  # not a name a container namespace has
            remove_uts(netns, root=self._uts_root)

    def on_event(self, ev: EntryEvent) -> set[str]:
        """Apply a table event; the local containers whose VIP tables need a sync.

        A container's VIPs are those of the service tasks on its networks: an endpoint
        that is no task, before or after the event, changes only the VIPs of the
        container it names (the networks it is on). In a burst of plain containers that
        is every event, and none queues a re-plan of every local container.
        """
        if ev.table != ENDPOINTS_TABLE:
            return set()
        directory = self.directory
        before = directory.record(ev.network, ev.key)
        if not directory.apply(ev):
            return set()
        after = directory.record(ev.network, ev.key)
        key = ev.key.lower()
        if (before is None or before.task is None) and (after is None or after.task is None):
            return {key} if key in self.containers else set()
        return {
            name
            for name in self.containers
            if name == key or ev.network in directory.networks_of(name)
        }

    def plan_vips(self, names: Iterable[str] | None = None) -> list[VipPlan]:
        """What the VIP tables of ``names`` (default: all) must hold, read now.

        Cheap; call it where the directory changes (the event loop).
        """
        plan = []
        for name in sorted(self.containers if names is None else names):
            c = self.containers.get(name)
            if c is not None:
                plan.append(VipPlan(name, c.netns, self.directory.vip_backends(name)))
        return plan

    def apply_vips(self, plan: Iterable[VipPlan]) -> int:
        """Bring the kernel in line with ``plan``; the number of tables changed.

        Blocking (runs ``nft``): call it from a worker thread, never the event loop. A
        container stopped since the plan was made is skipped (its namespace is going).
        """
        changed = 0
        for p in plan:
            if p.name not in self.containers:
                continue
            try:
                if self._vip_sync(p.name, p.netns, p.backends):
                    changed += 1
            except Exception:  # counted; the next event or sync retries
                self.vip_errors += 1
        return changed

    def queue_vips(self, names: Iterable[str] | None = None) -> bool:
        """Plan ``names`` now (on the loop) and keep each container's newest plan until
        :meth:`apply_queued`; True when the caller must queue an :meth:`apply_queued`
        (none is queued yet), False when the queued one will apply this plan too.

        A removal changes the VIP set of every local container on its network; the
        events of a few removals in a row then cost each container one ``nft`` run
        (and one conntrack flush), not one per event, and the data-plane jobs queued
        behind them (a container's own unplug) wait that much less.
        """
        plans = self.plan_vips(names)
        with self._queue_lock:
            for p in plans:
                self._queued[p.name] = p
            if self._apply_queued or not self._queued:
                return False
            self._apply_queued = True
            return True

    def apply_queued(self) -> int:
        """Apply every plan :meth:`queue_vips` kept (blocking, on the worker); the
        number of tables changed. Plans queued while this runs get a new apply."""
        with self._queue_lock:
            plans, self._queued = self._queued, {}
            self._apply_queued = False
        return self.apply_vips(plans[name] for name in sorted(plans))

    def sync_vips(self, names: Iterable[str] | None = None) -> int:
        """:meth:`plan_vips` then :meth:`apply_vips` (blocking; tests and one-shot use)."""
        return self.apply_vips(self.plan_vips(names))
