"""The simulator's request to put its heap on huge pages: which memory it asks for, what
the kernel does with it here, and that a refusal switches it off with a reason."""

from __future__ import annotations

import errno

import pytest

import overlaysim.sim.hugepages as hp
from overlaysim.sim.hugepages import HeapCollapser, anonymous_ranges, huge_mb

MAPS = """\
55d0c0000000-55d0c0021000 r--p 00000000 fe:01 1234 /usr/bin/python3.11
55d0c1000000-55d0c1600000 rw-p 00000000 00:00 0 [heap]
7f0000100000-7f0000900000 rw-p 00000000 00:00 0
7f0000a00000-7f0000b00000 rw-p 00000000 00:00 0
7f0001000000-7f0001400000 rw-s 00000000 00:05 77 /dev/shm/x
7f0002000000-7f0002400000 r--p 00000000 00:00 0
7f0003000000-7f0003400000 rw-p 00000000 fe:01 99 /usr/lib/libfoo.so
7ffd00000000-7ffd00400000 rw-p 00000000 00:00 0 [stack]
"""


def test_only_private_writable_anonymous_memory_is_asked_for_in_whole_huge_pages() -> None:
    got = anonymous_ranges(MAPS.splitlines())
    # The heap (6 MB, aligned), the anonymous 8 MB mapping cut to its aligned 6 MB; the
    # 1 MB one holds no whole huge page; shared, read-only, file-backed and the stack
    # are left alone.
    assert got == [
        (0x55D0C1000000, 0x55D0C1600000),
        (0x7F0000200000, 0x7F0000800000),
    ]
    assert all(a % (2 << 20) == 0 and b % (2 << 20) == 0 for a, b in got)


def test_on_this_kernel_a_big_heap_ends_on_huge_pages_or_the_reason_is_given() -> None:
    c = HeapCollapser(every=0.0)
    before = huge_mb()
    keep = [list(range(16)) for _ in range(400_000)]  # ~80 MB of small objects
    c()
    if c.status != "on":
        assert c.status.startswith("off: ")  # an older kernel, THP never: it says why
        pytest.skip(f"huge pages not available here: {c.status}")
    assert c.asked_bytes > 32 << 20
    after = huge_mb()
    assert before is not None and after is not None
    assert after >= before + 16  # MB: the kernel really moved memory
    del keep


def test_a_kernel_that_refuses_turns_it_off_with_the_reason(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def refuse(addr: int, length: int, advice: int) -> int:
        calls.append(advice)
        return -1

    c = HeapCollapser(every=0.0)
    c._madvise = refuse  # type: ignore[assignment]
    monkeypatch.setattr(hp.ctypes, "get_errno", lambda: errno.EINVAL)
    c()
    assert calls and set(calls) == {25}
    assert c.status.startswith("off: the kernel refused MADV_COLLAPSE")
    n = len(calls)
    c()
    assert len(calls) == n  # it stopped asking


def test_it_asks_at_most_once_per_period(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def accept(addr: int, length: int, advice: int) -> int:
        calls.append(addr)
        return 0

    clock = [1000.0]
    monkeypatch.setattr(hp.time, "monotonic", lambda: clock[0])
    c = HeapCollapser(every=5.0)
    c._madvise = accept  # type: ignore[assignment]
    c()
    assert calls == []  # not in a run's first seconds
    clock[0] += 5.0
    c()
    n = len(calls)
    assert n > 0
    clock[0] += 4.0
    c()
    assert len(calls) == n
    clock[0] += 1.0
    c()
    assert len(calls) == 2 * n


def test_a_run_asks_for_huge_pages_unless_told_not_to() -> None:
    from overlaysim.sim.runner import frozen_heap

    with frozen_heap() as c:
        assert isinstance(c, HeapCollapser)
    with frozen_heap(huge_pages=False) as c:
        assert c is None
