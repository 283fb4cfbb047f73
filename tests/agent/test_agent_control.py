"""Control API over a unix socket, and the JSON-lines event log."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from agent_fakes import aio

from overlaysim.agent.control import BadRequest, ControlClient, ControlError, ControlServer
from overlaysim.agent.logging import EventLog, RateLimit, read_log
from overlaysim.core.cluster_errors import NotAttachable


async def _echo(req: dict) -> dict:
    return {"echo": req.get("x")}


async def _refuse(req: dict) -> None:
    raise NotAttachable("network web is not manually attachable")


async def _bad(req: dict) -> None:
    raise BadRequest("container: expected a non-empty string")


async def _bug(req: dict) -> None:
    raise KeyError("oops")


def _raw(path: Path, lines: list[bytes]) -> list[dict]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(b"".join(lines))
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


@aio
async def test_control_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "run" / "h1.sock"
    unexpected: list[tuple[str, BaseException]] = []
    server = ControlServer(
        path,
        {"echo": _echo, "refuse": _refuse, "bad": _bad, "bug": _bug},
        on_unexpected=lambda op, exc: unexpected.append((op, exc)),
    )
    await server.start()  # creates the run directory too
    assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
    client = ControlClient(path, timeout=5)
    loop = asyncio.get_running_loop()

    def sync_calls() -> list:
        out: list = [client.call("echo", x=[1, "a"])]
        for op in ("refuse", "bad", "bug", "nope"):
            try:
                client.call(op)
            except Exception as exc:
                out.append(exc)
        # several requests on one connection, answered in order, garbage included
        out.append(_raw(path, [b'{"op":"echo","x":1}\n', b"not json\n", b'{"op":"echo","x":2}\n']))
        return out

    try:
        echo, refused, bad, bug, unknown, raw = await loop.run_in_executor(None, sync_calls)
        assert echo == {"echo": [1, "a"]}
        assert type(refused) is NotAttachable  # the manager's class, raised again
        assert str(refused) == "network web is not manually attachable"
        assert isinstance(bad, ControlError) and bad.type == "BadRequest"
        assert isinstance(bug, ControlError) and bug.type == "KeyError"
        assert [op for op, _ in unexpected] == ["bug"]  # only the bug is "unexpected"
        assert unknown.type == "BadRequest" and "echo" in unknown.message
        assert raw[0] == {"result": {"echo": 1}}
        assert raw[1]["error"]["type"] == "BadRequest"
        assert raw[2] == {"result": {"echo": 2}}
        assert await client.acall("echo", x="async") == {"echo": "async"}
        with pytest.raises(NotAttachable):
            await client.acall("refuse")
    finally:
        await server.close()
    assert not path.exists()


@aio
async def test_stale_socket_from_a_killed_boot_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "h1.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # left behind by a SIGKILLed agent
    stale.close()
    server = ControlServer(path, {"echo": _echo})
    await server.start()
    try:
        assert await ControlClient(path).acall("echo", x=3) == {"echo": 3}
    finally:
        await server.close()


# --- event log ---------------------------------------------------------------------------


def test_log_lines_are_json_with_t_node_kind_and_flushed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "h1.jsonl"
    times = iter([10.5, 11.25])
    log = EventLog(path, node="h1", clock=lambda: next(times))
    log.write("entry_commit", network="web", key="c1", op="add")
    # read while the file is still open: a SIGKILL now must not lose the line
    assert json.loads(path.read_text()) == {
        "t": 10.5,
        "node": "h1",
        "kind": "entry_commit",
        "network": "web",
        "key": "c1",
        "op": "add",
    }
    log.write("member_dead", subject="h2")
    lines = path.read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["entry_commit", "member_dead"]
    assert json.loads(lines[1])["t"] == 11.25
    log.close()
    with pytest.raises(ValueError, match="unknown event kind"):
        log.write("made_up")


def test_read_log_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "h1.jsonl"
    path.write_text('{"t":1,"kind":"start"}\n\n{"t":2,"kind":"stop"}\n{"t":3,"ki')
    assert [r["t"] for r in read_log(path)] == [1, 2]


def test_log_keeps_lines_in_memory_when_asked() -> None:
    log = EventLog(None, node="h1", keep=True, clock=lambda: 1.0)
    rec = log.write("reconcile", network="web", added=[("fdb", "m", "v")], removed=[])
    assert log.lines == [rec]
    assert EventLog(None, node="h1").lines is None  # no file, nothing kept: no growth


def test_rate_limit_counts_what_it_suppresses() -> None:
    limit = RateLimit(1.0)
    assert limit.allow(0.0) == 0
    assert limit.allow(0.2) is None
    assert limit.allow(0.9) is None
    assert limit.allow(1.0) == 2
    assert limit.allow(1.5) is None
    assert limit.allow(5.0) == 1
