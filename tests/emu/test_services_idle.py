"""Idle connections through a VIP (moby#31208), in real namespaces (as root).

Docker's VIPs are IPVS, whose TCP entries expire after 900 s idle; the next packet of
such a connection is then reset. Ours are nftables DNAT + conntrack in the client's
namespace (:mod:`overlaysim.agent.vip`), so an idle connection lives as long as its
conntrack entry: ``nf_conntrack_tcp_timeout_established`` of that namespace. This
checks, with a client and two tasks on a bridge-less veth star:

* the entry of a connection through the VIP has the established timeout (far above
  900 s), and the connection still carries data after an idle pause;
* with the namespace's established timeout lowered (the way to emulate IPVS's 900 s,
  here 2 s to keep the test short), the entry expires while idle, and the next packet
  is taken up as a new connection and balanced again: with ``numgen inc`` it goes to
  the other task, which answers with a reset, the symptom of moby#31208.

About 15 s. Everything it creates is removed afterwards, also when it fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from overlaysim.agent.netns import ns_path
from overlaysim.agent.tap import in_netns
from overlaysim.agent.vip import replace_rules

pytestmark = pytest.mark.emu

PFX = f"oidl{os.getpid() % 100000}"
CLIENT_IP, VIP, PORT = "10.78.0.9", "10.78.0.2", 8080
TASKS = {"t1": "10.78.0.11", "t2": "10.78.0.12"}
ESTABLISHED = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def ns(role: str) -> str:
    return f"{PFX}-{role}"


def in_ns(role: str, *argv: str) -> str:
    return sh("ip", "netns", "exec", ns(role), *argv)


class Echo:
    """A TCP server in a task namespace: a line in, ``<task>:<line>`` back, per connection."""

    def __init__(self, name: str, ip: str) -> None:
        self.name = name

        def make() -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, PORT))
            s.listen(8)
            return s

        self.sock = in_netns(ns_path(ns(name)), make)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            try:
                while data := conn.recv(100):
                    conn.sendall(f"{self.name}:".encode() + data)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def star(emu: None) -> Iterator[None]:
    made: list[str] = []
    servers: list[Echo] = []
    try:
        for role in ["client", *TASKS]:
            sh("ip", "netns", "add", ns(role))
            made.append(ns(role))
            sh("ip", "-n", ns(role), "link", "set", "lo", "up")
        # the client routes to each task over its own veth (/32 routes), the VIP is local
        for i, (name, ip) in enumerate(TASKS.items()):
            sh("ip", "-n", ns("client"), "link", "add", f"v{i}", "type", "veth",
               "peer", "name", "eth0", "netns", ns(name))  # fmt: skip
            sh("ip", "-n", ns("client"), "addr", "add", f"{CLIENT_IP}/32", "dev", f"v{i}")
            sh("ip", "-n", ns("client"), "link", "set", f"v{i}", "up")
            sh("ip", "-n", ns("client"), "route", "add", f"{ip}/32", "dev", f"v{i}")
            sh("ip", "-n", ns(name), "addr", "add", f"{ip}/32", "dev", "eth0")
            sh("ip", "-n", ns(name), "link", "set", "eth0", "up")
            sh("ip", "-n", ns(name), "route", "add", f"{CLIENT_IP}/32", "dev", "eth0")
        sh("ip", "-n", ns("client"), "route", "add", f"{VIP}/32", "dev", "v0")
        # round robin, so the choice after an expiry is known: the other task
        replace_rules(ns("client"), {VIP: list(TASKS.values())}, mode="inc")
        servers = [Echo(name, ip) for name, ip in TASKS.items()]
        yield
    finally:
        for s in servers:
            s.close()
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _connect() -> socket.socket:
    def make() -> socket.socket:
        return socket.create_connection((VIP, PORT), timeout=5)

    return in_netns(ns_path(ns("client")), make)


def _entries() -> list[str]:
    """The client namespace's conntrack entries for the VIP's port."""
    text = in_ns("client", "cat", "/proc/net/nf_conntrack")
    return [line for line in text.splitlines() if f"dst={VIP}" in line and f"dport={PORT}" in line]


def _timeout(entry: str) -> int:
    # "ipv4 2 tcp 6 431999 ESTABLISHED src=..." : the fifth field is seconds left
    return int(entry.split()[4])


def test_an_idle_connection_lives_as_long_as_its_conntrack_entry(star: None) -> None:
    established = int(in_ns("client", "cat", ESTABLISHED))
    assert established > 900, established  # the kernel's default here: 432000 s (5 days)
    conn = _connect()
    conn.sendall(b"hello\n")
    first = conn.recv(100).decode()
    task = first.split(":")[0]
    assert task in TASKS, first
    (entry,) = _entries()
    assert "ESTABLISHED" in entry and established - 5 <= _timeout(entry) <= established, entry
    print(f"entry after the first exchange: timeout {_timeout(entry)} s of {established} s")
    time.sleep(5)  # idle; IPVS's 900 s would not have passed either, but nothing counts down
    (entry,) = _entries()  # ... to anything near 900: still the established timeout
    assert _timeout(entry) >= established - 10, entry
    conn.sendall(b"again\n")
    assert conn.recv(100).decode() == f"{task}:again\n"  # same task, same connection
    conn.close()


def test_a_lowered_established_timeout_emulates_the_ipvs_expiry(star: None) -> None:
    """``nf_conntrack_tcp_timeout_established`` is per namespace: 2 s here stands for
    IPVS's 900 s. The connection is then reset by the other task."""
    in_ns("client", "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_established=2")
    conn = _connect()
    conn.sendall(b"hello\n")
    task = conn.recv(100).decode().split(":")[0]
    (entry,) = _entries()
    assert _timeout(entry) <= 2, entry
    deadline = time.monotonic() + 15
    while _entries():  # idle until the entry is gone (the kernel reaps it lazily)
        assert time.monotonic() < deadline, _entries()
        time.sleep(0.5)
    other = next(n for n in TASKS if n != task)
    resets = {n: _out_resets(n) for n in TASKS}
    conn.settimeout(5)
    conn.sendall(b"again\n")  # taken up as a new flow (tcp_loose), balanced again
    with pytest.raises(ConnectionResetError):
        got = conn.recv(100)
        raise AssertionError(f"expected a reset, got {got!r} (first task {task})")
    # the reset came from the other task: the packet was DNATed there, to no socket
    assert _out_resets(other) > resets[other] and _out_resets(task) == resets[task]
    print(f"after expiry: reset by {other} (the connection was with {task})")
    conn.close()


def _out_resets(role: str) -> int:
    """TCP resets sent from a namespace (``OutRsts`` of its /proc/net/snmp)."""
    lines = [ln.split() for ln in in_ns(role, "cat", "/proc/net/snmp").splitlines()]
    head, values = [ln for ln in lines if ln[0] == "Tcp:"][:2]
    return int(values[head.index("OutRsts")])
