"""A container as the world knows it: its host, addresses, liveness and task.

Its own module so that everything the world owns (services included, see
:mod:`overlaysim.world.services`) can name it without importing
:mod:`overlaysim.world.world`. Backends see the narrower
:class:`overlaysim.world.backend.Container` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from overlaysim.core.services import TaskSpec


@dataclass(slots=True)
class Container:
    """A container as the world knows it."""

    name: str
    host: str
    #: network -> address ("" until the backend knows it).
    networks: dict[str, str] = field(default_factory=dict)
    #: Whether it exists on its (running) host now.
    live: bool = False
    #: Where the backend runs it (the emulator's namespace), "" when not live.
    sandbox: str = ""
    #: Extra DNS names it answers to on its networks.
    aliases: tuple[str, ...] = ()
    #: What makes it a task of a service (its endpoint entries carry it), else None.
    task: TaskSpec | None = None
    #: The command it runs (a service's task command; run by a backend that runs_tasks).
    command: tuple[str, ...] = ()
