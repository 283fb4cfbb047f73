"""Manager API: request handling, placement, error mapping over a real TCP connection."""

from __future__ import annotations

import socket
import struct

import msgpack
import pytest
from agent_fakes import A, aio, free_port

from overlaysim.agent.manager import (
    ENCRYPTION_REFUSED,
    EncryptionUnsupported,
    InvalidRequest,
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
from overlaysim.core.cluster import (
    AddressInUse,
    Cluster,
    ClusterError,
    EndpointExists,
    InvalidSpec,
    NetworkNotFound,
    NotAttachable,
)


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


def test_encrypted_network_is_refused_with_the_reason(mgr: Manager) -> None:
    e = err(call(mgr, "network_create", spec={"name": "secret", "encrypted": True}))
    assert e["type"] == "EncryptionUnsupported"
    assert ENCRYPTION_REFUSED in e["message"]
    assert "refusing rather than running unencrypted" in e["message"]
    assert ok(call(mgr, "network_ls")) == []  # nothing was created


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
    assert err(call(mgr, "service_create", name="x", replicas=0, network="web"))["type"] == (
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
        with pytest.raises(EncryptionUnsupported, match="refusing rather than running unencrypted"):
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
async def test_unreachable_manager_is_not_a_refusal() -> None:
    client = ManagerClient(f"{A}:{free_port()}", timeout=1.0)
    with pytest.raises(ManagerUnavailable):
        await client.network_ls()
    with pytest.raises(ManagerUnavailable):
        client.call_sync("network_ls")
    assert not issubclass(ManagerUnavailable, ClusterError)
    assert issubclass(NoLiveHosts, ClusterError)


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
