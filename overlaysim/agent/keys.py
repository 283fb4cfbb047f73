"""The agent's network keys: fetched from the manager, installed in the data plane.

An agent holds no network key until it needs one: the first container on an encrypted
network fetches the manager's ring (:meth:`Keys.ensure`), and from then on
:meth:`Keys.loop` polls for rotations and installs a newer generation. A member that
comes back with a new boot epoch restarted its ESP sequence numbers, so the encrypted
path is told to open fresh replay windows for it (:meth:`Keys.note_epoch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from overlaysim.agent.logging import EventLog
from overlaysim.agent.manager import EncryptionUnsupported, ManagerClient, ManagerUnavailable
from overlaysim.agent.netkeys import keys_from_ring
from overlaysim.agent.programmer import DataPlanePort
from overlaysim.core.cluster_errors import ClusterError
from overlaysim.core.events import MemberEvent

#: Runs a data-plane call on the agent's worker thread and waits for it.
RunOnWorker = Callable[..., Awaitable[Any]]


class Keys:
    """Key lifecycle of one agent (see module docstring).

    ``manager`` returns the manager client (raising when there is none), ``dataplane``
    the data plane once it exists, ``run`` waits for a worker-thread call and
    ``submit`` queues one without waiting.
    """

    def __init__(
        self,
        *,
        host: str,
        manager: Callable[[], ManagerClient],
        dataplane: Callable[[], DataPlanePort | None],
        run: RunOnWorker,
        submit: Callable[..., None],
        events: EventLog,
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.host = host
        self._manager = manager
        self._dataplane = dataplane
        self._run = run
        self._submit = submit
        self.events = events
        self._on_error = on_error
        #: Generation of the installed ring; None until this host holds keys.
        self.generation: int | None = None
        self._epochs: dict[str, int] = {}  # boot epoch last seen per member

    async def refresh(self) -> dict[str, Any]:
        """Fetch the network key ring from the manager; install it if it is newer."""
        ring = await self._manager().call("keys")
        keys, primary = keys_from_ring(ring)
        generation = int(ring["generation"])
        tags = [k.tag for k in keys]
        if generation != self.generation:
            dataplane = self._dataplane()
            assert dataplane is not None
            await self._run(dataplane.install_keys, keys, primary)
            self.generation = generation
            self.events.write("keys_installed", generation=generation, primary=primary, tags=tags)
        return {"generation": generation, "primary": primary, "tags": tags}

    async def rotate_early(self) -> None:
        """An SA ran out of sequence numbers: ask the manager to rotate the ring we hold
        (only if nobody did yet) and install the result at once; peers pick it up on
        their next poll, while this node seals with the ``next`` key they already hold."""
        if self.generation is None:
            return
        asked = self.generation
        try:
            await self._manager().call("rotate_keys", if_generation=asked)
            ring = await self.refresh()
        except Exception as exc:
            self._on_error("keys", exc)
            return
        self.events.write("rekey_asked", generation=asked, now=ring["generation"])

    async def ensure(self, network: str) -> None:
        """Hold keys before a container joins encrypted ``network``; refuse otherwise."""
        if self.generation is not None:
            return
        try:
            await self.refresh()
        except (ClusterError, ManagerUnavailable, ValueError) as exc:
            raise EncryptionUnsupported(
                f"network {network} is encrypted and {self.host} has no network keys "
                f"({type(exc).__name__}: {exc}); refusing rather than running it in clear"
            ) from None

    async def loop(self, interval: float) -> None:
        """Once this node holds network keys, pick up the manager's rotations."""
        while True:
            await asyncio.sleep(interval)
            if self.generation is None:
                continue
            try:
                await self.refresh()
            except Exception as exc:
                self._on_error("keys", exc)

    def note_epoch(self, ev: MemberEvent) -> None:
        """A member back with a new boot epoch restarted: its ESP sequence numbers
        start again at 1, so the encrypted path must open fresh windows for it."""
        if not ev.epoch or not ev.addr:
            return
        previous = self._epochs.get(ev.node)
        self._epochs[ev.node] = ev.epoch
        if previous is not None and previous != ev.epoch and self.generation is not None:
            dataplane = self._dataplane()
            if dataplane is not None:
                self._submit(dataplane.reset_peer, ev.addr.rpartition(":")[0])

    async def crypto(self) -> dict[str, Any]:
        """The encrypted data path: key tags, SAs, counters, cleartext VXLAN drops."""
        dataplane = self._dataplane()
        assert dataplane is not None
        state = await self._run(dataplane.crypto_state)
        return {"generation": self.generation, **state}

    async def final_counters(self) -> dict[str, Any]:
        """ESP counters for the stop line (empty when this host never held keys)."""
        dataplane = self._dataplane()
        if dataplane is None or self.generation is None:
            return {}
        return (await self._run(dataplane.crypto_state)).get("counters", {})
