"""The manager API on TCP 2377: networks, addresses and service placement.

The manager wraps :class:`overlaysim.core.cluster.Cluster` (network definitions, VNIs,
IPAM) and adds what a swarm manager also does here: it remembers which host holds each
allocation (a restarted agent releases its previous boot's addresses with
``release_host``) and places service tasks round robin over the live hosts.

Protocol: requests and answers over TCP, each way a 4-byte big-endian length then a
msgpack map; a connection carries any number of request/answer pairs in turn (the
client keeps a few open, see :class:`ManagerClient`), and the server closes one that
stays idle for :data:`IDLE_TIMEOUT` seconds. Request ``{"op": name, "args": {...}}``;
answer ``{"result": ...}`` or ``{"error": {"type": "NotAttachable", "message": "..."}}``.
Errors are :class:`~overlaysim.core.cluster.ClusterError` subclasses;
:class:`ManagerClient` raises the same subclass again on the calling side
(:func:`error_from_wire`).

With a :class:`~overlaysim.core.gossip_crypto.GossipKeyring` (the agents'
``--gossip-key``) both frames of a request are sealed, with different associated data
for requests and answers so an answer can never be replayed as a request. A server with a
keyring says nothing at all to a peer whose request does not open: it closes the
connection and counts a bad request.

Only such a *secure* manager accepts encrypted networks, because it also hands out their
ESP keys (:class:`~overlaysim.agent.netkeys.NetworkKeys`, ops ``keys`` and
``rotate_keys``): keys never travel in clear. An insecure manager refuses encrypted
networks with :data:`ENCRYPTION_REFUSED` rather than run them unencrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from overlaysim.agent import service_registry as _registry
from overlaysim.agent.netkeys import NetworkKeys
from overlaysim.agent.service_registry import SERVICE_OPS, ServiceRegistry
from overlaysim.agent.service_registry import NoLiveHosts as NoLiveHosts  # re-exported
from overlaysim.agent.service_registry import ServiceExists as ServiceExists
from overlaysim.agent.service_registry import ServiceNotFound as ServiceNotFound
from overlaysim.agent.transport import ClosedBeforeFrame, FrameError, frame, read_frame
from overlaysim.core import cluster as _cluster
from overlaysim.core.cluster import Cluster, ClusterError, InvalidSpec, NetworkSpec
from overlaysim.core.gossip_crypto import (
    NONCE_SIZE,
    OVERHEAD,
    GossipAuthError,
    GossipKeyring,
    open_,
    seal,
)

MANAGER_PORT = 2377
#: Largest request or answer (a network_ls of a big cluster fits easily).
MAX_MESSAGE = 16 * 1024 * 1024
#: Largest frame: a sealed message is OVERHEAD bytes longer.
MAX_FRAME = MAX_MESSAGE + OVERHEAD
#: Associated data of sealed requests and answers (distinct: no answer replays as a request).
REQUEST_AAD = b"osim-mgr-req"
ANSWER_AAD = b"osim-mgr-ans"
#: Default period of the network key rotation (Docker rotates every 12 hours).
KEY_ROTATION = 12 * 3600.0
#: The server closes a connection that brings no request for this long.
IDLE_TIMEOUT = 60.0
#: A client reuses a connection idle for less than this (well inside IDLE_TIMEOUT, so
#: the server does not close it under a request) and keeps at most POOL_SIZE idle.
REUSE_WITHIN = 30.0
POOL_SIZE = 4

ENCRYPTION_REFUSED = (
    "encrypted networks need an authenticated cluster: start the agents with --gossip-key, "
    "the network keys travel over the sealed manager channel"
)
KEYS_REFUSED = (
    "network keys are only handed out over the sealed manager channel: start the agents "
    "with --gossip-key"
)


# --- errors -----------------------------------------------------------------------------


class EncryptionUnsupported(ClusterError):
    """An encrypted network was asked of a manager without a keyring (keys would leak)."""


class KeysRefused(ClusterError):
    """Network keys were asked of a manager without a keyring: keys never travel in clear."""


class InvalidRequest(ClusterError):
    """The request itself is malformed: unknown operation, missing or mistyped argument."""


class RemoteError(ClusterError):
    """An error type this side does not know (a newer or broken peer)."""


class ManagerUnavailable(ConnectionError):
    """The manager could not be reached or answered garbage (not a refusal)."""


def _error_types() -> dict[str, type[Exception]]:
    types: dict[str, type[Exception]] = {}
    for value in (*vars(_cluster).values(), *vars(_registry).values(), *globals().values()):
        if isinstance(value, type) and issubclass(value, ClusterError):
            types[value.__name__] = value
    return types


def error_to_wire(exc: BaseException) -> dict[str, str]:
    """``{"type": class name, "message": text}`` for an error answer."""
    return {"type": type(exc).__name__, "message": str(exc)}


def error_from_wire(err: object) -> Exception:
    """The exception an error answer stands for: the same ClusterError subclass when known.

    Unknown types become :class:`RemoteError` whose message starts with the type name.
    """
    if not isinstance(err, dict):
        return ManagerUnavailable(f"malformed error answer {err!r}")
    name = str(err.get("type", ""))
    message = str(err.get("message", ""))
    cls = ERROR_TYPES.get(name)
    if cls is None:
        return RemoteError(f"{name}: {message}" if name else message)
    return cls(message)


# --- request handling (no I/O) ------------------------------------------------------------

_REQUIRED = object()


def _arg(
    args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _REQUIRED
) -> Any:
    if name not in args or (args[name] is None and default is not _REQUIRED):
        if default is _REQUIRED:
            raise InvalidRequest(f"missing argument {name!r}")
        return default
    value = args[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InvalidRequest(f"{name}={value!r}: expected {getattr(kind, '__name__', kind)}")
    return value


def network_dict(net: _cluster.Network) -> dict[str, Any]:
    """A network as plain data (msgpack/JSON safe)."""
    return dataclasses.asdict(net)


def allocation_dict(alloc: _cluster.Allocation) -> dict[str, Any]:
    """An allocation as plain data."""
    return dataclasses.asdict(alloc)


_SPEC_FIELDS = frozenset(f.name for f in dataclasses.fields(NetworkSpec))


def spec_from_dict(spec: object) -> NetworkSpec:
    """A :class:`NetworkSpec` from plain data; unknown fields are an error, not ignored."""
    if not isinstance(spec, dict):
        raise InvalidSpec(f"spec={spec!r}: expected a mapping of network fields")
    unknown = sorted(set(spec) - _SPEC_FIELDS)
    if unknown:
        raise InvalidSpec(
            f"spec field {unknown[0]!r}: unknown; expected one of {', '.join(sorted(_SPEC_FIELDS))}"
        )
    if "name" not in spec:
        raise InvalidSpec("spec: missing field 'name'")
    values = dict(spec)
    for key in ("aux_addresses", "labels"):
        if values.get(key) is None:
            values.pop(key, None)
    return NetworkSpec(**values)


class Manager:
    """Request handling for the manager API, without I/O.

    ``live_hosts`` returns the names of hosts currently alive (the serving agent's
    membership view, itself included); services are placed over them. ``secure`` says
    that the manager is only reachable over a sealed channel (its
    :class:`ManagerServer` has a keyring): only then does it create encrypted networks
    and hand out ``network_keys``.
    """

    def __init__(
        self,
        cluster: Cluster,
        live_hosts: Callable[[], list[str]],
        *,
        secure: bool = False,
        network_keys: NetworkKeys | None = None,
    ) -> None:
        self.cluster = cluster
        self.live_hosts = live_hosts
        self.secure = secure
        self.network_keys = network_keys if network_keys is not None else NetworkKeys()
        self._holder: dict[tuple[str, str], str] = {}  # (network name, endpoint) -> host
        #: Service records, VIPs and placement (:mod:`overlaysim.agent.service_registry`).
        self.services = ServiceRegistry(cluster, live_hosts)

    def handle(self, request: object) -> dict[str, Any]:
        """Answer one request: ``{"result": ...}`` or ``{"error": {...}}``."""
        try:
            if not isinstance(request, dict):
                raise InvalidRequest(f"request={request!r}: expected a map with 'op' and 'args'")
            op = request.get("op")
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise InvalidRequest(f"args={args!r}: expected a map")
            handler = self._OPS.get(op) if isinstance(op, str) else None
            if handler is not None:
                return {"result": handler(self, args)}
            service_op = SERVICE_OPS.get(op) if isinstance(op, str) else None
            if service_op is None:
                known = ", ".join([*self._OPS, *SERVICE_OPS])
                raise InvalidRequest(f"op={op!r}: unknown; expected one of {known}")
            return {"result": service_op(self.services, args)}
        except ClusterError as exc:
            return {"error": error_to_wire(exc)}
        except Exception as exc:  # a bug here must not take the manager down
            return {"error": {"type": "InternalError", "message": f"{type(exc).__name__}: {exc}"}}

    # --- operations ----------------------------------------------------------------------

    def network_create(self, args: dict[str, Any]) -> dict[str, Any]:
        spec = spec_from_dict(args.get("spec"))
        if spec.encrypted is True and not self.secure:
            raise EncryptionUnsupported(f"network {spec.name}: {ENCRYPTION_REFUSED}")
        net = self.cluster.create_network(spec)
        if net.encrypted:
            self.network_keys.ring()  # from now on there are keys (and timed rotation)
        return network_dict(net)

    def network_rm(self, args: dict[str, Any]) -> dict[str, Any]:
        net = self.cluster.remove_network(_arg(args, "name", str))
        return network_dict(net)

    def network_ls(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [network_dict(n) for n in self.cluster.networks()]

    def network_inspect(self, args: dict[str, Any]) -> dict[str, Any]:
        net = self.cluster.network(_arg(args, "name", str))
        out = network_dict(net)
        out["endpoints"] = [
            {**allocation_dict(a), "host": self._holder.get((net.name, a.endpoint), "")}
            for a in self.cluster.allocations(net.name)
        ]
        return out

    def allocate(self, args: dict[str, Any]) -> dict[str, Any]:
        network = _arg(args, "network", str)
        endpoint = _arg(args, "endpoint", str)
        ip = _arg(args, "ip", str, None)
        standalone = _arg(args, "standalone", bool, True)
        host = _arg(args, "host", str, "")
        alloc = self.cluster.allocate(network, endpoint, ip=ip, standalone=standalone)
        self._holder[(alloc.network, alloc.endpoint)] = host
        return allocation_dict(alloc)

    def release(self, args: dict[str, Any]) -> dict[str, Any]:
        alloc = self.cluster.release(_arg(args, "network", str), _arg(args, "endpoint", str))
        self._holder.pop((alloc.network, alloc.endpoint), None)
        return allocation_dict(alloc)

    def release_host(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """Release every allocation held by ``host`` (its agent restarted: they are gone)."""
        host = _arg(args, "host", str)
        if not host:
            raise InvalidRequest("host='': expected a host name")
        out = []
        for (network, endpoint), holder in list(self._holder.items()):
            if holder == host:
                out.append(allocation_dict(self.cluster.release(network, endpoint)))
                del self._holder[(network, endpoint)]
        return out

    def keys(self, args: dict[str, Any]) -> dict[str, Any]:
        """The ESP key ring of encrypted networks (created on first use)."""
        self._need_secure()
        return self.network_keys.ring()

    def rotate_keys(self, args: dict[str, Any]) -> dict[str, Any]:
        """Rotate the ESP key ring one step; returns the new ring.

        With ``if_generation`` only while the ring is still at that generation (several
        agents whose sequence numbers run out together ask for one rotation, not one
        each: a ring two generations ahead of a peer loses its packets).
        """
        self._need_secure()
        expected = args.get("if_generation")
        if expected is not None and self.network_keys.generation != expected:
            return self.network_keys.ring()
        return self.network_keys.rotate()

    def _need_secure(self) -> None:
        if not self.secure:
            raise KeysRefused(KEYS_REFUSED)

    _OPS: dict[str, Callable[[Manager, dict[str, Any]], Any]] = {
        "network_create": network_create,
        "network_rm": network_rm,
        "network_ls": network_ls,
        "network_inspect": network_inspect,
        "allocate": allocate,
        "release": release,
        "release_host": release_host,
        "keys": keys,
        "rotate_keys": rotate_keys,
    }


# --- wire --------------------------------------------------------------------------------


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _seal(keyring: GossipKeyring | None, payload: bytes, aad: bytes) -> bytes:
    if keyring is None:
        return payload
    if len(payload) > MAX_MESSAGE:  # the frame limit alone would allow OVERHEAD more
        raise FrameError(f"payload of {len(payload)} bytes exceeds limit of {MAX_MESSAGE}")
    return seal(keyring, payload, nonce=os.urandom(NONCE_SIZE), aad=aad)


def _frame_limit(keyring: GossipKeyring | None) -> int:
    return MAX_FRAME if keyring is not None else MAX_MESSAGE


class ManagerServer:
    """Serves a :class:`Manager` on ``host:port``, one request per connection.

    With ``keyring`` (which requires ``manager.secure``, and the other way round) requests
    must open under one of its keys and answers are sealed with its primary; a request
    that does not open gets no answer at all. A secure server also rotates the network
    keys every ``key_rotation`` seconds once they exist (``None`` or 0: never).
    """

    def __init__(
        self,
        manager: Manager,
        host: str,
        port: int = MANAGER_PORT,
        timeout: float = 10.0,
        keyring: GossipKeyring | None = None,
        key_rotation: float | None = KEY_ROTATION,
    ):
        if manager.secure != (keyring is not None):
            raise ValueError(
                "manager.secure must be True exactly when the server has a keyring: "
                "a secure manager hands out keys, which must never travel in clear"
            )
        if key_rotation is not None and key_rotation < 0:
            raise ValueError(f"key_rotation={key_rotation}: expected seconds >= 0 or None")
        self.manager = manager
        self.host = host
        self.port = port
        self.timeout = timeout
        self.keyring = keyring
        self.key_rotation = key_rotation
        self.bad_requests = 0
        #: Rotations done by the timer (not those asked for with ``rotate_keys``).
        self.timed_rotations = 0
        self.idle_timeout = IDLE_TIMEOUT
        #: Connections accepted (a client keeps its connection, so about one per client).
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._rotator: asyncio.Task[None] | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True
        )
        if self.keyring is not None and self.key_rotation:
            self._rotator = asyncio.get_running_loop().create_task(self._rotate_forever())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._conns):  # open client connections end with the server
            writer.close()
        if self._rotator is not None:
            self._rotator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rotator
            self._rotator = None

    async def _rotate_forever(self) -> None:
        assert self.key_rotation
        while True:
            await asyncio.sleep(self.key_rotation)
            if self.manager.network_keys.exists:  # no encrypted network yet: nothing to rotate
                self.manager.rotate_keys({})
                self.timed_rotations += 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer the requests of one connection in turn until the client closes it, it
        stays idle for :data:`IDLE_TIMEOUT`, or a request does not authenticate."""
        self._conns.add(writer)
        self.connections += 1
        try:
            first = True
            while await self._serve_one(reader, writer, first):
                first = False
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bool
    ) -> bool:
        """One request and its answer; False when the connection is to be closed."""
        authentic = self.keyring is None
        try:
            try:
                data = await asyncio.wait_for(
                    read_frame(reader, _frame_limit(self.keyring)),
                    self.timeout if first else self.idle_timeout,
                )
            except (ClosedBeforeFrame, TimeoutError):
                if first:  # a connection that never asks anything counts as bad
                    self.bad_requests += 1
                return False  # a client done with its connection, or an idle one
            except FrameError as exc:  # the stream is out of step: say why (if we may), close
                self.bad_requests += 1
                if authentic:
                    await self._answer(writer, self._undecodable(exc))
                return False
            try:
                if self.keyring is not None:
                    data = open_(self.keyring, data, REQUEST_AAD)
                    authentic = True
                request = _unpack(data)
            except GossipAuthError:
                self.bad_requests += 1
                return False  # not a word to a peer that does not hold the key
            except (ValueError, msgpack.UnpackException) as exc:
                self.bad_requests += 1
                if not authentic:
                    return False
                answer = self._undecodable(exc)
            else:
                answer = self.manager.handle(request)
            await self._answer(writer, answer)
            return True
        except (OSError, TimeoutError):
            self.bad_requests += 1  # the client went away; nothing to answer
            return False

    @staticmethod
    def _undecodable(exc: Exception) -> dict[str, Any]:
        return {"error": error_to_wire(InvalidRequest(f"undecodable request: {exc}"))}

    async def _answer(self, writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
        payload = _seal(self.keyring, _pack(answer), ANSWER_AAD)
        writer.write(frame(payload, _frame_limit(self.keyring)))
        await asyncio.wait_for(writer.drain(), self.timeout)


def _result(answer: object) -> Any:
    if not isinstance(answer, dict):
        raise ManagerUnavailable(f"malformed answer {answer!r}")
    if "error" in answer:
        raise error_from_wire(answer["error"])
    if "result" not in answer:
        raise ManagerUnavailable(f"malformed answer {answer!r}")
    return answer["result"]


@dataclasses.dataclass(frozen=True)
class _Conn:
    """A kept client connection: its streams, the loop they belong to, when it went idle."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    loop: asyncio.AbstractEventLoop
    since: float


class _NoAnswer(Exception):
    """The manager closed the connection without a byte of answer."""


_NO_ANSWER = (
    "did not answer (closed the connection): authentication may have failed; the manager "
    "and this side must use the same --gossip-key"
)


class ManagerClient:
    """Client of the manager API at ``"ip:port"``: async methods, plus :meth:`call_sync`.

    Refusals raise the manager's :class:`ClusterError` subclass; an unreachable or
    garbled manager, or one that did not answer (as a manager with a gossip key does
    when this client has no key or another one), raises :class:`ManagerUnavailable`.
    With ``keyring`` requests are sealed and answers must open.
    """

    def __init__(
        self,
        addr: str,
        timeout: float = 5.0,
        local_addr: str | None = None,
        keyring: GossipKeyring | None = None,
    ) -> None:
        host, sep, port = addr.rpartition(":")
        self.host = host if sep else addr
        self.port = int(port) if sep else MANAGER_PORT
        self.timeout = timeout
        self.local_addr = local_addr
        self.keyring = keyring
        self._pool: list[_Conn] = []  # idle kept connections, most recently used last

    def _request(self, op: str, args: dict[str, Any]) -> bytes:
        payload = _seal(self.keyring, _pack({"op": op, "args": args}), REQUEST_AAD)
        return frame(payload, _frame_limit(self.keyring))

    def _answer(self, data: bytes) -> Any:
        if self.keyring is not None:
            try:
                data = open_(self.keyring, data, ANSWER_AAD)
            except GossipAuthError as exc:
                raise GossipAuthError(
                    f"answer does not authenticate ({exc}): the manager runs without "
                    "--gossip-key or with another key"
                ) from None
        return _unpack(data)

    def _unavailable(self, op: str, exc: Exception) -> ManagerUnavailable:
        where = f"manager {self.host}:{self.port} ({op})"
        if isinstance(exc, _NoAnswer):
            return ManagerUnavailable(f"{where}: {_NO_ANSWER}")
        if isinstance(exc, GossipAuthError):
            return ManagerUnavailable(f"{where}: {exc}")
        return ManagerUnavailable(f"{where}: {exc.__class__.__name__}: {exc}")

    async def call(self, op: str, **args: Any) -> Any:
        """One request; returns the result or raises.

        It goes over a connection kept from an earlier call when one is idle (a lost
        segment on an open connection costs a retransmission of a few hundred ms, a
        lost SYN of a new one the kernel's 1 s initial timeout). A kept connection the
        manager has closed meanwhile (idle, or the manager restarted) answers nothing;
        then the request goes once more over a new connection.
        """
        try:
            request = self._request(op, args)
            while True:
                conn = self._take()
                try:
                    answer = await self._exchange(conn, request)
                except (_NoAnswer, ConnectionError):
                    if conn is None:
                        raise
                    continue  # a stale kept connection: the next one, or a new one
                break
        except (
            _NoAnswer,
            OSError,
            TimeoutError,
            FrameError,
            ValueError,
            msgpack.UnpackException,
        ) as exc:
            raise self._unavailable(op, exc) from None
        return _result(answer)

    async def _exchange(self, conn: _Conn | None, request: bytes) -> Any:
        """Send ``request`` over ``conn`` (None: a new connection); keep the connection
        for the next call if the answer came back whole."""
        if conn is None:
            local = (self.local_addr, 0) if self.local_addr else None
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, local_addr=local), self.timeout
            )
        else:
            reader, writer = conn.reader, conn.writer
        kept = False
        try:
            writer.write(request)
            await asyncio.wait_for(writer.drain(), self.timeout)
            try:
                data = await asyncio.wait_for(
                    read_frame(reader, _frame_limit(self.keyring)), self.timeout
                )
            except (ClosedBeforeFrame, ConnectionResetError) as exc:
                raise _NoAnswer() from exc
            answer = self._answer(data)
            kept = self._keep(reader, writer)
            return answer
        finally:
            if not kept:
                writer.close()

    def _take(self) -> _Conn | None:
        """An idle kept connection young enough to reuse, or None."""
        now = asyncio.get_running_loop().time()
        while self._pool:
            conn = self._pool.pop()
            if conn.loop is asyncio.get_running_loop() and now - conn.since < REUSE_WITHIN:
                return conn
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                conn.writer.close()
        return None

    def _keep(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if len(self._pool) >= POOL_SIZE or reader.at_eof():
            return False
        loop = asyncio.get_running_loop()
        self._pool.append(_Conn(reader, writer, loop, loop.time()))
        return True

    async def aclose(self) -> None:
        """Close the kept connections (an agent's clean stop)."""
        pool, self._pool = self._pool, []
        for conn in pool:
            conn.writer.close()
        for conn in pool:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()

    def call_sync(self, op: str, **args: Any) -> Any:
        """The same request from synchronous code (a runner, the CLI)."""
        limit = _frame_limit(self.keyring)
        try:
            request = self._request(op, args)
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(request)
                try:
                    head = _recv_exactly(sock, 4, first=True)
                except (ClosedBeforeFrame, ConnectionResetError) as exc:
                    raise _NoAnswer() from exc
                (size,) = struct.unpack("!I", head)
                if not 0 < size <= limit:
                    raise FrameError(f"answer of {size} bytes")
                answer = self._answer(_recv_exactly(sock, size))
        except (_NoAnswer, OSError, FrameError, ValueError, msgpack.UnpackException) as exc:
            raise self._unavailable(op, exc) from None
        return _result(answer)

    # --- typed helpers ----------------------------------------------------------------

    async def network_create(self, spec: dict[str, Any]) -> dict[str, Any]:
        return await self.call("network_create", spec=spec)

    async def network_rm(self, name: str) -> dict[str, Any]:
        return await self.call("network_rm", name=name)

    async def network_ls(self) -> list[dict[str, Any]]:
        return await self.call("network_ls")

    async def network_inspect(self, name: str) -> dict[str, Any]:
        return await self.call("network_inspect", name=name)

    async def allocate(
        self,
        network: str,
        endpoint: str,
        ip: str | None = None,
        standalone: bool = True,
        host: str = "",
    ) -> dict[str, Any]:
        return await self.call(
            "allocate", network=network, endpoint=endpoint, ip=ip, standalone=standalone, host=host
        )

    async def release(self, network: str, endpoint: str) -> dict[str, Any]:
        return await self.call("release", network=network, endpoint=endpoint)

    async def release_host(self, host: str) -> list[dict[str, Any]]:
        return await self.call("release_host", host=host)

    async def ingress_ports(self) -> list[list[Any]]:
        """The routing mesh's ``[[P, ingress VIP, T, service], ...]`` every host holds."""
        return await self.call("ingress_ports")

    async def service_create(self, name: str, replicas: int, network: str) -> dict[str, Any]:
        return await self.call("service_create", name=name, replicas=replicas, network=network)

    async def service_rm(self, name: str) -> dict[str, Any]:
        return await self.call("service_rm", name=name)

    async def keys(self) -> dict[str, Any]:
        """The network key ring (:class:`KeysRefused` unless the channel is sealed)."""
        return await self.call("keys")

    async def rotate_keys(self, if_generation: int | None = None) -> dict[str, Any]:
        """Rotate the network key ring one step (with ``if_generation``: only if it is
        still at that generation); returns the ring."""
        if if_generation is None:
            return await self.call("rotate_keys")
        return await self.call("rotate_keys", if_generation=if_generation)


def _recv_exactly(sock: socket.socket, n: int, first: bool = False) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            error = ClosedBeforeFrame if first and not buf else FrameError
            raise error(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


#: Every refusal type by class name (the cluster's and this module's), for clients.
ERROR_TYPES = _error_types()
