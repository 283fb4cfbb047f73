"""Back the simulator's heap with huge pages, where the kernel allows it.

A simulated cluster of thousands of hosts is gigabytes of small Python objects, and the
hot path reads one field of many of them in no particular order (each record of each
message a node receives). On 4 KB pages nearly every such read also misses the CPU's
address-translation cache; on 2 MB pages far fewer do. Python's object allocator maps
its arenas without asking for huge pages, and where transparent huge pages are given
only to memory that asks (mode ``madvise``, as on this project's machines) the heap
stays on small pages.

Linux 6.1 added ``MADV_COLLAPSE``: a process asks for a range of its own memory to be
moved onto huge pages now, in mode ``madvise`` as in ``always``. :class:`HeapCollapser` does
that for the process's anonymous memory, at most once per ``every`` wall seconds while
the heap grows, the first time ``every`` seconds in (ranges already on huge pages cost
next to nothing to ask again: about a millisecond per GB here; a first request about
two seconds per GB, once).
Placement only: no result depends on it. Where the kernel refuses (older kernels,
huge pages disabled, not Linux) it stops asking and says so in :attr:`HeapCollapser.status`.
"""

from __future__ import annotations

import ctypes
import errno
import time
from collections.abc import Callable, Iterable

__all__ = ["HeapCollapser", "anonymous_ranges", "huge_mb"]

_MADV_COLLAPSE = 25  # include/uapi/asm-generic/mman-common.h
_HUGE = 2 << 20  # a huge page on x86-64 and arm64 (4 KB base pages)


def _madvise() -> Callable[[int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def anonymous_ranges(maps: Iterable[str]) -> list[tuple[int, int]]:
    """The 2 MB-aligned parts of the private, writable, anonymous mappings (the
    interpreter's arenas and the C heap) among ``maps``, lines of /proc/PID/maps."""
    out = []
    for line in maps:
        parts = line.split()
        # address perms offset dev inode [path]: anonymous has no path (or [heap]).
        if len(parts) < 5 or (len(parts) > 5 and parts[5] != "[heap]"):
            continue
        if not parts[1].startswith("rw") or parts[1][3:4] != "p":
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        a = (lo + _HUGE - 1) & ~(_HUGE - 1)
        b = hi & ~(_HUGE - 1)
        if b > a:
            out.append((a, b))
    return out


class HeapCollapser:
    """Call it often (it rate-limits itself): moves the heap onto huge pages."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        # The first request comes ``every`` seconds in: a run shorter than that is too
        # small for huge pages to matter.
        self._last = time.monotonic()
        self._madvise = _madvise()
        #: "on" once asked, "on, not asked yet" before, or why not ("off: ...").
        self.status = (
            "on, not asked yet" if self._madvise is not None else "off: no madvise in the C library"
        )
        #: Bytes the kernel accepted, summed over calls (ranges asked again count again).
        self.asked_bytes = 0

    def __call__(self) -> None:
        if self._madvise is None:
            return
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        try:
            with open("/proc/self/maps") as f:
                ranges = anonymous_ranges(f)
        except OSError:
            self._stop("off: no /proc/self/maps")
            return
        refused = 0
        self.status = "on"
        for a, b in ranges:
            if self._madvise(a, b - a, _MADV_COLLAPSE) == 0:
                self.asked_bytes += b - a
                continue
            err = ctypes.get_errno()
            if err == errno.EINVAL:
                refused += 1  # this kernel has no MADV_COLLAPSE, or this range cannot
            # EAGAIN/ENOMEM: no free huge page now; try again next time.
        if ranges and refused == len(ranges) and not self.asked_bytes:
            self._stop("off: the kernel refused MADV_COLLAPSE (Linux >= 6.1 needed)")

    def _stop(self, why: str) -> None:
        self._madvise = None
        self.status = why


def huge_mb() -> float | None:
    """MB of this process's anonymous memory on huge pages now (None where the kernel
    does not say)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
