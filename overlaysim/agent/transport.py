"""The agent's cluster transport: UDP datagrams and one-shot TCP streams on port 7946.

* UDP: each datagram is one :func:`~overlaysim.core.wire.encode`-d message, decoded with
  the :data:`~overlaysim.core.wire.MAX_DATAGRAM` limit. The sender's address is
  ``"ip:port"`` of the datagram's source.
* TCP (reliable sends: push-pull, bulk sync, anything too big for a datagram): one
  message per connection, framed as a 4-byte big-endian length then the encoded message,
  at most :data:`~overlaysim.core.wire.MAX_STREAM` bytes. Every agent listens on the same
  port, so the sender's address is ``"peer_ip:<our port>"``.

With a :class:`~overlaysim.core.gossip_crypto.GossipKeyring` (``--gossip-key``) every
datagram and every stream payload is sealed with the keyring's current primary key
(AES-GCM, :data:`~overlaysim.core.gossip_crypto.OVERHEAD` = 29 bytes more) and every
received one must open before it is decoded. A sealed message that would exceed
:data:`~overlaysim.core.wire.MAX_DATAGRAM` goes over TCP; the core keeps its datagrams
small enough through :func:`sealed_configs`.

Nothing a peer sends can stop the agent: undecodable datagrams and frames, packets that
do not authenticate, oversized lengths, slow or broken connections and failed sends are
counted, reported through ``on_error`` and dropped. Byte and message counters per message
type (bytes as on the wire, sealed) feed the agent's ``traffic`` log lines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from overlaysim.core.config import MembershipConfig, TableConfig
from overlaysim.core.events import Send
from overlaysim.core.gossip_crypto import (
    NONCE_SIZE,
    OVERHEAD,
    GossipAuthError,
    GossipKeyring,
    decode_sealed,
    seal,
)
from overlaysim.core.wire import (
    MAX_DATAGRAM,
    MAX_STREAM,
    Message,
    MsgType,
    WireError,
    decode,
    encode,
)

DEFAULT_PORT = 7946
#: Associated data of sealed cluster traffic: a sealed manager frame (other AAD) can
#: never be replayed here, nor the other way round.
GOSSIP_AAD = b"osim-gossip"
_LEN = struct.Struct("!I")


class FrameError(ValueError):
    """A stream frame is malformed (bad or oversized length, truncated payload)."""


class ClosedBeforeFrame(FrameError):
    """The connection closed before the first byte of a frame (the peer said nothing)."""


# --- framing ------------------------------------------------------------------------


def frame(payload: bytes, max_size: int = MAX_STREAM) -> bytes:
    """``payload`` prefixed with its 4-byte big-endian length."""
    if len(payload) > max_size:
        raise FrameError(f"payload of {len(payload)} bytes exceeds limit of {max_size}")
    return _LEN.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_STREAM) -> bytes:
    """Read one length-prefixed frame; :class:`FrameError` if it is malformed.

    The length is checked before reading the payload, so a peer announcing 4 GB costs
    nothing.
    """
    try:
        head = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError as exc:
        error = FrameError if exc.partial else ClosedBeforeFrame
        raise error(f"connection closed after {len(exc.partial)} of 4 length bytes") from None
    (size,) = _LEN.unpack(head)
    if size == 0:
        raise FrameError("empty frame")
    if size > max_size:
        raise FrameError(f"frame of {size} bytes exceeds limit of {max_size}")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(f"frame truncated at {len(exc.partial)} of {size} bytes") from None


#: Bound on the memo of checked peer addresses; past it the memo starts over.
_ADDR_MEMO_MAX = 4096


def split_addr(addr: str) -> tuple[str, int]:
    """``"ip:port"`` to ``(ip, port)``; ValueError if malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError(f"address {addr!r}: expected ip:port")
    ip = str(ipaddress.IPv4Address(host))  # peers hand us addresses: check them
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"address {addr!r}: port out of range")
    return ip, number


def sealed_budget(udp_buffer_size: int) -> int:
    """The ``udp_buffer_size`` to give the core when gossip is sealed.

    The core fills datagrams up to ``udp_buffer_size`` plaintext bytes; sealing adds
    :data:`~overlaysim.core.gossip_crypto.OVERHEAD`, so the budget shrinks by that much
    and full datagrams still fit :data:`~overlaysim.core.wire.MAX_DATAGRAM` sealed.
    """
    budget = udp_buffer_size - OVERHEAD
    if budget <= 0:
        raise ValueError(f"udp_buffer_size={udp_buffer_size}: too small to seal ({OVERHEAD} B)")
    return budget


def sealed_configs(
    membership: MembershipConfig, tables: TableConfig
) -> tuple[MembershipConfig, TableConfig]:
    """Both configs with :func:`sealed_budget` applied (for agents with a gossip key)."""
    return (
        dataclasses.replace(membership, udp_buffer_size=sealed_budget(membership.udp_buffer_size)),
        dataclasses.replace(tables, udp_buffer_size=sealed_budget(tables.udp_buffer_size)),
    )


# --- counters -----------------------------------------------------------------------


@dataclass(slots=True)
class Counters:
    """Traffic and error counters of one agent since it started.

    ``by_type`` maps a message type name (``ping``, ``table_gossip``...) to
    ``[bytes_sent, msgs_sent, bytes_recv, msgs_recv]``.
    """

    by_type: dict[str, list[int]] = field(default_factory=dict)
    wire_errors: int = 0  # undecodable datagrams and stream payloads (after opening)
    frame_errors: int = 0  # malformed or oversized stream frames
    send_errors: int = 0  # UDP sends and TCP connects/writes that failed
    handler_errors: int = 0  # exceptions raised while the core handled a peer message
    auth_errors: int = 0  # datagrams and stream payloads no installed gossip key opens

    def sent(self, mtype: MsgType, nbytes: int) -> None:
        c = self._row(mtype)
        c[0] += nbytes
        c[1] += 1

    def received(self, mtype: MsgType, nbytes: int) -> None:
        c = self._row(mtype)
        c[2] += nbytes
        c[3] += 1

    def _row(self, mtype: MsgType) -> list[int]:
        name = mtype.name.lower()
        row = self.by_type.get(name)
        if row is None:
            row = self.by_type[name] = [0, 0, 0, 0]
        return row

    def totals(self) -> list[int]:
        """``[bytes_sent, msgs_sent, bytes_recv, msgs_recv]`` over all types."""
        out = [0, 0, 0, 0]
        for row in self.by_type.values():
            for i in range(4):
                out[i] += row[i]
        return out

    def as_dict(self) -> dict[str, object]:
        bs, ms, br, mr = self.totals()
        return {
            "bytes_sent": bs,
            "msgs_sent": ms,
            "bytes_recv": br,
            "msgs_recv": mr,
            "wire_errors": self.wire_errors,
            "frame_errors": self.frame_errors,
            "send_errors": self.send_errors,
            "handler_errors": self.handler_errors,
            "auth_errors": self.auth_errors,
            "by_type": {k: list(v) for k, v in sorted(self.by_type.items())},
        }


class TrafficDelta:
    """Turns cumulative :class:`Counters` into per-interval deltas for ``traffic`` lines."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, list[int]] = {}

    def take(self, counters: Counters) -> dict[str, object]:
        """Bytes and messages since the previous call: totals and per type (non-zero)."""
        by_type: dict[str, list[int]] = {}
        totals = [0, 0, 0, 0]
        for name, row in counters.by_type.items():
            last = self._last.get(name, [0, 0, 0, 0])
            delta = [row[i] - last[i] for i in range(4)]
            self._last[name] = list(row)
            if any(delta):
                by_type[name] = delta
                for i in range(4):
                    totals[i] += delta[i]
        return {
            "bytes_sent": totals[0],
            "msgs_sent": totals[1],
            "bytes_recv": totals[2],
            "msgs_recv": totals[3],
            "by_type": dict(sorted(by_type.items())),
        }


# --- the transport ------------------------------------------------------------------

#: ``deliver(src, msg)``: hand a decoded peer message to the core.
Deliver = Callable[[str, Message], None]
#: ``on_error(kind, detail)``: kind is ``wire``, ``frame``, ``send`` or ``auth``.
OnError = Callable[[str, str], None]


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: Transport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from earlier sends (port unreachable of a crashed peer): expected.
        self.owner.counters.send_errors += 1


class Transport:
    """UDP socket and TCP server on ``bind:port``, plus one-shot TCP sends.

    Call :meth:`start` inside the event loop, :meth:`send` for every core
    :class:`~overlaysim.core.events.Send`, :meth:`close` at the end.

    With ``keyring`` all traffic is sealed and only traffic that opens is delivered.
    :attr:`keyring` is the object in use: rotate it in place with ``add``/``use``/
    ``remove``; every send seals with its primary at that moment.
    """

    def __init__(
        self,
        *,
        bind: str,
        port: int = DEFAULT_PORT,
        deliver: Deliver,
        on_error: OnError,
        counters: Counters | None = None,
        connect_timeout: float = 2.0,
        io_timeout: float = 10.0,
        keyring: GossipKeyring | None = None,
    ) -> None:
        self.bind = bind
        self.port = port
        self.deliver = deliver
        self.on_error = on_error
        self.counters = counters if counters is not None else Counters()
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.keyring = keyring
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._last: tuple[Message, bytes] | None = None  # the last message sent, encoded
        self._addrs: dict[str, tuple[str, int]] = {}  # checked peer addresses

    async def start(self) -> None:
        """Bind the UDP socket and start the TCP server (OSError if the port is taken)."""
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self), local_addr=(self.bind, self.port)
        )
        self._server = await asyncio.start_server(
            self._on_connection, self.bind, self.port, reuse_address=True
        )

    async def close(self) -> None:
        """Stop listening and cancel streams in flight; later sends are dropped."""
        self._closed = True
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- sending ---------------------------------------------------------------------

    def send(self, item: Send) -> None:
        """Send one core message: a datagram, or a TCP stream when reliable or too big."""
        if self._closed:
            return
        msg = item.msg
        try:
            last = self._last
            if last is not None and last[0] is msg:
                data = last[1]  # one gossip message goes to several peers in a row
            else:
                data = encode(msg)
                self._last = (msg, data)
            dst = self._addrs.get(item.dst)
            if dst is None:
                dst = split_addr(item.dst)
                if len(self._addrs) >= _ADDR_MEMO_MAX:
                    self._addrs.clear()
                self._addrs[item.dst] = dst
            host, port = dst
        except (ValueError, TypeError) as exc:
            self._send_failed(item, f"cannot send to {item.dst!r}: {exc}")
            return
        if self.keyring is not None:
            # A fresh random nonce per packet: never repeated under one key.
            data = seal(self.keyring, data, nonce=os.urandom(NONCE_SIZE), aad=GOSSIP_AAD)
        if item.reliable or len(data) > MAX_DATAGRAM:
            task = asyncio.get_running_loop().create_task(self._stream(item, host, port, data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self._udp is None:
            return  # not started
        try:
            self._udp.sendto(data, (host, port))
        except OSError as exc:
            self._send_failed(item, f"udp to {item.dst}: {exc}")
            return
        self.counters.sent(item.msg.TYPE, len(data))

    async def _stream(self, item: Send, host: str, port: int, data: bytes) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, local_addr=(self.bind, 0)),
                self.connect_timeout,
            )
            writer.write(frame(data, self._max_stream))
            await asyncio.wait_for(writer.drain(), self.io_timeout)
            self.counters.sent(item.msg.TYPE, len(data))
        except (OSError, TimeoutError, FrameError) as exc:
            self._send_failed(item, f"tcp to {item.dst}: {exc.__class__.__name__}: {exc}")
        finally:
            if writer is not None:
                writer.close()
                try:
                    await asyncio.wait_for(writer.wait_closed(), self.io_timeout)
                except (OSError, TimeoutError):
                    pass

    def _send_failed(self, item: Send, detail: str) -> None:
        self.counters.send_errors += 1
        self.on_error("send", f"{item.msg.TYPE.name.lower()}: {detail}")

    # -- receiving -------------------------------------------------------------------

    @property
    def _max_stream(self) -> int:
        # A sealed stream payload may carry a full MAX_STREAM message.
        return MAX_STREAM + (OVERHEAD if self.keyring is not None else 0)

    def _decode(self, data: bytes, max_size: int) -> Message:
        """Open (with a keyring) and decode; GossipAuthError or WireError."""
        if self.keyring is None:
            return decode(data, max_size)
        return decode_sealed(data, self.keyring, max_size, aad=GOSSIP_AAD)

    def _auth_failed(self, how: str, src: str, exc: Exception) -> None:
        self.counters.auth_errors += 1
        self.on_error("auth", f"{how} from {src}: {exc}")

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        src = f"{addr[0]}:{addr[1]}"
        try:
            msg = self._decode(data, MAX_DATAGRAM)
        except GossipAuthError as exc:
            self._auth_failed("udp", src, exc)
            return
        except WireError as exc:
            self.counters.wire_errors += 1
            self.on_error("wire", f"udp from {src}: {exc}")
            return
        self.counters.received(msg.TYPE, len(data))
        self.deliver(src, msg)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        src = f"{peer[0]}:{self.port}" if peer else "?"
        try:
            limit = self._max_stream
            data = await asyncio.wait_for(read_frame(reader, limit), self.io_timeout)
            msg = self._decode(data, limit)
        except GossipAuthError as exc:
            self._auth_failed("tcp", src, exc)
            return
        except FrameError as exc:
            self.counters.frame_errors += 1
            self.on_error("frame", f"tcp from {src}: {exc}")
            return
        except WireError as exc:
            self.counters.wire_errors += 1
            self.on_error("wire", f"tcp from {src}: {exc}")
            return
        except (OSError, TimeoutError) as exc:
            self.counters.frame_errors += 1
            self.on_error("frame", f"tcp from {src}: {exc.__class__.__name__}: {exc}")
            return
        finally:
            writer.close()
        self.counters.received(msg.TYPE, len(data))
        self.deliver(src, msg)
