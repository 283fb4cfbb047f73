"""Embedded DNS: 127.0.0.11:53 (UDP and TCP) inside each container's network namespace.

One agent serves every container on its host. For each container it binds a UDP socket
and a TCP listener inside that container's namespace (a short-lived thread enters the
namespace to create them; the sockets stay there), and answers from the host's
:class:`~overlaysim.core.services.Directory` as that container sees it: names on the
networks it shares, ``tasks.<service>``, a service's VIP or its task IPs in ``dnsrr``
mode, and reverse (PTR) lookups of those addresses. Names that are not the cluster's are forwarded to the host's resolvers, from the
agent's own namespace (where they are reachable), one after another with a timeout
each; when none answers the client gets SERVFAIL.

The wire format is dnspython's. :class:`Responder` is the synchronous part (query bytes
in, a reply, a forward or a drop out) so it can be fuzzed without sockets; it never
raises. A query that does not parse, is a response, is oversized, or arrives while too
many forwards are pending is dropped and counted in :attr:`Responder.counts`.

Answers carry TTL 0 by default: the tables are the truth, and a cached answer would
hold a removed task's address after the table forgot it (a known source of stale DNS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from overlaysim.agent.tap import in_netns
from overlaysim.core.services import AnswerKind, Directory

__all__ = [
    "DNS_ADDR",
    "DNS_PORT",
    "Drop",
    "EmbeddedDns",
    "Forward",
    "Reply",
    "Responder",
    "host_resolvers",
]

DNS_ADDR = "127.0.0.11"
DNS_PORT = 53
#: Largest UDP query accepted (EDNS payloads go up to 4096 in practice).
MAX_UDP_QUERY = 4096
#: A plain DNS UDP reply's limit without EDNS (RFC 1035).
CLASSIC_UDP = 512
MAX_TCP = 65535
#: Forwards pending at once per host before new ones are dropped (memory bound).
MAX_PENDING = 256
TCP_IDLE_S = 10.0
_V4_REVERSE = dns.name.from_text("in-addr.arpa.")


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``wire`` back to the client."""

    wire: bytes


@dataclass(frozen=True, slots=True)
class Forward:
    """Not a cluster name: ask the host's resolvers."""

    query: dns.message.Message


@dataclass(frozen=True, slots=True)
class Drop:
    """Say nothing (the reason is counted)."""

    reason: str


Decision = Reply | Forward | Drop


class Responder:
    """Decides what one query gets, from the directory; never raises."""

    def __init__(self, directory: Directory, *, rng: random.Random, ttl: int = 0) -> None:
        self.directory = directory
        self.rng = rng
        self.ttl = ttl
        #: Queries by outcome: answered, nxdomain, nodata, forwarded, servfail, and
        #: drop_<reason> for dropped ones.
        self.counts: Counter[str] = Counter()

    def handle(self, asker: str, wire: bytes, *, tcp: bool = False) -> Decision:
        """What container ``asker``'s query ``wire`` gets."""
        try:
            return self._handle(asker, wire, tcp)
        except Exception:  # a bug here must not take the server down
            return self._drop("internal")

    def _drop(self, reason: str) -> Drop:
        self.counts[f"drop_{reason}"] += 1
        return Drop(reason)

    def _handle(self, asker: str, wire: bytes, tcp: bool) -> Decision:
        if len(wire) > (MAX_TCP if tcp else MAX_UDP_QUERY):
            return self._drop("oversized")
        try:
            q = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many kinds for garbage
            return self._drop("malformed")
        if q.flags & dns.flags.QR:
            return self._drop("not_a_query")
        if q.opcode() != dns.opcode.QUERY:
            return self._rcode(q, dns.rcode.NOTIMP, tcp, "notimp")
        if len(q.question) != 1:
            return self._rcode(q, dns.rcode.FORMERR, tcp, "formerr")
        question = q.question[0]
        if question.rdclass != dns.rdataclass.IN:
            return self._rcode(q, dns.rcode.NOTIMP, tcp, "notimp")
        if question.rdtype == dns.rdatatype.PTR and question.name.is_subdomain(_V4_REVERSE):
            return self._ptr(asker, q, tcp)
        ans = self.directory.resolve(asker, question.name.to_text(omit_final_dot=True), self.rng)
        if ans.kind is AnswerKind.FORWARD:
            self.counts["forwarded"] += 1
            return Forward(q)
        if ans.kind is AnswerKind.NXDOMAIN:
            return self._rcode(q, dns.rcode.NXDOMAIN, tcp, "nxdomain")
        r = self._response(q)
        if question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY) and ans.ips:
            r.answer.append(
                dns.rrset.from_text_list(question.name, self.ttl, "IN", "A", list(ans.ips))
            )
            self.counts["answered"] += 1
        else:  # the name exists but has no record of this type (AAAA, MX...)
            self.counts["nodata"] += 1
        return Reply(self._wire(q, r, tcp))

    def _ptr(self, asker: str, q: dns.message.Message, tcp: bool) -> Decision:
        question = q.question[0]
        try:
            ip = dns.reversename.to_address(question.name)
        except Exception:  # not a full IPv4 reverse name: not ours to answer
            ip = ""
        ans = self.directory.resolve_ptr(asker, ip)
        if ans.kind is AnswerKind.FORWARD:
            self.counts["forwarded"] += 1
            return Forward(q)
        if ans.kind is AnswerKind.NXDOMAIN:
            return self._rcode(q, dns.rcode.NXDOMAIN, tcp, "nxdomain")
        r = self._response(q)
        names = [f"{n}." for n in ans.ips]
        r.answer.append(dns.rrset.from_text_list(question.name, self.ttl, "IN", "PTR", names))
        self.counts["answered"] += 1
        return Reply(self._wire(q, r, tcp))

    def servfail(self, q: dns.message.Message, *, tcp: bool = False) -> bytes:
        """The reply when no host resolver answered a forwarded query."""
        self.counts["servfail"] += 1
        r = self._response(q)
        r.set_rcode(dns.rcode.SERVFAIL)
        return self._wire(q, r, tcp)

    def relay(self, q: dns.message.Message, upstream: dns.message.Message, tcp: bool) -> bytes:
        """An upstream answer, sized for the client."""
        upstream.id = q.id
        return self._wire(q, upstream, tcp)

    def _response(self, q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.flags |= dns.flags.RA
        return r

    def _rcode(self, q: dns.message.Message, rcode: int, tcp: bool, label: str) -> Reply:
        self.counts[label] += 1
        r = self._response(q)
        r.set_rcode(rcode)
        return Reply(self._wire(q, r, tcp))

    def _wire(self, q: dns.message.Message, r: dns.message.Message, tcp: bool) -> bytes:
        limit = MAX_TCP if tcp else max(CLASSIC_UDP, min(q.payload, MAX_UDP_QUERY))
        try:
            return r.to_wire(max_size=limit)
        except dns.exception.TooBig:  # UDP: tell the client to retry over TCP
            r.answer, r.authority, r.additional = [], [], []
            r.flags |= dns.flags.TC
            return r.to_wire(max_size=limit)


def host_resolvers(path: str | Path = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The host's ``nameserver`` addresses (port 53), leaving out our own 127.0.0.11."""
    out: list[tuple[str, int]] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                ip = str(ipaddress.ip_address(parts[1].split("%")[0]))
            except ValueError:
                continue
            if ip != DNS_ADDR:
                out.append((ip, 53))
    return out


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: EmbeddedDns, asker: str) -> None:
        self.server, self.asker = server, asker
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.server._on_udp(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        self.server.responder.counts["udp_error"] += 1


@dataclass(slots=True)
class _Listener:
    udp: asyncio.DatagramTransport
    tcp: asyncio.Server


class EmbeddedDns:
    """The embedded DNS servers of one host's containers, on one asyncio loop."""

    def __init__(
        self,
        directory: Directory,
        *,
        upstreams: Sequence[tuple[str, int]] | None = None,
        timeout: float = 2.0,
        rng: random.Random | None = None,
        ttl: int = 0,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.responder = Responder(directory, rng=rng or random.Random(), ttl=ttl)
        self.upstreams = list(host_resolvers() if upstreams is None else upstreams)
        self.timeout = timeout
        self.max_pending = max_pending
        self._listeners: dict[str, _Listener] = {}
        self._tasks: set[asyncio.Task] = set()

    @property
    def counts(self) -> Counter[str]:
        return self.responder.counts

    def containers(self) -> list[str]:
        return sorted(self._listeners)

    async def add(
        self, asker: str, netns: str | None, *, addr: str = DNS_ADDR, port: int = DNS_PORT
    ) -> tuple[str, int]:
        """Serve container ``asker`` at ``addr:port`` in namespace ``netns`` (a path).

        Returns the bound address (``port=0`` picks a free one, for tests).
        """
        if asker in self._listeners:
            raise ValueError(f"container {asker!r}: already has an embedded DNS server")
        loop = asyncio.get_running_loop()

        def make() -> tuple[socket.socket, socket.socket]:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                u.bind((addr, port))
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind((addr, u.getsockname()[1]))
                t.listen(64)
            except OSError:
                u.close()
                t.close()
                raise
            u.setblocking(False)
            t.setblocking(False)
            return u, t

        usock, tsock = await asyncio.to_thread(in_netns, netns, make)
        bound = usock.getsockname()
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self, asker), sock=usock)
        tcp = await asyncio.start_server(
            lambda r, w: self._tcp_client(asker, r, w), sock=tsock, limit=MAX_TCP + 2
        )
        self._listeners[asker] = _Listener(udp, tcp)
        return bound

    async def remove(self, asker: str) -> bool:
        """Stop serving ``asker`` (its namespace is going away)."""
        lst = self._listeners.pop(asker, None)
        if lst is None:
            return False
        lst.udp.close()
        lst.tcp.close()
        await lst.tcp.wait_closed()
        return True

    async def close(self) -> None:
        for asker in list(self._listeners):
            await self.remove(asker)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- serving -------------------------------------------------------------------------

    def _on_udp(self, proto: _Udp, data: bytes, addr: tuple) -> None:
        d = self.responder.handle(proto.asker, data, tcp=False)
        if isinstance(d, Reply):
            if proto.transport is not None:
                proto.transport.sendto(d.wire, addr)
        elif isinstance(d, Forward):
            self._spawn(self._forward_udp(proto, d.query, addr))

    def _spawn(self, coro) -> None:
        if len(self._tasks) >= self.max_pending:
            coro.close()
            self.responder.counts["drop_busy"] += 1
            return
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _forward_udp(self, proto: _Udp, q: dns.message.Message, addr: tuple) -> None:
        wire = await self._forward(q, tcp=False)
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.sendto(wire, addr)

    async def _forward(self, q: dns.message.Message, *, tcp: bool) -> bytes:
        """Ask each host resolver in turn; SERVFAIL when none answers in time."""
        for host, port in self.upstreams:
            try:
                if tcp:
                    r = await dns.asyncquery.tcp(q, host, timeout=self.timeout, port=port)
                else:
                    r = await dns.asyncquery.udp(
                        q, host, timeout=self.timeout, port=port, ignore_unexpected=True
                    )
                return self.responder.relay(q, r, tcp)
            except (dns.exception.DNSException, OSError, EOFError, ValueError):
                self.responder.counts["upstream_failed"] += 1
        return self.responder.servfail(q, tcp=tcp)

    async def _tcp_client(
        self, asker: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_S)
                (n,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE_S)
                d = self.responder.handle(asker, data, tcp=True)
                if isinstance(d, Forward):
                    wire = await self._forward(d.query, tcp=True)
                elif isinstance(d, Reply):
                    wire = d.wire
                else:
                    break  # a garbage stream: close it
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception:  # never let one client take the server down
            self.responder.counts["drop_internal"] += 1
        finally:
            writer.close()
