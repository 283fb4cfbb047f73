"""One host's service networking, in one object the agent can drive.

Holds the host's :class:`~overlaysim.core.services.Directory` (fed with the same table
events the programmer gets), the embedded DNS servers of its containers, their
resolv.conf files and UTS namespaces, and their VIP tables:

* :meth:`ServiceHost.start_container` once a container's namespace exists: hostname,
  resolv.conf, DNS server, VIP table;
* :meth:`ServiceHost.on_event` for every table event (on the event loop, cheap): updates
  the directory and returns the local containers whose VIP tables may have changed;
* :meth:`ServiceHost.sync_vips` for those (blocking: ``nft`` is a subprocess, so the
  agent calls it from its data-plane worker thread);
* :meth:`ServiceHost.stop_container` before the namespace goes: removes all of it.

Not wired into ``overlayd`` yet (see docs/services.md, "What remains").
"""

from __future__ import annotations

import asyncio
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

__all__ = ["LocalContainer", "ServiceHost"]

#: sync(container, netns, vip -> task IPs) -> True if the kernel was changed.
VipSync = Callable[[str, str, Mapping[str, tuple[str, ...]]], bool]


@dataclass(frozen=True, slots=True)
class LocalContainer:
    name: str
    netns: str  # the ``ip netns`` name
    hostname: str


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

    async def start_container(self, name: str, netns: str, hostname: str | None = None) -> None:
        """Give a container whose namespace exists its hostname, resolv.conf and DNS."""
        c = LocalContainer(name, netns, hostname or name)
        if name in self.containers:
            raise ValueError(f"container {name!r}: service networking already started")
        await asyncio.to_thread(create_uts, name, c.hostname, root=self._uts_root)
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
        remove_resolv_conf(c.netns, root=self._etc_root)
        remove_uts(c.name, root=self._uts_root)

    def on_event(self, ev: EntryEvent) -> set[str]:
        """Apply a table event; the local containers whose VIP tables need a sync."""
        if ev.table != ENDPOINTS_TABLE or not self.directory.apply(ev):
            return set()
        return {
            name
            for name in self.containers
            if name == ev.key.lower() or ev.network in self.directory.networks_of(name)
        }

    def sync_vips(self, names: Iterable[str] | None = None) -> int:
        """Bring the VIP tables of ``names`` (default: all) in line; the number changed.

        Blocking (runs ``nft``): call it from a worker thread, never the event loop.
        """
        changed = 0
        for name in sorted(self.containers if names is None else names):
            c = self.containers.get(name)
            if c is None:
                continue
            try:
                if self._vip_sync(name, c.netns, self.directory.vip_backends(name)):
                    changed += 1
            except Exception:  # counted; the next event or sync retries
                self.vip_errors += 1
        return changed
