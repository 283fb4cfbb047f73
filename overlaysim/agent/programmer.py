"""Turns endpoint table events into kernel data-plane calls, and repairs drift.

The tables say which endpoints exist; the kernel must hold a static FDB entry
(MAC -> remote VTEP) and a neighbour entry (IP -> MAC) for every *remote* endpoint of
every network that has a local container. :class:`Programmer` keeps the remote
endpoints it was told about per network (``held``), forwards changes to the data plane
and logs each step:

* ``entry_programmed`` (op ``add``/``delete``) when a remote endpoint was written to or
  removed from a network sandbox that exists here. Entries of a network without a local
  sandbox are handed to the data plane, which remembers them and programs them when the
  sandbox is created: they are logged then, with ``replay: true``. A table event that
  leaves the kernel as it is but means this host now holds the committed state (a
  refresh: a newer version with the same content; the tombstone of an entry never
  programmed) is logged with ``noop: true``.
* ``reconcile`` when :meth:`reconcile` found the kernel different from the tables and
  repaired it (Docker never does this: stale entries after IP reuse stay forever).
* ``program_error`` when a peer's entry is malformed or the kernel refused a change:
  logged and counted, never fatal; the next reconcile retries.

Threading: the data plane is synchronous and refuses to run on an event loop thread, so
the daemon calls every method here from one worker thread, in submission order. The
class itself is plain synchronous code (tests drive it with a fake data plane).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from overlaysim.agent.dataplane import NetInfo
from overlaysim.agent.logging import EventLog
from overlaysim.core.endpoint import ENDPOINTS, Endpoint
from overlaysim.core.events import EntryEvent, EntryEventKind
from overlaysim.core.wire import Entry

#: A remote endpoint as the data plane wants it: (ip, mac, vtep).
Remote = tuple[str, str, str]


class DataPlanePort(Protocol):
    """The part of :class:`overlaysim.agent.dataplane.DataPlane` the programmer uses."""

    def attach(self, container: str, net: NetInfo, ip: str, prefixlen: int, mac: str) -> str: ...
    def detach(self, container: str, network: str) -> None: ...
    def container_netns(self, container: str) -> str: ...
    def add_remote(self, network: str, ip: str, mac: str, vtep: str) -> None: ...
    def remove_remote(self, network: str, ip: str, mac: str, vtep: str) -> None: ...
    def reconcile(self, network: str, desired: set[tuple[str, str, str]]) -> dict[str, list]: ...
    def kernel_state(self, network: str) -> tuple[set, set]: ...
    def install_keys(self, keys: list[Any], primary: int) -> None: ...
    def reset_peer(self, vtep: str) -> None: ...
    def crypto_state(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


def remote_of(value: Mapping[str, str]) -> Remote:
    """``(ip, mac, vtep)`` of an endpoint entry value; ValueError if a peer sent junk."""
    return Endpoint.from_value(value, vtep_ip=True).remote


def remote_entries(entries: Iterable[Entry], me: str) -> dict[str, Remote]:
    """Well-formed live endpoint entries owned by other nodes: key -> (ip, mac, vtep)."""
    out: dict[str, Remote] = {}
    for e in entries:
        if e.table != ENDPOINTS or e.owner == me or e.deleted:
            continue
        try:
            out[e.key] = remote_of(e.value)
        except ValueError:
            continue
    return out


class Programmer:
    """Keeps one host's kernel in step with the endpoint tables (see module docstring)."""

    def __init__(self, dataplane: DataPlanePort, *, node: str, log: EventLog) -> None:
        self.dataplane = dataplane
        self.node = node
        self.log = log
        #: Remote endpoints per network, as last told by the tables: key -> (ip, mac, vtep).
        self.held: dict[str, dict[str, Remote]] = {}
        #: Failed programming steps since start.
        self.errors = 0
        self._local: dict[str, set[str]] = {}  # network -> local containers (sandbox exists)
        self._owners: dict[tuple[str, str], str] = {}

    # --- queries ----------------------------------------------------------------------

    def local_networks(self) -> list[str]:
        """Networks with a sandbox here (at least one local container)."""
        return sorted(self._local)

    def containers(self, network: str) -> set[str]:
        """Local containers attached to ``network``."""
        return set(self._local.get(network, ()))

    # --- table events ---------------------------------------------------------------------

    def on_event(self, ev: EntryEvent) -> None:
        """Apply one table change to the kernel (only remote endpoints are programmed)."""
        if ev.table != ENDPOINTS:
            return
        network, key = ev.network, ev.key
        old = self.held.get(network, {}).get(key)
        if ev.kind is EntryEventKind.REFRESH:
            # A newer version with the same content: the kernel already holds it. Logged
            # (as the tombstone of an entry never programmed is) so that the emulator's
            # convergence sees this host hold the owner's new commit, as the simulator does.
            if old is not None and network in self._local:
                self.log.write(
                    "entry_programmed",
                    network=network,
                    key=key,
                    op="add",
                    owner=ev.owner,
                    ip=old[0],
                    vtep=old[2],
                    noop=True,
                )
            return
        if ev.kind is EntryEventKind.TOMBSTONE:
            if old is None and network in self._local:
                # Nothing was programmed, so the kernel already agrees with the delete.
                self.log.write(
                    "entry_programmed",
                    network=network,
                    key=key,
                    op="delete",
                    owner=ev.owner,
                    noop=True,
                )
            if old is None:
                return
        new: Remote | None = None
        if (
            ev.kind not in (EntryEventKind.DELETE, EntryEventKind.TOMBSTONE)
            and ev.owner != self.node
        ):
            try:
                new = remote_of(ev.value)
            except ValueError as exc:
                self._error(network, key, "add", exc)
        if old == new:
            return
        if old is not None:
            held = self.held[network]
            del held[key]
            if not held:
                del self.held[network]
            owner = self._owners.pop((network, key), ev.owner)
            if self._apply(self.dataplane.remove_remote, network, key, "delete", old):
                self._programmed(network, key, "delete", owner, old)
        if new is not None:
            self.held.setdefault(network, {})[key] = new
            self._owners[(network, key)] = ev.owner
            if self._apply(self.dataplane.add_remote, network, key, "add", new):
                self._programmed(network, key, "add", ev.owner, new)

    def _apply(self, fn: Any, network: str, key: str, op: str, remote: Remote) -> bool:
        try:
            fn(network, *remote)
        except Exception as exc:  # kernel refused: log, count, let reconcile retry
            self._error(network, key, op, exc)
            return False
        return True

    def _programmed(
        self, network: str, key: str, op: str, owner: str, r: Remote, **extra: Any
    ) -> None:
        if network in self._local:  # otherwise only remembered, logged at replay
            self.log.write(
                "entry_programmed",
                network=network,
                key=key,
                op=op,
                owner=owner,
                ip=r[0],
                vtep=r[2],
                **extra,
            )

    def _error(self, network: str, key: str, op: str, exc: BaseException) -> None:
        self.errors += 1
        self.log.write(
            "program_error", network=network, key=key, op=op, error=f"{type(exc).__name__}: {exc}"
        )

    # --- local containers -------------------------------------------------------------------

    def attach(
        self, container: str, net: NetInfo, ip: str, prefixlen: int, mac: str
    ) -> dict[str, Any]:
        """Plug a local container into ``net`` (creating the sandbox, replaying held entries).

        Returns ``{"ifname", "netns", "first"}``; ``first`` is True when this is the
        network's first local container (the caller then joins the network's gossip).
        """
        first = net.name not in self._local
        ifname = self.dataplane.attach(container, net, ip, prefixlen, mac)
        self._local.setdefault(net.name, set()).add(container)
        if first:
            for key, remote in sorted(self.held.get(net.name, {}).items()):
                owner = self._owners.get((net.name, key), "")
                self._programmed(net.name, key, "add", owner, remote, replay=True)
        return {
            "ifname": ifname,
            "netns": self.dataplane.container_netns(container),
            "first": first,
        }

    def detach(self, container: str, network: str) -> dict[str, Any]:
        """Unplug a local container; ``{"last": True}`` when the sandbox went with it."""
        self.dataplane.detach(container, network)
        members = self._local.get(network)
        if members is None:
            return {"last": False}
        members.discard(container)
        if members:
            return {"last": False}
        del self._local[network]
        return {"last": True}

    # --- repair ---------------------------------------------------------------------------

    def reconcile(self, desired: Mapping[str, Mapping[str, Remote]]) -> dict[str, dict[str, list]]:
        """Make every local network's kernel state match ``desired`` (network -> key -> remote).

        ``desired`` is the tables' live remote entries, read when the reconcile was
        asked for; it also replaces ``held``. Returns the repairs per network (only
        networks where something changed).
        """
        out: dict[str, dict[str, list]] = {}
        for network in self.local_networks():
            want = dict(desired.get(network, {}))
            if want:
                self.held[network] = want
            else:
                self.held.pop(network, None)
            for stale in [k for k in self._owners if k[0] == network and k[1] not in want]:
                del self._owners[stale]
            try:
                result = self.dataplane.reconcile(network, set(want.values()))
            except Exception as exc:
                self._error(network, "", "reconcile", exc)
                continue
            if result.get("added") or result.get("removed"):
                changes = {"added": list(result["added"]), "removed": list(result["removed"])}
                out[network] = changes
                self.log.write("reconcile", network=network, **changes)
        return out

    def kernel(self) -> dict[str, dict[str, list]]:
        """The kernel's FDB ``[mac, vtep]`` and neighbour ``[ip, mac]`` entries per local network."""
        out = {}
        for network in self.local_networks():
            fdb, neigh = self.dataplane.kernel_state(network)
            out[network] = {"fdb": sorted(map(list, fdb)), "neigh": sorted(map(list, neigh))}
        return out

    def close(self) -> None:
        """Remove everything the data plane created."""
        self._local.clear()
        self.dataplane.close()
