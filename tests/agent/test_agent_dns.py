"""Embedded DNS: answers from the directory, forwarding, garbage, resolv.conf rendering.

Servers here bind loopback ports in the test's own namespace (no root needed); the
namespace tests are in tests/emu/test_services_kernel.py.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overlaysim.agent.dns import Drop, EmbeddedDns, Forward, Reply, Responder, host_resolvers
from overlaysim.agent.resolvconf import (
    remove_resolv_conf,
    render_resolv_conf,
    write_resolv_conf,
)
from overlaysim.core.events import EntryEvent, EntryEventKind
from overlaysim.core.services import ENDPOINTS_TABLE, Directory, EndpointMode, TaskSpec, name_fields


def _put(d: Directory, network: str, key: str, ip: str, task: TaskSpec | None = None, aliases=()):
    value = {"name": key, "ip": ip, "mac": "02:00:00:00:00:01", "vtep": "10.9.0.1"}
    value.update(name_fields(aliases, task))
    d.apply(EntryEvent(EntryEventKind.CREATE, network, ENDPOINTS_TABLE, key, "h1", value))


def _directory(rr_tasks: int = 3) -> Directory:
    d = Directory()
    _put(d, "front", "client", "10.0.0.9")
    _put(d, "front", "db", "10.0.0.20", aliases=["pg"])
    for i in range(1, 4):
        _put(d, "front", f"web.{i}", f"10.0.0.{10 + i}", TaskSpec("web", i, vip="10.0.0.2"))
    for i in range(1, rr_tasks + 1):
        _put(d, "front", f"rr.{i}", f"10.0.1.{i}", TaskSpec("rr", i, EndpointMode.DNSRR))
    _put(d, "back", "secret", "10.1.0.5")
    return d


def _ask(r: Responder, name: str, rdtype: str = "A", *, tcp: bool = False, asker="client"):
    q = dns.message.make_query(name, rdtype)
    d = r.handle(asker, q.to_wire(), tcp=tcp)
    assert isinstance(d, Reply), d
    m = dns.message.from_wire(d.wire)
    assert m.id == q.id and m.flags & dns.flags.QR
    return m


def _ips(m: dns.message.Message) -> list[str]:
    return [rd.address for rrset in m.answer for rd in rrset]


def test_answers_vip_tasks_names_nodata_and_nxdomain():
    r = Responder(_directory(), rng=random.Random(1))
    assert _ips(_ask(r, "web")) == ["10.0.0.2"]
    assert sorted(_ips(_ask(r, "tasks.web."))) == ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
    assert _ips(_ask(r, "PG")) == ["10.0.0.20"]
    aaaa = _ask(r, "web", "AAAA")  # the name exists, it has no IPv6 address
    assert aaaa.rcode() == dns.rcode.NOERROR and aaaa.answer == []
    for name in ("secret", "nosuch", "tasks.nosuch"):
        assert _ask(r, name).rcode() == dns.rcode.NXDOMAIN, name
    assert r.counts["answered"] == 3 and r.counts["nodata"] == 1 and r.counts["nxdomain"] == 3
    assert _ask(r, "web").answer[0].ttl == 0


def test_reverse_lookups_name_containers_and_vips_on_shared_networks_only():
    r = Responder(_directory(), rng=random.Random(1))

    def ptr(ip: str):
        q = dns.message.make_query(dns.reversename.from_address(ip), "PTR")
        return r.handle("client", q.to_wire())

    def names(d) -> list[str]:
        m = dns.message.from_wire(d.wire)
        return sorted(rd.target.to_text() for rrset in m.answer for rd in rrset)

    assert names(ptr("10.0.0.20")) == ["db."]
    assert names(ptr("10.0.0.2")) == ["web."]  # the VIP names its service
    assert names(ptr("10.0.0.12")) == ["web.2."]
    secret = dns.message.from_wire(ptr("10.1.0.5").wire)  # on a network client is not on
    assert secret.rcode() == dns.rcode.NXDOMAIN
    assert isinstance(ptr("192.0.2.7"), Forward)  # not the cluster's: the host's resolvers
    partial = dns.message.make_query("10.in-addr.arpa.", "PTR")
    assert isinstance(r.handle("client", partial.to_wire()), Forward)


def test_dnsrr_is_shuffled_and_a_big_answer_truncates_over_udp_but_not_tcp():
    r = Responder(_directory(rr_tasks=60), rng=random.Random(2))
    small = Responder(_directory(), rng=random.Random(2))
    orders = {tuple(_ips(_ask(small, "rr"))) for _ in range(30)}
    assert len(orders) > 1 and {frozenset(o) for o in orders} == {
        frozenset({"10.0.1.1", "10.0.1.2", "10.0.1.3"})
    }
    udp = _ask(r, "rr")
    assert udp.flags & dns.flags.TC and udp.answer == []
    assert len(_ips(_ask(r, "rr", tcp=True))) == 60


def test_other_names_are_forwarded_and_odd_queries_get_rcodes():
    r = Responder(_directory(), rng=random.Random(1))
    q = dns.message.make_query("example.org", "A")
    assert isinstance(r.handle("client", q.to_wire()), Forward)
    sf = dns.message.from_wire(r.servfail(q))
    assert sf.rcode() == dns.rcode.SERVFAIL and sf.id == q.id
    notify = dns.message.make_query("web", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert _rcode(r, notify) == dns.rcode.NOTIMP
    chaos = dns.message.make_query("version.bind", "TXT", "CH")
    assert _rcode(r, chaos) == dns.rcode.NOTIMP
    two = dns.message.make_query("web", "A")
    two.question.append(dns.message.make_query("db", "A").question[0])
    assert _rcode(r, two) == dns.rcode.FORMERR


def _rcode(r: Responder, q: dns.message.Message) -> int:
    d = r.handle("client", q.to_wire())
    assert isinstance(d, Reply)
    return dns.message.from_wire(d.wire).rcode()


def test_garbage_responses_and_oversized_queries_are_dropped_and_counted():
    r = Responder(_directory(), rng=random.Random(1))
    resp = dns.message.make_response(dns.message.make_query("web", "A"))
    cases = {
        b"": "malformed",
        b"\x00\x01\x02": "malformed",
        dns.message.make_query("web", "A").to_wire()[:-3]: "malformed",
        resp.to_wire(): "not_a_query",
        b"\x00" * 5000: "oversized",
    }
    for wire, reason in cases.items():
        assert r.handle("client", wire) == Drop(reason)
    assert sum(v for k, v in r.counts.items() if k.startswith("drop_")) == len(cases)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_random_bytes_never_raise(data, tcp):
    r = Responder(_directory(), rng=random.Random(0))
    d = r.handle("client", data, tcp=tcp)
    assert isinstance(d, Reply | Forward | Drop)
    if isinstance(d, Reply):
        dns.message.from_wire(d.wire)  # whatever we send parses


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_real_queries_never_raise(data):
    r = Responder(_directory(), rng=random.Random(0))
    name = data.draw(st.sampled_from(["web", "tasks.web", "rr", "db", "example.org", "x"]))
    wire = bytearray(dns.message.make_query(name, "A", use_edns=data.draw(st.booleans())).to_wire())
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    d = r.handle("client", bytes(wire[:cut]))
    assert isinstance(d, Reply | Forward | Drop)


# -- the asyncio servers on loopback --------------------------------------------------------


class _Upstream(asyncio.DatagramProtocol):
    """A host resolver stand-in: example.org A 192.0.2.1, everything else NXDOMAIN."""

    def connection_made(self, transport):
        self.transport = transport
        self.seen = 0

    def datagram_received(self, data, addr):
        self.seen += 1
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        if q.question[0].name.to_text() == "example.org.":
            r.answer.append(dns.rrset.from_text("example.org.", 60, "IN", "A", "192.0.2.1"))
        else:
            r.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(r.to_wire(), addr)


def _silent_port() -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


async def _udp_query(name: str, port: int, rdtype="A", timeout=5.0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return await asyncio.to_thread(dns.query.udp, q, "127.0.0.1", timeout=timeout, port=port)


def test_server_udp_tcp_forwarding_servfail_and_survives_garbage():
    async def main():
        loop = asyncio.get_running_loop()
        up, proto = await loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", 0))
        up_port = up.get_extra_info("sockname")[1]
        silent, silent_port = _silent_port()
        srv = EmbeddedDns(
            _directory(),
            upstreams=[("127.0.0.1", silent_port), ("127.0.0.1", up_port)],
            timeout=0.3,
            rng=random.Random(5),
        )
        lonely = EmbeddedDns(_directory(), upstreams=[("127.0.0.1", silent_port)], timeout=0.3)
        try:
            _, port = await srv.add("client", None, addr="127.0.0.1", port=0)
            _, lport = await lonely.add("client", None, addr="127.0.0.1", port=0)
            assert _ips(await _udp_query("web", port)) == ["10.0.0.2"]
            q = dns.message.make_query("tasks.web", "A")
            tcp = await asyncio.to_thread(dns.query.tcp, q, "127.0.0.1", timeout=5, port=port)
            assert sorted(_ips(tcp)) == ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
            # The first resolver says nothing; the second answers.
            fwd = await _udp_query("example.org", port)
            assert _ips(fwd) == ["192.0.2.1"] and srv.counts["upstream_failed"] == 1
            nx = await _udp_query("nothing.example.org", port)
            assert nx.rcode() == dns.rcode.NXDOMAIN and proto.seen == 2
            # No resolver answers: SERVFAIL after the timeout.
            assert (await _udp_query("example.org", lport)).rcode() == dns.rcode.SERVFAIL
            # Garbage over UDP and TCP, then the server still answers.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for junk in (b"", b"\xff" * 40, b"\x00" * 5000):
                    s.sendto(junk, ("127.0.0.1", port))
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(struct.pack("!H", 7) + b"garbage")
            await w.drain()
            assert await asyncio.wait_for(r.read(), 5) == b""  # the server hung up
            w.close()
            assert _ips(await _udp_query("db", port)) == ["10.0.0.20"]
            assert srv.counts["drop_malformed"] >= 3 and srv.counts["drop_oversized"] == 1
            assert await srv.remove("client") and srv.containers() == []
        finally:
            await srv.close()
            await lonely.close()
            up.close()
            silent.close()

    asyncio.run(main())


def test_a_flood_of_forwards_is_bounded_and_local_names_still_answer():
    """Forwards wait for a silent resolver: past max_pending they are dropped, counted."""

    async def main():
        silent, silent_port = _silent_port()
        srv = EmbeddedDns(
            _directory(), upstreams=[("127.0.0.1", silent_port)], timeout=2.0, max_pending=20
        )
        try:
            _, port = await srv.add("client", None, addr="127.0.0.1", port=0)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(100):
                    q = dns.message.make_query(f"n{i}.example.org", "A")
                    s.sendto(q.to_wire(), ("127.0.0.1", port))
                await asyncio.sleep(0.3)  # let the loop read them all
            assert srv.counts["forwarded"] == 100 and srv.counts["drop_busy"] == 80
            assert _ips(await _udp_query("web", port, timeout=1.0)) == ["10.0.0.2"]
        finally:
            await srv.close()
            silent.close()

    asyncio.run(main())


def test_host_resolvers_and_resolv_conf_rendering(tmp_path):
    host = tmp_path / "resolv.conf"
    host.write_text(
        "# comment\nnameserver 10.255.255.53\nnameserver 127.0.0.11\nnameserver junk\n"
        "nameserver fe80::1%eth0\nsearch corp.example lab.example\noptions ndots:3 timeout:2\n"
    )
    assert host_resolvers(host) == [("10.255.255.53", 53), ("fe80::1", 53)]
    assert host_resolvers(tmp_path / "absent") == []
    text = render_resolv_conf(host.read_text())
    assert text.splitlines()[1:] == [
        "nameserver 127.0.0.11",
        "search corp.example lab.example",
        "options ndots:0 timeout:2",
    ]
    root = tmp_path / "netns"
    path = write_resolv_conf("osvc-a", host=host, root=root)
    assert path == root / "osvc-a" / "resolv.conf" and path.read_text() == text
    assert remove_resolv_conf("osvc-a", root=root) and not (root / "osvc-a").exists()
    assert not remove_resolv_conf("osvc-a", root=root)
    with pytest.raises(ValueError, match="netns '../x'"):
        write_resolv_conf("../x", host=host, root=root)
