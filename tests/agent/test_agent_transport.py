"""Transport: framing, addresses, counters, and real UDP/TCP over loopback (no root)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import pytest
from agent_fakes import A, B, aio, free_port

from overlaysim.agent.transport import (
    GOSSIP_AAD,
    ClosedBeforeFrame,
    Counters,
    FrameError,
    TrafficDelta,
    Transport,
    frame,
    read_frame,
    sealed_budget,
    sealed_configs,
    split_addr,
)
from overlaysim.core.config import MembershipConfig, TableConfig
from overlaysim.core.events import Send
from overlaysim.core.gossip_crypto import (
    MAX_SEALED_PLAINTEXT,
    NONCE_SIZE,
    OVERHEAD,
    GossipKeyring,
    decode_sealed,
    open_,
    seal,
)
from overlaysim.core.wire import (
    MAX_DATAGRAM,
    MAX_STREAM,
    Gossip,
    MemberUpdate,
    MsgType,
    Ping,
    PushPull,
    decode,
    encode,
)


def feed(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


# --- framing ---------------------------------------------------------------------------


@aio
async def test_frame_round_trip() -> None:
    payload = encode(Ping(seq=7, target="b", source="a", source_addr="127.0.0.1:1"))
    framed = frame(payload)
    assert framed[:4] == struct.pack("!I", len(payload))
    assert await read_frame(feed(framed)) == payload


@aio
async def test_oversized_length_is_refused_before_reading() -> None:
    # only the header arrives and no EOF: a reader waiting for 4 GB would hang here
    reader = feed(struct.pack("!I", 0xFFFFFFFF), eof=False)
    with pytest.raises(FrameError, match="exceeds limit"):
        await asyncio.wait_for(read_frame(reader, max_size=1024), 1.0)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00", "2 of 4 length bytes"),
        (b"\x00\x00\x00\x00", "empty frame"),
        (b"\x00\x00\x00\x09abc", "truncated at 3 of 9"),
    ],
)
@aio
async def test_malformed_frames(data: bytes, match: str) -> None:
    with pytest.raises(FrameError, match=match):
        await read_frame(feed(data))


@aio
async def test_a_peer_that_says_nothing_is_told_apart_from_a_cut_frame() -> None:
    with pytest.raises(ClosedBeforeFrame):
        await read_frame(feed(b""))
    with pytest.raises(FrameError) as info:
        await read_frame(feed(b"\x00"))
    assert type(info.value) is FrameError


def test_frame_refuses_too_large_payload() -> None:
    with pytest.raises(FrameError):
        frame(b"x" * 11, max_size=10)


def test_split_addr() -> None:
    assert split_addr("10.0.0.1:7946") == ("10.0.0.1", 7946)
    for bad in ("10.0.0.1", "host:7946", "10.0.0.1:0", "10.0.0.1:70000", ":7946", "1.2.3:4"):
        with pytest.raises(ValueError):
            split_addr(bad)


def test_counters_and_deltas() -> None:
    c = Counters()
    d = TrafficDelta()
    c.sent(MsgType.PING, 30)
    c.sent(MsgType.PING, 30)
    c.received(MsgType.ACK, 10)
    first = d.take(c)
    assert first == {
        "bytes_sent": 60,
        "msgs_sent": 2,
        "bytes_recv": 10,
        "msgs_recv": 1,
        "by_type": {"ack": [0, 0, 10, 1], "ping": [60, 2, 0, 0]},
    }
    c.received(MsgType.ACK, 5)
    assert d.take(c) == {
        "bytes_sent": 0,
        "msgs_sent": 0,
        "bytes_recv": 5,
        "msgs_recv": 1,
        "by_type": {"ack": [0, 0, 5, 1]},
    }
    assert c.totals() == [60, 2, 15, 2]


# --- real sockets ----------------------------------------------------------------------


class Peer:
    def __init__(self, ip: str, port: int, **kw) -> None:
        self.got: list[tuple[str, object]] = []
        self.errors: list[tuple[str, str]] = []
        self.arrived = asyncio.Event()
        self.t = Transport(bind=ip, port=port, deliver=self._deliver, on_error=self._error, **kw)

    def _deliver(self, src: str, msg: object) -> None:
        self.got.append((src, msg))
        self.arrived.set()

    def _error(self, kind: str, detail: str) -> None:
        self.errors.append((kind, detail))
        self.arrived.set()

    async def wait(self, n_msgs: int = 0, n_errors: int = 0) -> None:
        async def until() -> None:
            while len(self.got) < n_msgs or len(self.errors) < n_errors:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(until(), 5.0)


@contextlib.asynccontextmanager
async def pair(a_kw: dict | None = None, b_kw: dict | None = None):
    port = free_port()
    a, b = Peer(A, port, **(a_kw or {})), Peer(B, port, connect_timeout=0.5, **(b_kw or {}))
    await a.t.start()
    await b.t.start()
    try:
        yield a, b, port
    finally:
        await a.t.close()
        await b.t.close()


@aio
async def test_udp_and_tcp_delivery_with_sender_addresses() -> None:
    async with pair() as (a, b, port):
        ping = Ping(seq=1, target="a", source="b", source_addr=f"{B}:{port}")
        b.t.send(Send(f"{A}:{port}", ping))
        pp = PushPull(source="b", source_addr=f"{B}:{port}", join=True, reply=False)
        b.t.send(Send(f"{A}:{port}", pp, reliable=True))
        await a.wait(n_msgs=2)
        got = dict((type(m).__name__, (src, m)) for src, m in a.got)
        assert got["Ping"] == (f"{B}:{port}", ping)  # datagram: its source address
        assert got["PushPull"] == (f"{B}:{port}", pp)  # stream: peer ip + the common port
        assert a.t.counters.by_type["ping"][2:] == [len(encode(ping)), 1]
        assert a.t.counters.by_type["push_pull"][2:] == [len(encode(pp)), 1]
        assert b.t.counters.by_type["ping"][:2] == [len(encode(ping)), 1]


@aio
async def test_too_big_for_a_datagram_goes_over_tcp() -> None:
    async with pair() as (a, b, port):
        updates = tuple(
            MemberUpdate(kind=1, node=f"node-{i:04d}", incarnation=i, addr=f"{B}:{port}")
            for i in range(80)
        )
        big = Gossip(source="b", updates=updates)
        assert len(encode(big)) > MAX_DATAGRAM
        b.t.send(Send(f"{A}:{port}", big))
        await a.wait(n_msgs=1)
        assert a.got == [(f"{B}:{port}", big)]


@aio
async def test_garbage_is_counted_and_dropped() -> None:
    async with pair() as (a, b, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x93\x01\x63garbage", (A, port))
        await a.wait(n_errors=1)
        # garbage frame with a valid length; then an oversized length; then a cut connection
        for data in (frame(b"\xc1not msgpack"), struct.pack("!I", 1 << 30), b"\x00\x00\x00\x10ab"):
            with socket.create_connection((A, port)) as s:
                s.sendall(data)
        await a.wait(n_errors=4)
        assert a.t.counters.wire_errors == 2
        assert a.t.counters.frame_errors == 2
        assert [k for k, _ in a.errors].count("wire") == 2
        # still working afterwards
        ping = Ping(seq=2, target="a", source="b", source_addr=f"{B}:{port}")
        b.t.send(Send(f"{A}:{port}", ping))
        await a.wait(n_msgs=1)
        assert a.got[-1][1] == ping


@aio
async def test_a_burst_of_datagrams_is_read_in_order_garbage_and_all() -> None:
    """Datagrams that queue up while the loop is busy are all delivered, in order;
    garbage among them is counted and skipped."""
    async with pair() as (a, b, port):
        pings = [ping_from("b", B, port, seq) for seq in range(150)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((B, 0))
            for i, ping in enumerate(pings):  # sent without yielding: all queue up
                s.sendto(encode(ping), (A, port))
                if i == 70:
                    s.sendto(b"\xc1garbage", (A, port))
        await a.wait(n_msgs=150, n_errors=1)
        assert [m for _, m in a.got] == pings
        assert a.t.counters.wire_errors == 1
        assert a.t.counters.by_type["ping"][3] == 150


@aio
async def test_failed_sends_are_counted_not_raised() -> None:
    async with pair() as (a, b, port):
        dead = free_port()
        pp = PushPull(source="b", source_addr=f"{B}:{port}", join=True, reply=False)
        b.t.send(Send(f"{A}:{dead}", pp, reliable=True))  # connection refused
        b.t.send(Send("not-an-address", pp))
        await b.wait(n_errors=2)
        assert b.t.counters.send_errors == 2
        assert all(kind == "send" for kind, _ in b.errors)


# --- sealed gossip ---------------------------------------------------------------------

K1, K2 = bytes(range(16)), bytes(range(16, 32))


def keyed(*keys: bytes) -> dict:
    return {"keyring": GossipKeyring(list(keys))}


def ping_from(node: str, ip: str, port: int, seq: int) -> Ping:
    return Ping(seq=seq, target="x", source=node, source_addr=f"{ip}:{port}")


def gossip_of_size(size: int, port: int) -> Gossip:
    """A Gossip message whose plain encoding is exactly ``size`` bytes."""
    updates = tuple(
        MemberUpdate(kind=1, node=f"node-{i:04d}", incarnation=i, addr=f"{B}:{port}")
        for i in range(size // 34)
    )
    for pad in range(1, 1000):
        msg = Gossip(source="b" * pad, updates=updates)
        if len(encode(msg)) == size:
            return msg
    raise AssertionError(f"no Gossip of {size} bytes")


def test_sealed_budget_keeps_full_datagrams_within_the_limit() -> None:
    assert sealed_budget(MAX_DATAGRAM) == MAX_SEALED_PLAINTEXT == MAX_DATAGRAM - OVERHEAD
    lan, wan = MembershipConfig.lan(), TableConfig.wan()
    m, t = sealed_configs(lan, wan)
    assert m.udp_buffer_size == lan.udp_buffer_size - OVERHEAD
    assert t.udp_buffer_size == wan.udp_buffer_size - OVERHEAD
    assert (m.probe_interval, t.gossip_interval) == (lan.probe_interval, wan.gossip_interval)
    with pytest.raises(ValueError, match="too small"):
        sealed_budget(OVERHEAD)


@aio
async def test_same_key_delivers_and_counts_sealed_bytes() -> None:
    async with pair(keyed(K1), keyed(K1)) as (a, b, port):
        ping = ping_from("b", B, port, 1)
        pp = PushPull(source="b", source_addr=f"{B}:{port}", join=True, reply=False)
        big = gossip_of_size(5000, port)
        b.t.send(Send(f"{A}:{port}", ping))
        b.t.send(Send(f"{A}:{port}", pp, reliable=True))
        b.t.send(Send(f"{A}:{port}", big))  # too big for a datagram: a sealed stream
        await a.wait(n_msgs=3)
        assert sorted(a.got, key=lambda g: type(g[1]).__name__) == [
            (f"{B}:{port}", big),
            (f"{B}:{port}", ping),
            (f"{B}:{port}", pp),
        ]
        # bytes on the wire: sealed, OVERHEAD more than the plain encoding
        assert a.t.counters.by_type["ping"][2:] == [len(encode(ping)) + OVERHEAD, 1]
        assert a.t.counters.by_type["push_pull"][2:] == [len(encode(pp)) + OVERHEAD, 1]
        assert a.t.counters.by_type["gossip"][2:] == [len(encode(big)) + OVERHEAD, 1]
        assert b.t.counters.by_type["ping"][:2] == [len(encode(ping)) + OVERHEAD, 1]
        assert a.errors == [] and a.t.counters.auth_errors == 0


@pytest.mark.parametrize(
    ("a_kw", "b_kw", "counter", "kind"),
    [
        (keyed(K1), keyed(K2), "auth_errors", "auth"),  # another key
        (keyed(K1), {}, "auth_errors", "auth"),  # a keyless sender
        ({}, keyed(K1), "wire_errors", "wire"),  # a keyed sender to a keyless node
    ],
    ids=["other-key", "keyless-sender", "keyless-receiver"],
)
@aio
async def test_what_does_not_open_is_counted_and_never_delivered(
    a_kw: dict, b_kw: dict, counter: str, kind: str
) -> None:
    async with pair(a_kw, b_kw) as (a, b, port):
        pp = PushPull(source="b", source_addr=f"{B}:{port}", join=True, reply=False)
        b.t.send(Send(f"{A}:{port}", ping_from("b", B, port, 1)))
        b.t.send(Send(f"{A}:{port}", pp, reliable=True))
        await a.wait(n_errors=2)
        assert a.got == []
        assert a.t.counters.as_dict()[counter] == 2
        assert a.t.counters.wire_errors + a.t.counters.auth_errors == 2
        assert sorted(d.split(" ")[0] for _, d in a.errors) == ["tcp", "udp"]
        assert {k for k, _ in a.errors} == {kind}
        assert a.t.counters.totals() == [0, 0, 0, 0]


@aio
async def test_forged_replayed_and_garbage_packets_are_dropped_by_a_keyed_node() -> None:
    async with pair(keyed(K1), keyed(K1)) as (a, b, port):
        ring = GossipKeyring([K1])
        plain = encode(ping_from("b", B, port, 9))
        good = seal(ring, plain, nonce=bytes(NONCE_SIZE), aad=GOSSIP_AAD)
        tampered = good[:20] + bytes([good[20] ^ 1]) + good[21:]
        other_aad = seal(ring, plain, nonce=bytes(NONCE_SIZE), aad=b"osim-mgr-req")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in (tampered, other_aad, b"\x01garbage", plain):
                s.sendto(data, (A, port))
            s.sendto(b"\x01" * (MAX_DATAGRAM + 1), (A, port))  # refused before any key is tried
        with socket.create_connection((A, port)) as s:
            s.sendall(frame(tampered))
        await a.wait(n_errors=6)
        assert a.got == []
        assert a.t.counters.auth_errors == 5
        assert a.t.counters.wire_errors == 1
        # the genuine packet still gets through afterwards
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(good, (A, port))
        await a.wait(n_msgs=1)
        assert a.got[0][1] == decode(plain)


@aio
async def test_key_rotation_step_by_step_loses_nothing() -> None:
    ring_a, ring_b = GossipKeyring([K1]), GossipKeyring([K1])
    async with pair({"keyring": ring_a}, {"keyring": ring_b}) as (a, b, port):
        assert a.t.keyring is ring_a and b.t.keyring is ring_b
        seq = 0

        async def traffic() -> None:
            nonlocal seq
            seq += 1
            pp = PushPull(source="b", source_addr=f"{B}:{port}", join=False, reply=False)
            b.t.send(Send(f"{A}:{port}", ping_from("b", B, port, seq)))
            b.t.send(Send(f"{A}:{port}", pp, reliable=True))
            a.t.send(Send(f"{B}:{port}", ping_from("a", A, port, seq)))
            await a.wait(n_msgs=2 * seq)
            await b.wait(n_msgs=seq)

        await traffic()
        steps = (
            lambda r: r.add(K2),
            lambda r: r.use(K2),
            lambda r: r.remove(K1),
        )
        for step in steps:
            # one node at a time: the two are one step apart in between
            step(ring_a)
            await traffic()
            step(ring_b)
            await traffic()
        assert ring_a.keys == ring_b.keys == (K2,)
        assert len(a.got) == 2 * seq and len(b.got) == seq
        assert a.errors == b.errors == []
        assert a.t.counters.auth_errors == b.t.counters.auth_errors == 0


@aio
async def test_sealed_size_decides_between_datagram_and_stream() -> None:
    port = free_port()
    ring = GossipKeyring([K1])
    udp_got: list[bytes] = []
    tcp_got: list[bytes] = []
    arrived = asyncio.Event()

    class Raw(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            udp_got.append(data)
            arrived.set()

    async def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tcp_got.append(await read_frame(reader, MAX_STREAM + OVERHEAD))
        writer.close()
        arrived.set()

    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(Raw, local_addr=(A, port))
    server = await asyncio.start_server(on_stream, A, port)
    sender = Transport(
        bind=B, port=port, deliver=lambda s, m: None, on_error=lambda k, d: None, keyring=ring
    )
    await sender.start()
    try:
        fits = gossip_of_size(MAX_DATAGRAM - OVERHEAD, port)  # sealed: exactly MAX_DATAGRAM
        spills = gossip_of_size(MAX_DATAGRAM - OVERHEAD + 1, port)  # a datagram in clear
        sender.send(Send(f"{A}:{port}", fits))
        sender.send(Send(f"{A}:{port}", spills))

        async def both() -> None:
            while not (udp_got and tcp_got):
                arrived.clear()
                await arrived.wait()

        await asyncio.wait_for(both(), 5.0)
        assert [len(d) for d in udp_got] == [MAX_DATAGRAM]
        assert decode_sealed(udp_got[0], ring, MAX_DATAGRAM, aad=GOSSIP_AAD) == fits
        assert [len(d) for d in tcp_got] == [MAX_DATAGRAM + 1]
        assert encode(spills) not in tcp_got[0]  # sealed, not clear
        assert decode(open_(ring, tcp_got[0], GOSSIP_AAD), MAX_STREAM) == spills
    finally:
        await sender.close()
        udp.close()
        server.close()
