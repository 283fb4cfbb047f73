"""A data plane without a kernel, with the semantics the programmer relies on.

Like the real one: remote endpoints are remembered per network, only written to the
"kernel" of networks that have a sandbox (created by the first attach, removed with
the last detach), replayed when the sandbox is created, and ``reconcile`` compares the
kernel with a desired set and repairs both ways. Endpoints whose VTEP is our own
underlay address are ignored.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from dataclasses import dataclass, field

from overlaysim.agent.dataplane import NetInfo

#: Loopback addresses for agents and transports in tests without root.
A, B, C = "127.0.0.1", "127.0.0.2", "127.0.0.3"


@dataclass
class FakeDataPlane:
    underlay_ip: str = "10.98.0.1"
    calls: list[tuple] = field(default_factory=list)
    remembered: dict[str, dict[tuple[str, str, str], None]] = field(default_factory=dict)
    #: network -> (fdb {(mac, vtep)}, neigh {(ip, mac)}) for networks with a sandbox
    kernel: dict[str, tuple[set, set]] = field(default_factory=dict)
    containers: dict[str, dict[str, str]] = field(default_factory=dict)  # container -> net -> if
    fail_next: Exception | None = None
    closed: bool = False
    threads: set[str] = field(default_factory=set)

    def _record(self, *call: object) -> None:
        self.threads.add(threading.current_thread().name)
        self.calls.append(call)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    def _program(self, network: str) -> None:
        if network not in self.kernel:
            return
        fdb, neigh = self.kernel[network]
        fdb.clear()
        neigh.clear()
        for ip, mac, vtep in self.remembered.get(network, {}):
            fdb.add((mac, vtep))
            neigh.add((ip, mac))

    def attach(self, container: str, net: NetInfo, ip: str, prefixlen: int, mac: str) -> str:
        self._record("attach", container, net.name, ip, mac)
        if net.name not in self.kernel:
            self.kernel[net.name] = (set(), set())
            self._program(net.name)  # replay
        nets = self.containers.setdefault(container, {})
        nets[net.name] = f"eth{len(nets)}"
        return nets[net.name]

    def detach(self, container: str, network: str) -> None:
        self._record("detach", container, network)
        nets = self.containers.get(container, {})
        nets.pop(network, None)
        if not nets:
            self.containers.pop(container, None)
        if not any(network in n for n in self.containers.values()):
            self.kernel.pop(network, None)

    def container_netns(self, container: str) -> str:
        return f"fake-{container}"

    def add_remote(self, network: str, ip: str, mac: str, vtep: str) -> None:
        self._record("add_remote", network, ip, mac, vtep)
        if vtep == self.underlay_ip:
            return
        self.remembered.setdefault(network, {})[(ip, mac, vtep)] = None
        self._program(network)

    def remove_remote(self, network: str, ip: str, mac: str, vtep: str) -> None:
        self._record("remove_remote", network, ip, mac, vtep)
        self.remembered.get(network, {}).pop((ip, mac, vtep), None)
        self._program(network)

    def reconcile(self, network: str, desired: set[tuple[str, str, str]]) -> dict[str, list]:
        self._record("reconcile", network, frozenset(desired))
        self.remembered[network] = {r: None for r in sorted(desired) if r[2] != self.underlay_ip}
        out: dict[str, list] = {"added": [], "removed": []}
        if network not in self.kernel:
            return out
        fdb, neigh = self.kernel[network]
        want_fdb = {(m, v) for _, m, v in self.remembered[network]}
        want_neigh = {(i, m) for i, m, _ in self.remembered[network]}
        out["removed"] = [("fdb", *x) for x in sorted(fdb - want_fdb)] + [
            ("neigh", *x) for x in sorted(neigh - want_neigh)
        ]
        out["added"] = [("fdb", *x) for x in sorted(want_fdb - fdb)] + [
            ("neigh", *x) for x in sorted(want_neigh - neigh)
        ]
        self.kernel[network] = (want_fdb, want_neigh)
        return out

    def kernel_state(self, network: str) -> tuple[set, set]:
        fdb, neigh = self.kernel.get(network, (set(), set()))
        return set(fdb), set(neigh)

    def close(self) -> None:
        self._record("close")
        self.closed = True
        self.kernel.clear()
        self.containers.clear()


def aio(fn):
    """Run an ``async def`` test in a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 60))

    return wrapper


def free_port() -> int:
    """A port free for both UDP and TCP on the loopback addresses used here."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind((A, 0))
            port = t.getsockname()[1]
        try:
            for ip in (A, B, C):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((ip, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")
