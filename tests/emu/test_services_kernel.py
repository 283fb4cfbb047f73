"""Service networking pieces in real namespaces: embedded DNS, resolv.conf, UTS, VIP DNAT.

A small bridge in its own namespace joins a client and three backends (10.77.0.0/24).
The embedded DNS server runs on an asyncio loop in this process with its sockets inside
the client's namespace; the client resolves with its ordinary resolvers (glibc's
``getent`` and dnspython's stub, both reading the resolv.conf that ``ip netns exec``
mounts). VIP rules are the agent's nftables table in the client namespace; backends
answer TCP and UDP with their name, so the test counts where connections went.

Everything it creates is removed in the fixture's teardown, also when a test fails.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import selectors
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from overlaysim.agent.dns import EmbeddedDns
from overlaysim.agent.netns import ns_path
from overlaysim.agent.resolvconf import NETNS_ETC, remove_resolv_conf, write_resolv_conf
from overlaysim.agent.tap import in_netns
from overlaysim.agent.uts import UTS_DIR, create_uts, exec_argv, remove_uts
from overlaysim.agent.vip import VipBalancer, current_backends, remove_rules, replace_rules
from overlaysim.core.events import EntryEvent, EntryEventKind
from overlaysim.core.services import ENDPOINTS_TABLE, Directory, EndpointMode, TaskSpec, name_fields

pytestmark = pytest.mark.emu

PFX = f"osvc{os.getpid() % 100000}"
CLIENT_IP, VIP = "10.77.0.9", "10.77.0.2"
BACKENDS = {"b1": "10.77.0.11", "b2": "10.77.0.12", "b3": "10.77.0.13"}
TCP_PORT, UDP_PORT = 8080, 9999


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


def ns(role: str) -> str:
    return f"{PFX}-{role}"


class _Backends:
    """TCP and UDP servers inside the backend namespaces that answer with their name."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        for name, ip in BACKENDS.items():

            def make(ip=ip):
                t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                t.bind((ip, TCP_PORT))
                t.listen(128)
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.bind((ip, UDP_PORT))
                return t, u

            t, u = in_netns(ns_path(ns(name)), make)
            self.sel.register(t, selectors.EVENT_READ, ("tcp", name))
            self.sel.register(u, selectors.EVENT_READ, ("udp", name))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.1):
                kind, name = key.data
                if kind == "tcp":
                    conn, _ = key.fileobj.accept()
                    conn.sendall(name.encode())
                    conn.close()
                else:
                    _, addr = key.fileobj.recvfrom(100)
                    key.fileobj.sendto(name.encode(), addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()


@pytest.fixture
def lab(emu):
    """Namespaces, bridge, backends, a DNS server for the client; all removed after."""
    made: list[str] = []
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    backends = srv = upstream = None
    try:
        for role in ["sw", "client", *BACKENDS]:
            sh("ip", "netns", "add", ns(role))
            made.append(ns(role))
            sh("ip", "-n", ns(role), "link", "set", "lo", "up")
        sh("ip", "-n", ns("sw"), "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns("sw"), "link", "set", "br0", "up")
        for i, (role, ip) in enumerate([("client", CLIENT_IP), *BACKENDS.items()]):
            sh(
                "ip",
                "-n",
                ns("sw"),
                "link",
                "add",
                f"p{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns(role),
            )
            sh("ip", "-n", ns("sw"), "link", "set", f"p{i}", "master", "br0", "up")
            sh("ip", "-n", ns(role), "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns(role), "link", "set", "eth0", "up")
        backends = _Backends()
        loop_thread.start()
        directory = _directory()
        upstream = _FakeUpstream()
        srv = EmbeddedDns(directory, upstreams=[("127.0.0.1", upstream.port)], timeout=1.0)
        asyncio.run_coroutine_threadsafe(srv.add("client", ns_path(ns("client"))), loop).result(10)
        write_resolv_conf(ns("client"))
        create_uts(ns("client"), "client")
        yield {"srv": srv, "directory": directory, "loop": loop}
    finally:
        if srv is not None:
            asyncio.run_coroutine_threadsafe(srv.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if loop_thread.is_alive():
            loop_thread.join(5)
        loop.close()
        if backends is not None:
            backends.close()
        if upstream is not None:
            upstream.close()
        remove_resolv_conf(ns("client"))
        remove_uts(ns("client"))
        for name in reversed(made):
            sh("ip", "netns", "del", name, check=False)
    left = [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith(PFX)]
    assert left == [] and not (NETNS_ETC / ns("client")).exists()
    assert not (UTS_DIR / ns("client")).exists()


def _put(d: Directory, network: str, key: str, ip: str, task: TaskSpec | None = None):
    value = {"name": key, "ip": ip, "mac": "02:00:00:00:00:01", "vtep": "10.9.0.1"}
    value.update(name_fields((), task))
    d.apply(EntryEvent(EntryEventKind.CREATE, network, ENDPOINTS_TABLE, key, "h1", value))


def _directory() -> Directory:
    d = Directory()
    _put(d, "front", "client", CLIENT_IP)
    for i, ip in enumerate(BACKENDS.values(), 1):
        _put(d, "front", f"web.{i}", ip, TaskSpec("web", i, vip=VIP))
    for i in (1, 2):
        _put(d, "front", f"rr.{i}", f"10.77.0.2{i}", TaskSpec("rr", i, EndpointMode.DNSRR))
    _put(d, "back", "secret", "10.88.0.5")
    return d


class _FakeUpstream:
    """A host resolver on loopback in this namespace: example.org A 192.0.2.1."""

    def __init__(self) -> None:
        import dns.message
        import dns.rrset

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()

        def run() -> None:
            while not self.stop.is_set():
                try:
                    data, addr = self.sock.recvfrom(4096)
                except TimeoutError:
                    continue
                q = dns.message.from_wire(data)
                r = dns.message.make_response(q)
                r.answer.append(dns.rrset.from_text("example.org.", 60, "IN", "A", "192.0.2.1"))
                self.sock.sendto(r.to_wire(), addr)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _getent(name: str) -> tuple[int, set[str]]:
    res = sh("ip", "netns", "exec", ns("client"), "getent", "ahostsv4", name, check=False)
    return res.returncode, {line.split()[0] for line in res.stdout.splitlines() if line.strip()}


_STUB = """
import sys, dns.resolver
r = dns.resolver.Resolver()  # reads /etc/resolv.conf: the container's, mounted by ip netns exec
print(",".join(r.nameservers))
for name, tcp in (("tasks.web", True), ("rr", False), ("example.org", False), ("secret", False)):
    try:
        ans = r.resolve(name, "A", tcp=tcp, search=False, lifetime=5)
        print(name, " ".join(sorted(a.address for a in ans)))
    except dns.resolver.NXDOMAIN:
        print(name, "NXDOMAIN")
"""


def test_dns_resolv_conf_and_hostname_inside_the_container(lab):
    assert _getent("web") == (0, {VIP})
    assert _getent("tasks.web") == (0, set(BACKENDS.values()))
    assert _getent("web.2") == (0, {BACKENDS["b2"]})
    assert _getent("secret")[0] == 2  # on a network the client is not on: not found
    res = sh("ip", "netns", "exec", ns("client"), sys.executable, "-c", _STUB)
    lines = res.stdout.splitlines()
    assert lines[0] == "127.0.0.11"
    assert lines[1:] == [
        "tasks.web " + " ".join(BACKENDS.values()),
        "rr 10.77.0.21 10.77.0.22",
        "example.org 192.0.2.1",  # forwarded to the host's resolver from the agent's side
        "secret NXDOMAIN",
    ]
    assert sh(*exec_argv(ns("client"), ns("client"), ["hostname"])).stdout.strip() == "client"
    assert sh("hostname").stdout.strip() != "client"  # the host kept its own
    counts = lab["srv"].counts
    assert counts["answered"] >= 5 and counts["forwarded"] == 1 and counts["nxdomain"] >= 2


def _connect_tcp(ip: str) -> str:
    def run() -> str:
        with socket.create_connection((ip, TCP_PORT), timeout=5) as s:
            return s.recv(16).decode()

    return in_netns(ns_path(ns("client")), run)


def _spread(n: int) -> collections.Counter:
    return collections.Counter(_connect_tcp(VIP) for _ in range(n))


def test_vip_spreads_connections_and_a_removed_task_stops_receiving(lab):
    from overlaysim.metrics.lbspread import lb_spread

    client = ns("client")
    bal = VipBalancer()
    d = lab["directory"]
    assert bal.sync("client", client, d.vip_backends("client"))
    assert not bal.sync("client", client, d.vip_backends("client"))  # unchanged: no-op
    assert current_backends(client) == {VIP: tuple(BACKENDS.values())}
    spread = lb_spread(_spread(90).elements(), BACKENDS)
    print(f"random: {spread}")
    assert spread["failed"] == 0 and spread["stray"] == {}
    assert min(spread["per_task"].values()) > 0 and spread["p_uniform"] > 1e-4

    # UDP pins a flow to one task through conntrack; removing that task flushes it.
    def udp_sock() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((CLIENT_IP, 40000))
        s.settimeout(5)
        return s

    u = in_netns(ns_path(client), udp_sock)
    try:
        first = set()
        for _ in range(5):
            u.sendto(b"?", (VIP, UDP_PORT))
            first.add(u.recv(16).decode())
        assert len(first) == 1  # one flow, one task
        pinned = first.pop()
        # The task's entry is deleted: the directory drops it, the table is replaced.
        slot = list(BACKENDS).index(pinned) + 1
        d.apply(
            EntryEvent(EntryEventKind.DELETE, "front", ENDPOINTS_TABLE, f"web.{slot}", "h1", {})
        )
        assert bal.sync("client", client, d.vip_backends("client")) and bal.flushed >= 1
        u.sendto(b"?", (VIP, UDP_PORT))
        assert u.recv(16).decode() != pinned
    finally:
        u.close()
    after = _spread(45)
    print(f"after removing {pinned}: {dict(after)}")
    assert pinned not in after and len(after) == 2
    assert current_backends(client) == {VIP: tuple(ip for b, ip in BACKENDS.items() if b != pinned)}


def test_round_robin_mode_and_atomic_replacement_under_load(lab):
    client = ns("client")
    replace_rules(client, {VIP: list(BACKENDS.values())}, mode="inc")
    hits = _spread(30)
    assert sorted(hits.values()) == [10, 10, 10]  # numgen inc: strict rotation

    # Replace the table over and over while connecting: every connection lands on a
    # task of one of the two sets, none fails (no half-written table is ever seen).
    sets = [[BACKENDS["b1"], BACKENDS["b2"]], [BACKENDS["b3"]]]
    swaps = 200  # a set-lookup race showed about once per 3,000 connections (agent/vip.py)
    failures: list[BaseException] = []

    def churn() -> None:
        rng = random.Random(1)
        try:
            for _ in range(swaps):
                replace_rules(client, {VIP: rng.choice(sets)})
        except BaseException as exc:  # reported below
            failures.append(exc)

    t = threading.Thread(target=churn)
    t.start()
    seen: collections.Counter = collections.Counter()
    while t.is_alive():
        seen[_connect_tcp(VIP)] += 1  # raises if a connection fails
    t.join()
    print(f"during {swaps} replacements: {dict(seen)}")
    assert failures == [] and sum(seen.values()) >= 5
    assert remove_rules(client) and not remove_rules(client)
    assert current_backends(client) == {}
    assert Path(ns_path(client)).exists()


def test_service_host_starts_and_stops_everything_for_a_container(emu):
    """ServiceHost on a real namespace: hostname, resolv.conf, DNS, VIP table; then none."""
    from overlaysim.agent.service_host import ServiceHost

    netns, name = ns("solo"), f"{PFX}.1"
    sh("ip", "netns", "add", netns)
    loop = asyncio.new_event_loop()
    try:
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        # getaddrinfo (AI_ADDRCONFIG) asks nothing without a non-loopback address (no
        # dummy driver here, so a veth pair inside the namespace).
        sh("ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        sh("ip", "-n", netns, "addr", "add", "10.77.0.9/24", "dev", "eth0")
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        host = ServiceHost(EmbeddedDns(Directory(), upstreams=[], timeout=0.5))

        async def start():
            await host.start_container(name, netns, hostname="solo.1")
            host.on_event(_event(name, "10.77.0.9"))
            host.on_event(_event("api.1", "10.77.0.31", TaskSpec("api", 1, vip="10.77.0.3")))

        loop.run_until_complete(start())
        assert host.sync_vips() == 1
        assert current_backends(netns) == {"10.77.0.3": ("10.77.0.31",)}
        # the UTS file is named after the namespace (project prefix, unique per host)
        assert sh(*exec_argv(netns, netns, ["hostname"])).stdout.strip() == "solo.1"

        async def ask() -> str:
            proc = await asyncio.create_subprocess_exec(
                "ip",
                "netns",
                "exec",
                netns,
                "getent",
                "ahostsv4",
                "api",
                stdout=subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            return out.decode()

        assert loop.run_until_complete(ask()).split()[0] == "10.77.0.3"
        assert loop.run_until_complete(host.stop_container(name))
        assert not (NETNS_ETC / netns).exists() and not (UTS_DIR / netns).exists()
        assert host.dns.containers() == []
        loop.run_until_complete(host.dns.close())
    finally:
        loop.close()
        remove_resolv_conf(netns)
        remove_uts(netns)
        sh("ip", "netns", "del", netns, check=False)
    assert netns not in sh("ip", "netns", "list").stdout


def _event(key: str, ip: str, task: TaskSpec | None = None) -> EntryEvent:
    value = {"name": key, "ip": ip, "mac": "02:00:00:00:00:01", "vtep": "10.9.0.1"}
    value.update(name_fields((), task))
    return EntryEvent(EntryEventKind.CREATE, "front", ENDPOINTS_TABLE, key, "h1", value)
