"""The command a service task runs, inside the task's namespaces, stopped with it.

``overlaysim service create ... -- CMD ARGS`` makes every task of the service run
``CMD ARGS`` the way Docker runs a container's entry point: in the container's network
namespace (``ip netns exec``, which also mounts its resolv.conf, so the command resolves
through the embedded DNS) and its UTS namespace (its hostname is ``<service>.<slot>``).
The agent owns the process: it starts it once the container has its names, and
stops it (SIGTERM to its process group, SIGKILL after a grace period) before the
container goes, when the agent stops, and never leaves it running after a clean stop.

A command that exits on its own is simply gone; there is no restart policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from overlaysim.agent.uts import UTS_DIR, exec_argv

__all__ = ["TaskProcess", "TaskProcesses"]

#: Seconds between SIGTERM and SIGKILL when a task command is stopped.
STOP_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class TaskProcess:
    """A running task command."""

    container: str
    argv: tuple[str, ...]
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


class TaskProcesses:
    """The task commands of one agent, by container name.

    ``stderr`` is where the commands' output goes (the agent's own stderr by default,
    which the testbed keeps next to the agent's log).
    """

    def __init__(self, *, uts_root: Path = UTS_DIR, stderr: int | None = None) -> None:
        self._uts_root = uts_root
        self._stderr = stderr
        self.running: dict[str, TaskProcess] = {}

    def start(self, container: str, netns: str, argv: Sequence[str]) -> TaskProcess:
        """Start ``argv`` in ``container``'s network and UTS namespaces (blocking, quick).

        Raises OSError when the command cannot be started (``ip`` or ``nsenter`` missing).
        """
        if container in self.running:
            raise ValueError(f"container {container!r}: a task command is already running")
        if not argv:
            raise ValueError("task command: expected at least the program name")
        full = exec_argv(netns, netns, list(argv), root=self._uts_root)
        proc = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        tp = self.running[container] = TaskProcess(container, tuple(argv), proc)
        return tp

    async def stop(self, container: str, grace: float = STOP_GRACE) -> int | None:
        """Stop ``container``'s command and its children; its exit status (None: none ran)."""
        tp = self.running.pop(container, None)
        if tp is None:
            return None
        return await asyncio.to_thread(_stop, tp.proc, grace)

    async def stop_all(self, grace: float = STOP_GRACE) -> None:
        """Stop every task command (the agent is stopping)."""
        await asyncio.gather(*(self.stop(c, grace) for c in list(self.running)))

    def status(self) -> dict[str, dict[str, object]]:
        """Per container: pid, argv and exit status (None while it runs)."""
        return {
            c: {"pid": tp.pid, "argv": list(tp.argv), "exit": tp.proc.poll()}
            for c, tp in sorted(self.running.items())
        }


def _stop(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; wait for the leader."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # the leader may be gone while children it started still hold the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()
