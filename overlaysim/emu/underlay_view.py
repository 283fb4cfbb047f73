"""What the impairments and the delay line may use of a built underlay, and nothing more.

:class:`~overlaysim.emu.net.Underlay` owns the impairments (``underlay.impairments``)
and hands them itself; they see it only through :class:`UnderlayView`: the plan (links,
hosts, addresses, run tag), the run record (to journal the root namespace's nft table),
the MTU, whether it is started, and running commands or the delay-line process inside
its hosts. The underlay in turn calls only the impairments' public verbs (``loss``,
``rate``, ``delay``, ``clear``, ``partition``, ``heal``, ``crash_links``,
``restore_links``, ``apply_baseline``, ``remove_root_state``). Neither module imports
the other's internals, and ``impair`` does not import ``net`` at all (tests give it a
small fake view).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from overlaysim.emu.plan import Plan
    from overlaysim.emu.record import RunRecord
    from overlaysim.scenario.topology import Topology


class UnderlayView(Protocol):
    """The underlay as impairments and the delay line see it."""

    topology: Topology
    #: Names and addresses; None until the underlay is built.
    plan: Plan | None
    #: The run's journal of created objects; None until built.
    record: RunRecord | None
    mtu: int
    #: "new", "building", "built", "running" or "stopped".
    state: str

    @property
    def hosts(self) -> tuple[str, ...]:
        """Scenario host names, topology order."""
        ...

    def pid(self, name: str) -> int:
        """PID of a process in host ``name``'s namespaces."""
        ...

    def run_in(
        self,
        name: str | None,
        argv: Sequence[str],
        *,
        input: str | None = None,  # noqa: A002 - subprocess's name
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in host ``name`` (``None``: the root namespace) and wait."""
        ...

    def popen(self, name: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a recorded process in host ``name`` (stopped with the underlay)."""
        ...
