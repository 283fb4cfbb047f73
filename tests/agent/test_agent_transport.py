"""Transport: framing, addresses, counters, and real UDP/TCP over loopback (no root)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

import pytest
from agent_fakes import A, B, aio, free_port

from overlaysim.agent.transport import (
    Counters,
    FrameError,
    TrafficDelta,
    Transport,
    frame,
    read_frame,
    split_addr,
)
from overlaysim.core.events import Send
from overlaysim.core.wire import MAX_DATAGRAM, Gossip, MemberUpdate, MsgType, Ping, PushPull, encode


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
async def pair():
    port = free_port()
    a, b = Peer(A, port), Peer(B, port, connect_timeout=0.5)
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
async def test_failed_sends_are_counted_not_raised() -> None:
    async with pair() as (a, b, port):
        dead = free_port()
        pp = PushPull(source="b", source_addr=f"{B}:{port}", join=True, reply=False)
        b.t.send(Send(f"{A}:{dead}", pp, reliable=True))  # connection refused
        b.t.send(Send("not-an-address", pp))
        await b.wait(n_errors=2)
        assert b.t.counters.send_errors == 2
        assert all(kind == "send" for kind, _ in b.errors)
