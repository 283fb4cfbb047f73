"""Per-container UTS namespace: each container gets its own hostname, as in Docker.

A UTS namespace is kept alive without a process by bind-mounting it on a file, the way
``ip netns`` keeps network namespaces under ``/run/netns``: what ``unshare --uts=FILE
hostname NAME`` does, done by a short-lived thread of the agent (``unshare`` changes only
the calling thread): it creates the namespace, names it, and pins it on ``FILE``. Commands enter it next to
the network namespace with ``ip netns exec NETNS nsenter --uts=FILE -- CMD`` (``ip netns
exec`` also applies the container's ``/etc/netns/NETNS/resolv.conf``). Removing it
unmounts and deletes the file; the namespace dies with its last user.

Hostnames follow Docker: the container name, ``<service>.<slot>`` for a service task.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from overlaysim.agent.ownthread import call_in_own_thread

__all__ = ["UTS_DIR", "UtsError", "create_uts", "exec_argv", "hostname_of", "remove_uts"]

UTS_DIR = Path("/run/overlaysim/uts")
MNT_DETACH = 2
MS_BIND = 4096
CLONE_NEWUTS = 0x04000000
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62})$")
_libc = ctypes.CDLL(None, use_errno=True)


class UtsError(RuntimeError):
    """The UTS namespace could not be created or entered."""


def _path(name: str, root: Path) -> Path:
    if not _HOST.match(name) or "/" in name:
        raise ValueError(f"container name {name!r}: expected 1-64 of letters, digits, '.-_'")
    return root / name


def create_uts(name: str, hostname: str | None = None, *, root: Path = UTS_DIR) -> Path:
    """Create container ``name``'s UTS namespace with ``hostname`` (default: ``name``)."""
    host = hostname or name
    if not _HOST.match(host):
        raise ValueError(f"hostname {host!r}: expected 1-64 of letters, digits, '.-_'")
    path = _path(name, root)
    root.mkdir(parents=True, exist_ok=True)
    if path.exists() and os.path.ismount(path):
        remove_uts(name, root=root)  # a leftover from a crashed run: start clean
    path.touch()
    try:
        _pin_new_uts(path, host)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise UtsError(f"unshare --uts for {name}: {exc.strerror or exc}") from None
    return path


def _pin_new_uts(path: Path, hostname: str) -> None:
    """In a thread of its own: a new UTS namespace named ``hostname``, bound on ``path``.

    The thread ends afterwards; the bind mount keeps the namespace alive. (Running
    ``unshare``/``hostname`` as a process costs a busy agent a fork and two execs per
    container.)
    """

    def run() -> None:
        _check(_libc.unshare(CLONE_NEWUTS), "unshare(CLONE_NEWUTS)")
        raw = hostname.encode()
        _check(_libc.sethostname(raw, len(raw)), "sethostname")
        own = f"/proc/self/task/{threading.get_native_id()}/ns/uts".encode()
        _check(_libc.mount(own, str(path).encode(), b"none", MS_BIND, None), "bind mount")

    call_in_own_thread(run, "uts-create")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def remove_uts(name: str, *, root: Path = UTS_DIR) -> bool:
    """Unmount and delete container ``name``'s UTS namespace file; False if absent."""
    path = _path(name, root)
    if not path.exists():
        return False
    if os.path.ismount(path) and _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise UtsError(f"umount {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the last one out removes the folder it made
        root.rmdir()
    return True


def hostname_of(name: str, *, root: Path = UTS_DIR) -> str:
    """The hostname inside container ``name``'s UTS namespace."""
    res = subprocess.run(
        ["nsenter", f"--uts={_path(name, root)}", "hostname"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if res.returncode != 0:
        raise UtsError(f"nsenter --uts for {name}: {res.stderr.strip()}")
    return res.stdout.strip()


def exec_argv(netns: str, name: str, argv: Sequence[str], *, root: Path = UTS_DIR) -> list[str]:
    """The command line running ``argv`` in the container's network and UTS namespaces."""
    return ["ip", "netns", "exec", netns, "nsenter", f"--uts={_path(name, root)}", "--", *argv]
