"""Where each service task name was last placed, and the rule every placer applies.

A task name (``<service>.<slot>``) that ran before goes back to the host it was last
placed on while that host is up. Placed anywhere else it could be refused: the tables
order an entry's versions by the owner's boot epoch first (:mod:`overlaysim.core.tables`),
so a host whose node booted earlier than the one that deleted the name cannot create
its endpoint entry again until that tombstone is reaped (``reap_interval``).

Placers differ in how they pick a host for a name with no usable last host (the live
manager round robin, :mod:`overlaysim.agent.service_registry`; scenarios the least
loaded host, :mod:`overlaysim.world.services`); both keep this rule through
:class:`LastHosts`, so it is written once.
"""

from __future__ import annotations

from collections.abc import Container

__all__ = ["LastHosts"]


class LastHosts:
    """Task name -> the host it was last placed on."""

    __slots__ = ("_hosts",)

    def __init__(self) -> None:
        self._hosts: dict[str, str] = {}

    def sticky(self, task: str, up: Container[str]) -> str | None:
        """The host ``task`` must go back to: its last host if that is in ``up``.

        None when the name is new or its last host is not up: the placer picks one
        (and tells :meth:`placed`).
        """
        host = self._hosts.get(task)
        return host if host is not None and host in up else None

    def placed(self, task: str, host: str) -> None:
        """Remember that ``task`` was placed on ``host``."""
        self._hosts[task] = host
