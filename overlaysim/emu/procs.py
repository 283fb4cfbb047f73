"""Processes of emulation runs: identity by PID *and* start time, stopping them."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def netns_inode(pid: int) -> int | None:
    """Inode of the network namespace of ``pid`` (None if it is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pids_in_netns(inodes: set[int]) -> list[int]:
    """PIDs whose network namespace is one of ``inodes``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            ino = netns_inode(int(entry.name))
            if ino is not None and ino in inodes:
                found.append(int(entry.name))
    return found


def terminate(pid: int, start: int | None, grace_s: float = 1.0) -> bool:
    """SIGTERM (then SIGKILL) ``pid`` if it is still the process started at ``start``.

    Returns whether a matching process was found. See :func:`terminate_all`.
    """
    return terminate_all([(pid, start)], grace_s) == 1


def terminate_all(targets: list[tuple[int, int | None]], grace_s: float = 1.0) -> int:
    """SIGTERM every (pid, start) still alive with that start time; SIGKILL survivors.

    All are signalled first and then waited for together, so stopping many processes
    costs one grace period, not one each. A process that leads its own process group
    has the whole group signalled, so its children go too. Returns how many matched.
    """
    alive = []
    for pid, start in targets:
        if start is None or proc_start(pid) != start:
            continue
        group = -pid if _is_group_leader(pid) else pid
        _signal(group, signal.SIGTERM)
        alive.append((pid, start, group))
    matched = len(alive)
    deadline = time.monotonic() + grace_s
    while alive:
        alive = [a for a in alive if proc_start(a[0]) == a[1] and not _is_zombie(a[0])]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for _pid, _start, group in alive:
        _signal(group, signal.SIGKILL)
    return matched


def _signal(target: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if target < 0:
            os.killpg(-target, sig)
        else:
            os.kill(target, sig)


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].startswith("Z")
