"""The ``tc`` requests for one interface's egress: netem delay, tbf rate, or both.

Used where the kernel has ``sch_netem`` (see :mod:`overlaysim.emu.delay`); on kernels
without it only the tbf part is ever requested. Pure functions: the tests check the exact
argv lists, since the netem path cannot run on a kernel without netem.
"""

from __future__ import annotations

from dataclasses import dataclass

#: tbf queue length in time: 50 ms at the configured rate.
TBF_QUEUE_S = 0.05


@dataclass(frozen=True, slots=True)
class EgressShape:
    """Wanted egress queueing on one interface."""

    rate_mbps: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0

    def empty(self) -> bool:
        """Nothing to queue: the interface keeps the kernel's default qdisc."""
        return self.rate_mbps is None and self.delay_ms == 0 and self.jitter_ms == 0


def qdisc_argv(ifname: str, shape: EgressShape, mtu: int) -> list[list[str]]:
    """tc commands giving ``ifname`` the root qdisc for ``shape`` (none if it is empty)."""
    if shape.empty():
        return []
    dev = ["tc", "qdisc", "add", "dev", ifname]
    tbf = tbf_args(shape, mtu) if shape.rate_mbps is not None else []
    if not (shape.delay_ms or shape.jitter_ms):
        return [[*dev, "root", "handle", "1:", *tbf]]
    netem = [*dev, "root", "handle", "1:", "netem", "delay", f"{shape.delay_ms * 1000:.0f}us"]
    if shape.jitter_ms:
        netem.append(f"{shape.jitter_ms * 1000:.0f}us")
    # netem queues and delays; a tbf child under it does the rate limit.
    return [netem] + ([[*dev, "parent", "1:1", "handle", "10:", *tbf]] if tbf else [])


def tbf_args(shape: EgressShape, mtu: int) -> list[str]:
    """``tbf rate R burst B latency L`` for ``shape``'s rate."""
    assert shape.rate_mbps is not None
    bytes_per_s = shape.rate_mbps * 1e6 / 8
    # A burst of 4 ms of traffic keeps the timer resolution from capping the rate, and at
    # least two full frames so no packet is ever too big for the bucket.
    burst = max(int(bytes_per_s * 0.004), 2 * (mtu + 14))
    rate = f"{shape.rate_mbps * 1000:.0f}kbit"
    return ["tbf", "rate", rate, "burst", str(burst), "latency", f"{TBF_QUEUE_S * 1000:.0f}ms"]
