"""The verbs a backend (simulator or emulator) offers the world.

The world decides *what* happens and keeps the truth; a backend only makes it so on
its substrate (a SimPy cluster over a graph, or agents in Mininet hosts) and answers
with the facts only it knows (the time an agent started, the address it was given).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from overlaysim.scenario.steps import ImpairKind, Link

T = TypeVar("T")


class Container(Protocol):
    """A container as a backend sees it (the world's ``world.Container``): the backend
    reads these and sets ``sandbox`` when it starts one; the world owns the rest."""

    name: str
    host: str
    #: network -> address ("" until the backend knows it).
    networks: dict[str, str]
    live: bool
    sandbox: str


class Backend(Protocol):
    """One run's substrate. Times are seconds since scenario start."""

    #: Whether the world records entry commits itself (the simulator) or the agents
    #: log them (the emulator).
    records_commits: bool
    #: Whether it runs what only real processes and kernels can: task commands and the
    #: routing mesh of published ports (the emulator). The others record them only.
    runs_tasks: bool
    #: Whether a host's slow steps (containers, the rest of a (re)start) run on that
    #: host's worker thread while the timeline goes on (the emulator: they take real
    #: time); see ``World.apply``.
    steps_in_background: bool

    def now(self) -> float:
        """Scenario time now."""
        ...

    def refused(self, exc: BaseException) -> str | None:
        """The reason to record if ``exc`` means "skip this step", else None (a bug)."""
        ...

    # -- hosts ---------------------------------------------------------------------------

    def boot(
        self,
        order: Sequence[str],
        *,
        formed: bool,
        seeds: Callable[[str, Collection[str]], list[str]],
    ) -> dict[str, float]:
        """Start the initial hosts in ``order``; ``seeds(host, started)`` names whom each
        joins through. Returns each host's start time (0 when the cluster is formed)."""
        ...

    def prepare_start(self, host: str) -> None:
        """The first part of a (re)start, on the timeline's thread at the step's
        instant (the emulator gives the host its links back); :meth:`start` follows,
        on the host's lane when the start runs in the background."""
        ...

    def start(self, host: str, seeds: list[str]) -> float:
        """(Re)start ``host`` (a restart or a join); return the time it came up."""
        ...

    def crash(self, host: str) -> None:
        """Stop ``host`` without a goodbye; its links fall silent."""
        ...

    def leave(self, host: str) -> None:
        """``host`` leaves gracefully."""
        ...

    # -- containers ----------------------------------------------------------------------

    def reserve(self, c: Container, network: str) -> str:
        """An address for ``c`` on ``network`` while its host is down ("" if unknown)."""
        ...

    def attach(
        self, c: Container, networks: Sequence[str], first: Collection[str]
    ) -> dict[str, str]:
        """Make ``c`` live on ``networks`` (``first``: networks new to its host);
        return the address on each."""
        ...

    def detach(
        self, c: Container, network: str, *, live: bool, last: bool, stay: bool = False
    ) -> None:
        """Take ``c`` off ``network`` (``live``: it exists on a running host; ``last``:
        no other container of its host is on that network, so the host leaves it too,
        unless ``stay``: the world plays that leave later through :meth:`leave_network`,
        or not at all when a container attaches there first)."""
        ...

    def leave_network(self, host: str, network: str) -> None:
        """``host`` leaves ``network`` now: the delayed leave the world kept after a
        ``detach`` with ``stay`` (no container of the host is on it)."""
        ...

    def reserve_vip(self, service: str, network: str) -> str:
        """A virtual IP for ``service`` on ``network`` from the network's IPAM."""
        ...

    def release_vip(self, service: str, network: str) -> None:
        """Give ``service``'s virtual IP on ``network`` back to the IPAM."""
        ...

    def publish(self, service: str, ports: Sequence[tuple[int, int]]) -> str | None:
        """Publish ``ports`` (P, T) of ``service`` on every host (the routing mesh); the
        service's ingress VIP, or None where the backend does not run the mesh."""
        ...

    def unpublish(self, service: str) -> None:
        """Take ``service``'s published ports off every host."""
        ...

    def each_host(
        self, fn: Callable[[T], None], items: Iterable[T], host: Callable[[T], str]
    ) -> None:
        """Call ``fn`` on every item; items of one host in order (hosts may run in parallel)."""
        ...

    # -- the underlay ----------------------------------------------------------------------

    def impair(self, kind: ImpairKind, value: float, link: Link | None, jitter_ms: float) -> None:
        """Set impairment ``kind`` to ``value`` on ``link`` (None: everywhere)."""
        ...

    def clear(self, kind: ImpairKind | None, link: Link | None) -> None:
        """Remove impairment ``kind`` (None: all) from ``link``; other kinds stay."""
        ...

    def partition(self, groups: list[list[str]]) -> None:
        """Hosts in different groups cannot reach each other."""
        ...

    def heal(self) -> None:
        """End the partition."""
        ...

    def rotate_keys(self, hosts: list[str]) -> dict[str, Any] | None:
        """Rotate the network keys; the detail to record, or None when not modelled."""
        ...
