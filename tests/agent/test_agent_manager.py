"""Manager API: request handling, placement, error mapping over a real TCP connection."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct

import msgpack
import pytest
from agent_fakes import A, aio, free_port

from overlaysim.agent.manager import (
    ANSWER_AAD,
    ENCRYPTION_REFUSED,
    ERROR_TYPES,
    REQUEST_AAD,
    EncryptionUnsupported,
    InvalidRequest,
    KeysRefused,
    Manager,
    ManagerClient,
    ManagerServer,
    ManagerUnavailable,
    NoLiveHosts,
    RemoteError,
    ServiceExists,
    ServiceNotFound,
    error_from_wire,
)
from overlaysim.agent.netkeys import NetworkKeys, keys_from_ring
from overlaysim.core.cluster import Cluster
from overlaysim.core.cluster_errors import (
    AddressInUse,
    ClusterError,
    EndpointExists,
    InvalidSpec,
    NetworkNotFound,
    NotAttachable,
)
from overlaysim.core.gossip_crypto import NONCE_SIZE, GossipKeyring, open_, seal


def ok(answer: dict):
    assert "error" not in answer, answer
    return answer["result"]


def err(answer: dict) -> dict:
    assert "result" not in answer, answer
    return answer["error"]


@pytest.fixture
def mgr() -> Manager:
    hosts = ["h2", "h1", "h3"]
    return Manager(Cluster(), lambda: list(hosts))


def call(m: Manager, op: str, **args) -> dict:
    return m.handle({"op": op, "args": args})


def test_network_lifecycle_and_allocation(mgr: Manager) -> None:
    net = ok(call(mgr, "network_create", spec={"name": "web", "attachable": True}))
    assert (net["vni"], net["subnet"], net["gateway"], net["encrypted"]) == (
        4096,
        "10.0.0.0/24",
        "10.0.0.1",
        False,
    )
    a = ok(call(mgr, "allocate", network="web", endpoint="c1", host="h1"))
    assert a == {
        "network": "web",
        "endpoint": "c1",
        "ip": "10.0.0.2",
        "mac": "02:42:0a:00:00:02",
        "prefixlen": 24,
        "gateway": "10.0.0.1",
    }
    inspect = ok(call(mgr, "network_inspect", name="web"))
    assert [(e["endpoint"], e["ip"], e["host"]) for e in inspect["endpoints"]] == [
        ("c1", "10.0.0.2", "h1")
    ]
    assert err(call(mgr, "network_rm", name="web"))["type"] == "NetworkInUse"
    ok(call(mgr, "release", network="web", endpoint="c1"))
    assert ok(call(mgr, "network_rm", name="web"))["name"] == "web"
    assert ok(call(mgr, "network_ls")) == []


def test_encrypted_network_is_refused_by_an_insecure_manager(mgr: Manager) -> None:
    e = err(call(mgr, "network_create", spec={"name": "secret", "encrypted": True}))
    assert e["type"] == "EncryptionUnsupported"
    assert e["message"] == f"network secret: {ENCRYPTION_REFUSED}"
    assert "--gossip-key" in e["message"]
    assert ok(call(mgr, "network_ls")) == []  # nothing was created
    assert not mgr.network_keys.exists  # and no keys either


def test_standalone_needs_attachable_services_do_not(mgr: Manager) -> None:
    ok(call(mgr, "network_create", spec={"name": "backend"}))
    e = err(call(mgr, "allocate", network="backend", endpoint="c1", standalone=True))
    assert e == {"type": "NotAttachable", "message": "network backend is not manually attachable"}
    assert ok(call(mgr, "allocate", network="backend", endpoint="t1", standalone=False))["ip"]


def test_release_host_frees_a_crashed_boots_addresses(mgr: Manager) -> None:
    ok(call(mgr, "network_create", spec={"name": "web", "attachable": True}))
    ok(call(mgr, "allocate", network="web", endpoint="c1", host="h1"))
    ok(call(mgr, "allocate", network="web", endpoint="c2", host="h2"))
    released = ok(call(mgr, "release_host", host="h1"))
    assert [r["endpoint"] for r in released] == ["c1"]
    # c1 can be allocated again (the restarted host runs it again); c2 is untouched
    ok(call(mgr, "allocate", network="web", endpoint="c1", host="h1"))
    assert err(call(mgr, "allocate", network="web", endpoint="c2"))["type"] == "EndpointExists"
    assert ok(call(mgr, "release_host", host="h3")) == []


def test_service_placement_is_round_robin_over_live_hosts(mgr: Manager) -> None:
    ok(call(mgr, "network_create", spec={"name": "web"}))
    s = ok(call(mgr, "service_create", name="api", replicas=4, network="web"))
    assert s["tasks"] == [["api.1", "h1"], ["api.2", "h2"], ["api.3", "h3"], ["api.4", "h1"]]
    s2 = ok(call(mgr, "service_create", name="db", replicas=2, network="web"))
    assert s2["tasks"] == [["db.1", "h2"], ["db.2", "h3"]]  # continues where api stopped
    assert err(call(mgr, "service_create", name="db", replicas=1, network="web"))["type"] == (
        "ServiceExists"
    )
    assert ok(call(mgr, "service_rm", name="api"))["name"] == "api"
    assert err(call(mgr, "service_rm", name="api"))["type"] == "ServiceNotFound"
    assert err(call(mgr, "service_create", name="x", replicas=-1, network="web"))["type"] == (
        "InvalidSpec"
    )
    assert err(call(mgr, "service_create", name="x", replicas=1, network="nope"))["type"] == (
        "NetworkNotFound"
    )
    empty = Manager(mgr.cluster, lambda: [])
    assert err(call(empty, "service_create", name="x", replicas=1, network="web"))["type"] == (
        "NoLiveHosts"
    )


@pytest.mark.parametrize(
    ("request_", "etype", "fragment"),
    [
        ({"op": "nope"}, "InvalidRequest", "unknown"),
        ("junk", "InvalidRequest", "expected a map"),
        ({"op": "allocate", "args": {"network": "web"}}, "InvalidRequest", "endpoint"),
        ({"op": "release", "args": {"network": 3, "endpoint": "x"}}, "InvalidRequest", "network=3"),
        (
            {"op": "network_create", "args": {"spec": {"name": "x", "colour": 1}}},
            "InvalidSpec",
            "colour",
        ),
        (
            {"op": "network_create", "args": {"spec": {"subnet": "10.9.0.0/24"}}},
            "InvalidSpec",
            "name",
        ),
        (
            {"op": "network_create", "args": {"spec": {"name": "x", "subnet": "bad"}}},
            "InvalidSpec",
            "bad",
        ),
        ({"op": "network_inspect", "args": {"name": "ghost"}}, "NetworkNotFound", "ghost"),
    ],
)
def test_bad_requests_name_the_problem(mgr: Manager, request_, etype: str, fragment: str) -> None:
    e = err(mgr.handle(request_))
    assert e["type"] == etype
    assert fragment in e["message"]


def test_error_from_wire_maps_types() -> None:
    for cls in (
        NotAttachable,
        NetworkNotFound,
        EncryptionUnsupported,
        KeysRefused,
        AddressInUse,
        ServiceNotFound,
    ):
        exc = error_from_wire({"type": cls.__name__, "message": "m"})
        assert type(exc) is cls and str(exc) == "m"
    unknown = error_from_wire({"type": "Martian", "message": "m"})
    assert isinstance(unknown, RemoteError) and isinstance(unknown, ClusterError)
    assert str(unknown) == "Martian: m"


@aio
async def test_client_reraises_the_same_subclass_over_tcp() -> None:
    port = free_port()
    server = ManagerServer(Manager(Cluster(), lambda: ["h1"]), A, port)
    await server.start()
    try:
        client = ManagerClient(f"{A}:{port}")
        net = await client.network_create({"name": "web", "attachable": False})
        assert net["vni"] == 4096
        with pytest.raises(NotAttachable, match="not manually attachable"):
            await client.allocate("web", "c1", standalone=True)
        with pytest.raises(EncryptionUnsupported, match="authenticated cluster.*--gossip-key"):
            await client.network_create({"name": "s", "encrypted": True})
        with pytest.raises(NetworkNotFound):
            await client.network_inspect("ghost")
        t = await client.allocate("web", "t1", standalone=False, host="h1")
        with pytest.raises(EndpointExists):
            await client.allocate("web", "t1", standalone=False)
        with pytest.raises(InvalidSpec):
            await client.allocate("web", "t2", ip="10.0.0.999", standalone=False)
        assert (await client.service_create("api", 2, "web"))["tasks"] == [
            ["api.1", "h1"],
            ["api.2", "h1"],
        ]
        # the synchronous client (for runners) sees the same answers and errors
        with pytest.raises(ServiceExists):
            await _in_thread(
                client.call_sync, "service_create", name="api", replicas=1, network="web"
            )
        released = await _in_thread(client.call_sync, "release", network="web", endpoint="t1")
        assert released["ip"] == t["ip"]
        # garbage request: an error answer, and the server keeps serving
        answer = await _in_thread(_raw_request, port, b"\xc1\xc1\xc1")
        assert answer["error"]["type"] == "InvalidRequest"
        assert await client.network_ls()
        with pytest.raises(InvalidRequest):
            await client.call("frobnicate")
    finally:
        await server.close()


@aio
async def test_a_client_keeps_its_connection_and_survives_its_loss() -> None:
    port = free_port()
    server = ManagerServer(Manager(Cluster(), lambda: ["h1"]), A, port)
    await server.start()
    client = ManagerClient(f"{A}:{port}")
    try:
        await client.network_create({"name": "web", "attachable": True})
        for i in range(5):
            await client.allocate("web", f"c{i}")
        assert server.connections == 1  # six requests, one connection
        # the manager closes a connection that stays idle; the next call opens a new one
        server.idle_timeout = 0.1
        await client.network_ls()  # answered on the kept one, which then idles out
        await _until(lambda: not server._conns)  # closed after 0.1 s (later if loaded)
        # Back to a long timeout before the next connection opens: its idle wait starts
        # with the value of the moment, and a loaded machine may take longer than 0.1 s
        # to send the next request on it.
        server.idle_timeout = 60.0
        assert (await client.network_inspect("web"))["name"] == "web"
        assert server.connections == 2
        # concurrent calls each get a connection; the client keeps a few of them
        await asyncio.gather(*(client.allocate("web", f"d{i}") for i in range(8)))
        assert len(client._pool) == 4 and server.connections == 9
        # a restarted manager: the kept connection is dead, the request is made again
        await server.close()
        server = ManagerServer(Manager(Cluster(), lambda: ["h1"]), A, port)
        await server.start()
        assert await client.network_ls() == []
        assert server.connections == 1 and server.bad_requests == 0
    finally:
        await client.aclose()
        await server.close()
    assert client._pool == []


async def _answer_of(reader: asyncio.StreamReader) -> dict:
    size = struct.unpack("!I", await reader.readexactly(4))[0]
    return msgpack.unpackb(await reader.readexactly(size))


@contextlib.asynccontextmanager
async def running_server(manager: Manager, **kw):
    """``manager`` served on a free port: (server, port)."""
    port = free_port()
    server = ManagerServer(manager, A, port, **kw)
    await server.start()
    try:
        yield server, port
    finally:
        await server.close()


def plain_server():
    return running_server(Manager(Cluster(), list))


@aio
async def test_a_kept_connection_carries_many_requests_and_one_bad_frame_ends_it() -> None:
    async with plain_server() as (server, port):
        reader, writer = await asyncio.open_connection(A, port)
        for _ in range(3):
            writer.write(_frame(_pack({"op": "network_ls"})))
            assert await _answer_of(reader) == {"result": []}
        # garbage in a whole frame: an error answer, and the connection keeps serving
        writer.write(_frame(b"\xc1"))
        assert (await _answer_of(reader))["error"]["type"] == "InvalidRequest"
        writer.write(_frame(_pack({"op": "network_ls"})))
        assert await _answer_of(reader) == {"result": []}
        # an oversized length: the stream is out of step, so the answer says why and
        # the server closes the connection
        writer.write(struct.pack("!I", 2**31))
        error = (await _answer_of(reader))["error"]
        assert error["type"] == "InvalidRequest" and "exceeds limit" in error["message"]
        assert await reader.read() == b""
        writer.close()
        assert server.bad_requests == 2
        assert server.connections == 1


@aio
async def test_unreachable_manager_is_not_a_refusal() -> None:
    client = ManagerClient(f"{A}:{free_port()}", timeout=1.0)
    with pytest.raises(ManagerUnavailable):
        await client.network_ls()
    with pytest.raises(ManagerUnavailable):
        client.call_sync("network_ls")
    assert not issubclass(ManagerUnavailable, ClusterError)
    assert issubclass(NoLiveHosts, ClusterError)


# --- sealed channel and network keys -------------------------------------------------------

K1, K2 = bytes(range(16)), bytes(range(16, 32))


def secure_manager() -> Manager:
    keys = NetworkKeys(random.Random(5).randbytes)
    return Manager(Cluster(), lambda: ["h1", "h2"], secure=True, network_keys=keys)


def test_keys_are_refused_by_an_insecure_manager(mgr: Manager) -> None:
    for op in ("keys", "rotate_keys"):
        e = err(call(mgr, op))
        assert e["type"] == "KeysRefused"
        assert "--gossip-key" in e["message"]
    assert not mgr.network_keys.exists
    assert ERROR_TYPES["KeysRefused"] is KeysRefused


def test_secure_manager_creates_encrypted_networks_and_their_keys() -> None:
    m = secure_manager()
    assert not m.network_keys.exists
    net = ok(call(m, "network_create", spec={"name": "sec", "encrypted": True, "attachable": True}))
    assert net["encrypted"] is True
    assert m.network_keys.exists  # created with the first encrypted network
    # encrypted networks are no longer refused further down either
    assert ok(call(m, "allocate", network="sec", endpoint="c1", host="h1"))["ip"] == "10.0.0.2"
    assert len(ok(call(m, "service_create", name="api", replicas=2, network="sec"))["tasks"]) == 2
    ring = ok(call(m, "keys"))
    assert ring == m.network_keys.ring() and ring["generation"] == 1
    assert ring["primary"] == ring["keys"][1]["tag"]


def test_rotate_keys_moves_generation_and_primary() -> None:
    m = secure_manager()
    first = ok(call(m, "keys"))
    second = ok(call(m, "rotate_keys"))
    assert second["generation"] == first["generation"] + 1
    assert second["primary"] == first["keys"][2]["tag"]  # the former next
    assert [k["tag"] for k in second["keys"][:2]] == [k["tag"] for k in first["keys"][1:]]
    assert ok(call(m, "keys")) == second


def test_rotate_keys_if_generation_rotates_once_for_many_askers() -> None:
    m = secure_manager()
    first = ok(call(m, "keys"))
    rotated = ok(call(m, "rotate_keys", if_generation=first["generation"]))
    assert rotated["generation"] == first["generation"] + 1
    # a second agent that ran out at the same generation gets the new ring, no second step
    again = ok(call(m, "rotate_keys", if_generation=first["generation"]))
    assert again == rotated


def test_server_keyring_and_manager_secure_must_agree() -> None:
    with pytest.raises(ValueError, match="secure"):
        ManagerServer(secure_manager(), A, free_port())  # keys would travel in clear
    with pytest.raises(ValueError, match="secure"):
        ManagerServer(Manager(Cluster(), list), A, free_port(), keyring=GossipKeyring([K1]))


def secure_server(**kw):
    return running_server(secure_manager(), keyring=GossipKeyring([K1]), **kw)


@aio
async def test_sealed_round_trip_with_keys_async_and_sync() -> None:
    async with secure_server() as (server, port):
        client = ManagerClient(f"{A}:{port}", keyring=GossipKeyring([K1]))
        net = await client.network_create({"name": "sec", "encrypted": True, "attachable": True})
        assert net["encrypted"] is True
        ring = await client.keys()
        keys, primary = keys_from_ring(ring)  # bytes survived the sealed msgpack channel
        assert len(keys) == 3 and primary == keys[1].tag
        rotated = await client.rotate_keys()
        assert rotated["generation"] == 2 and rotated["primary"] == keys[2].tag
        with pytest.raises(NetworkNotFound):
            await client.network_inspect("ghost")  # refusals come back sealed and typed
        got = await _in_thread(client.call_sync, "keys")
        assert got == rotated
        await client.allocate("sec", "c1", host="h1")
        with pytest.raises(EndpointExists):
            await _in_thread(client.call_sync, "allocate", network="sec", endpoint="c1")
        assert server.bad_requests == 0


@aio
async def test_unauthenticated_clients_get_no_answer_at_all() -> None:
    async with secure_server() as (server, port):
        for keyring in (None, GossipKeyring([K2])):
            client = ManagerClient(f"{A}:{port}", timeout=2.0, keyring=keyring)
            with pytest.raises(ManagerUnavailable, match="did not answer.*authentication"):
                await client.network_ls()
            with pytest.raises(ManagerUnavailable, match="did not answer.*authentication"):
                await _in_thread(client.call_sync, "keys")
        assert server.bad_requests == 4
        # byte for byte: not even an error message goes back
        assert await _in_thread(_raw_exchange, port, _frame(_pack({"op": "keys"}))) == b""
        # an answer sealed with the right key cannot be replayed as a request
        replay = seal(
            GossipKeyring([K1]), _pack({"op": "keys"}), nonce=bytes(NONCE_SIZE), aad=ANSWER_AAD
        )
        assert await _in_thread(_raw_exchange, port, _frame(replay)) == b""
        assert await _in_thread(_raw_exchange, port, b"\x00\x00\x00\x05ab") == b""
        assert server.bad_requests == 7
        assert not server.manager.network_keys.exists  # nothing was done for them
        # the same request sealed as a request is answered, sealed as an answer
        request = seal(
            GossipKeyring([K1]),
            _pack({"op": "network_ls"}),
            nonce=bytes(NONCE_SIZE),
            aad=REQUEST_AAD,
        )
        raw = await _in_thread(_raw_exchange, port, _frame(request))
        assert msgpack.unpackb(open_(GossipKeyring([K1]), raw[4:], ANSWER_AAD)) == {"result": []}


@aio
async def test_keyed_client_of_a_keyless_manager_says_so() -> None:
    async with plain_server() as (_, port):
        client = ManagerClient(f"{A}:{port}", keyring=GossipKeyring([K1]))
        with pytest.raises(ManagerUnavailable, match="does not authenticate.*--gossip-key"):
            await client.network_ls()
        with pytest.raises(ManagerUnavailable, match="does not authenticate"):
            await _in_thread(client.call_sync, "network_ls")
        # keys never travel in clear, even to a keyless client of a keyless manager
        with pytest.raises(KeysRefused):
            await ManagerClient(f"{A}:{port}").keys()


@aio
async def test_timer_rotates_once_keys_exist_and_stops_on_close() -> None:
    async with secure_server(key_rotation=0.05) as (server, port):
        keys = server.manager.network_keys
        await asyncio.sleep(0.2)
        assert not keys.exists and server.timed_rotations == 0  # nothing to rotate yet
        client = ManagerClient(f"{A}:{port}", keyring=GossipKeyring([K1]))
        first = await client.keys()
        await _until(lambda: keys.generation >= first["generation"] + 2)
        assert server.timed_rotations >= 2
        ring = await client.keys()
        assert ring["generation"] == keys.generation
        assert ring["primary"] != first["primary"]
    stopped = keys.generation
    await asyncio.sleep(0.2)
    assert keys.generation == stopped  # the task went with the server


@aio
async def test_no_timer_without_a_period() -> None:
    async with secure_server(key_rotation=None) as (server, port):
        server.manager.network_keys.ring()
        await asyncio.sleep(0.1)
        assert server.manager.network_keys.generation == 1


async def _until(cond, timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and return every byte that comes back until the server closes."""
    with socket.create_connection((A, port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # a cut frame ends here rather than at the server's timeout
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


async def _in_thread(fn, *args, **kwargs):
    import asyncio
    import functools

    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(fn, *args, **kwargs)
    )


def _raw_request(port: int, payload: bytes) -> dict:
    """Send a framed payload by hand (blocking: run it off the event loop)."""
    with socket.create_connection((A, port), timeout=5) as s:
        s.sendall(struct.pack("!I", len(payload)) + payload)
        size = struct.unpack("!I", s.recv(4))[0]
        data = b""
        while len(data) < size:
            data += s.recv(size - len(data))
    return msgpack.unpackb(data)
