"""The Mininet pieces the underlay is built from: a veth link made with one netlink call,
Linux bridges, and waiting for STP to settle when the switches form a loop.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlaysim.emu.plan import UnderlayError

if TYPE_CHECKING:
    from pyroute2 import IPRoute


def mininet_classes() -> tuple[type, type, type]:
    """Mininet's Host, Switch and Link; imported late so planning works without it."""
    from mininet.link import Link
    from mininet.node import Host, Switch

    class VethLink(Link):
        """A Mininet link whose veth pair is made with one netlink call from the root
        namespace, each end created directly in its node's namespace (so no temporary
        name ever appears in the root namespace), with the underlay MTU."""

        def __init__(self, node1: Any, node2: Any, *, ipr: IPRoute, mtu: int, **kw: Any):
            self._ipr = ipr
            self._mtu = mtu
            super().__init__(node1, node2, **kw)

        def makeIntfPair(  # noqa: N802 - Mininet's name
            self,
            intfname1: str,
            intfname2: str,
            addr1: str | None = None,
            addr2: str | None = None,
            node1: Any = None,
            node2: Any = None,
            deleteIntfs: bool = False,  # noqa: N803
        ) -> None:
            peer: dict[str, Any] = {"ifname": intfname2, "mtu": self._mtu}
            if node2.inNamespace:
                peer["net_ns_pid"] = node2.pid
            spec: dict[str, Any] = {"mtu": self._mtu, "state": "up", "peer": peer}
            if node1.inNamespace:
                spec["net_ns_pid"] = node1.pid
            self._ipr.link("add", ifname=intfname1, kind="veth", **spec)
            if not node2.inNamespace:  # a root-namespace peer is brought up here
                self._ipr.link("set", index=self._ipr.link_lookup(ifname=intfname2)[0], state="up")

    return Host, Switch, VethLink


def create_bridge(ipr: IPRoute, name: str, ports: Sequence[str], stp: bool) -> None:
    """A Linux bridge with ``ports`` enslaved; STP with 2 s forward delay if asked."""
    opts: dict[str, Any] = {}
    if stp:
        # Timers are in 1/100 s; 2 s forward delay and 1 s hello are the kernel minimums.
        opts = {"br_stp_state": 1, "br_forward_delay": 200, "br_hello_time": 100}
    ipr.link("add", ifname=name, kind="bridge", **opts)
    index = ipr.link_lookup(ifname=name)[0]
    for p in ports:
        ipr.link("set", index=ipr.link_lookup(ifname=p)[0], master=index)
    ipr.link("set", index=index, state="up")


def wait_stp(ports: Sequence[str], timeout_s: float = 20.0) -> None:
    """Block until every bridge port is forwarding (3) or blocking (4)."""
    deadline = time.monotonic() + timeout_s
    pending = list(ports)
    while pending:
        pending = [
            p
            for p in pending
            if Path(f"/sys/class/net/{p}/brport/state").read_text().strip() not in ("3", "4")
        ]
        if pending and time.monotonic() > deadline:
            raise UnderlayError(f"STP did not converge within {timeout_s} s on {pending[:5]}")
        if pending:
            time.sleep(0.1)
