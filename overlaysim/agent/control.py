"""The agent's local control API: JSON lines over a unix socket.

The scenario runner (and a person with ``socat``) talks to each agent through its
socket, e.g. ``/run/overlaysim/<run>/h3.sock``. Each request is one line holding a JSON
object ``{"op": "run", "container": "c1", "network": "web"}``; each answer is one line,
``{"result": ...}`` or ``{"error": {"type": "NotAttachable", "message": "..."}}``.
Several requests may share a connection; they are answered in order.

:class:`ControlClient` raises refusals again as the manager's
:class:`~overlaysim.core.cluster_errors.ClusterError` subclass when the type is one of those
(``NotAttachable``, ``EncryptionUnsupported``...), otherwise as :class:`ControlError`.
:func:`operations` checks each request and calls the agent; ``docs/agent.md`` lists
the operations with their arguments and results.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from overlaysim.agent.manager import ERROR_TYPES
from overlaysim.core.cluster_errors import ClusterError
from overlaysim.core.services import EndpointMode, TaskSpec, check_dns_name

#: Longest request or answer line.
MAX_LINE = 16 * 1024 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """One container to start, as a checked ``run`` or ``task`` request asks for it.

    Built once by :func:`operations` and passed down unchanged (agent, workloads,
    containers), so the list of what a start takes is written in one place.
    """

    name: str
    networks: tuple[str, ...]
    #: ``docker run`` (attachable networks only) rather than a service task.
    standalone: bool
    #: A fixed address (only with exactly one network).
    ip: str | None = None
    #: Extra DNS names on every network, and the service task this container is.
    aliases: tuple[str, ...] = ()
    task: TaskSpec | None = None
    #: The service's VIP on networks where it is not ``task.vip`` (the ingress network).
    task_vips: Mapping[str, str] = field(default_factory=dict)
    #: What runs inside the container once its names are in place (empty: nothing).
    command: tuple[str, ...] = ()


class ControlError(RuntimeError):
    """An operation failed for a reason that is not a manager refusal.

    ``type`` is the error's class name on the agent (``BadRequest``, ``DataPlaneError``,
    ``EntryExistsError``...).
    """

    def __init__(self, type_: str, message: str) -> None:
        super().__init__(f"{type_}: {message}")
        self.type = type_
        self.message = message


class BadRequest(ControlError):
    """Raised by handlers (and the server) for a malformed request."""

    def __init__(self, message: str) -> None:
        super().__init__("BadRequest", message)


def _error_answer(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ControlError):
        return {"error": {"type": exc.type, "message": exc.message}}
    return {"error": {"type": type(exc).__name__, "message": str(exc)}}


def raise_answer(answer: object) -> Any:
    """The result of an answer, or raise the error it carries."""
    if not isinstance(answer, dict):
        raise ControlError("BadAnswer", f"malformed answer {answer!r}")
    if "error" in answer:
        err = answer["error"] if isinstance(answer["error"], dict) else {}
        kind, message = str(err.get("type", "")), str(err.get("message", ""))
        cls = ERROR_TYPES.get(kind)
        if cls is not None:
            raise cls(message)
        raise ControlError(kind or "Error", message)
    return answer.get("result")


class ControlServer:
    """Serves ``handlers`` (op name -> async function of the request) on a unix socket.

    ``on_unexpected`` is told about handler exceptions that are neither refusals
    (:class:`ClusterError`) nor :class:`ControlError`: likely bugs worth logging.
    """

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        on_unexpected: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.on_unexpected = on_unexpected
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket():
            self.path.unlink()  # a previous boot's socket (SIGKILL leaves it behind)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_LINE
        )
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def handle(self, request: object) -> dict[str, Any]:
        """Answer one decoded request."""
        try:
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise BadRequest(f"request {request!r}: expected an object with a string 'op'")
            op = request["op"]
            handler = self.handlers.get(op)
            if handler is None:
                raise BadRequest(
                    f"op={op!r}: unknown; expected one of {', '.join(sorted(self.handlers))}"
                )
            return {"result": await handler(request)}
        except (ClusterError, ControlError) as exc:
            return _error_answer(exc)
        except Exception as exc:
            if self.on_unexpected is not None:
                self.on_unexpected(str(request.get("op") if isinstance(request, dict) else ""), exc)
            return _error_answer(exc)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(_encode(_error_answer(BadRequest("request line too long"))))
                    break
                if not line:
                    break
                try:
                    request = json.loads(line)
                except ValueError as exc:
                    answer = _error_answer(BadRequest(f"not JSON: {exc}"))
                else:
                    answer = await self.handle(request)
                writer.write(_encode(answer))
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def _encode(answer: dict[str, Any]) -> bytes:
    return (json.dumps(answer, separators=(",", ":"), default=_plain) + "\n").encode()


def _plain(value: object) -> str:
    # bytes (e.g. key material for a packet analyser) travel as hex; anything else as text
    return value.hex() if isinstance(value, bytes) else str(value)


class ControlClient:
    """Client of one agent's control socket.

    :meth:`call` is synchronous (one connection per call); :meth:`acall` is the same
    from a coroutine.
    """

    def __init__(self, path: Path | str, timeout: float = 60.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and return its result, or raise its error."""
        line = json.dumps({"op": op, **args}).encode() + b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(line)
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ControlError("BadAnswer", f"agent at {self.path} closed the connection")
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise ControlError("BadAnswer", "answer too long")
        return raise_answer(json.loads(buf))

    async def acall(self, op: str, **args: Any) -> Any:
        """Like :meth:`call`, without blocking the event loop."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(self.path, limit=MAX_LINE), self.timeout
        )
        try:
            writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), self.timeout)
        finally:
            writer.close()
        if not line:
            raise ControlError("BadAnswer", f"agent at {self.path} closed the connection")
        return raise_answer(json.loads(line))


# --- the operations -------------------------------------------------------------------


class AgentOps(Protocol):
    """What the operations need from :class:`overlaysim.agent.daemon.Agent`."""

    def status(self) -> dict[str, Any]: ...
    def members(self) -> dict[str, Any]: ...
    def tables(self) -> dict[str, Any]: ...
    async def kernel(self) -> dict[str, Any]: ...
    async def run_container(self, req: ContainerRequest) -> dict[str, Any]: ...
    async def connect(self, name: str, network: str, ip: str | None = None) -> dict[str, Any]: ...
    async def disconnect(self, name: str, network: str, stay: bool = False) -> dict[str, Any]: ...
    async def leave_network(self, network: str) -> dict[str, Any]: ...
    async def remove(self, name: str) -> dict[str, Any]: ...
    async def reconcile(self) -> dict[str, Any]: ...
    async def refresh_keys(self) -> dict[str, Any]: ...
    async def crypto(self) -> dict[str, Any]: ...
    async def manager_call(self, op: str, args: dict[str, Any]) -> Any: ...
    async def ingress(self, ports: list[list[Any]]) -> dict[str, Any]: ...
    def request_stop(self, leave: bool = True) -> None: ...


def operations(agent: AgentOps, leave_grace: float = 0.0) -> dict[str, Handler]:
    """The control operations over ``agent``: each checks its request, then calls it."""

    async def status(req: dict[str, Any]) -> Any:
        return agent.status()

    async def members(req: dict[str, Any]) -> Any:
        return agent.members()

    async def tables(req: dict[str, Any]) -> Any:
        return agent.tables()

    async def kernel(req: dict[str, Any]) -> Any:
        return await agent.kernel()

    async def start(req: dict[str, Any], standalone: bool) -> Any:
        networks, ip = _networks(req), _opt_str(req, "ip")
        if ip is not None and len(networks) != 1:
            raise BadRequest("ip: only with exactly one network")
        return await agent.run_container(
            ContainerRequest(
                _str(req, "container"),
                tuple(networks),
                standalone=standalone,
                ip=ip,
                aliases=tuple(_aliases(req)),
                task=_task(req),
                task_vips=_task_vips(req),
                command=tuple(_str_list(req, "command")),
            )
        )

    async def run(req: dict[str, Any]) -> Any:
        return await start(req, True)

    async def task(req: dict[str, Any]) -> Any:
        return await start(req, False)

    async def connect(req: dict[str, Any]) -> Any:
        return await agent.connect(
            _str(req, "container"), _str(req, "network"), _opt_str(req, "ip")
        )

    async def disconnect(req: dict[str, Any]) -> Any:
        return await agent.disconnect(
            _str(req, "container"), _str(req, "network"), _opt_bool(req, "stay")
        )

    async def leave_network(req: dict[str, Any]) -> Any:
        return await agent.leave_network(_str(req, "network"))

    async def rm(req: dict[str, Any]) -> Any:
        return await agent.remove(_str(req, "container"))

    async def reconcile(req: dict[str, Any]) -> Any:
        return await agent.reconcile()

    async def keys(req: dict[str, Any]) -> Any:
        return await agent.refresh_keys()

    async def crypto(req: dict[str, Any]) -> Any:
        return await agent.crypto()

    async def manager(req: dict[str, Any]) -> Any:
        args = req.get("args") or {}
        if not isinstance(args, dict):
            raise BadRequest("args: expected an object")
        return await agent.manager_call(_str(req, "call"), args)

    async def ingress(req: dict[str, Any]) -> Any:
        ports = req.get("ports")
        if not isinstance(ports, list) or not all(
            isinstance(p, list) and len(p) >= 3 and isinstance(p[0], int) and isinstance(p[2], int)
            and isinstance(p[1], str) for p in ports
        ):  # fmt: skip
            raise BadRequest(f"ports {ports!r}: expected [[published, ingress VIP, target], ...]")
        return await agent.ingress(ports)

    async def leave(req: dict[str, Any]) -> Any:
        agent.request_stop(leave=True)
        return {"leaving": True, "grace": leave_grace}

    async def shutdown(req: dict[str, Any]) -> Any:
        stay = req.get("leave", True)
        if not isinstance(stay, bool):
            raise BadRequest("leave: expected true or false")
        agent.request_stop(leave=stay)
        return {"stopping": True, "leave": stay}

    ops = (status, members, tables, kernel, run, task, connect, disconnect, rm, reconcile, keys)
    ops += (crypto, leave_network)
    return {f.__name__: f for f in (*ops, manager, ingress, leave, shutdown)}


def _str(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key}: expected a non-empty string")
    return value


def _opt_str(req: dict[str, Any], key: str) -> str | None:
    value = req.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key}: expected a string")
    return value


def _opt_bool(req: dict[str, Any], key: str) -> bool:
    """An optional flag (absent: false)."""
    v = req.get(key, False)
    if not isinstance(v, bool):
        raise BadRequest(f"{key}: expected true or false, got {v!r}")
    return v


def _str_list(req: dict[str, Any], key: str) -> list[str]:
    value = req.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadRequest(f"{key}: expected a list of non-empty strings, got {value!r}")
    return list(value)


def _aliases(req: dict[str, Any]) -> list[str]:
    out = []
    for alias in _str_list(req, "aliases"):
        try:
            out.append(check_dns_name(alias, "alias"))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    return out


def _task(req: dict[str, Any]) -> TaskSpec | None:
    """The ``task`` object of a run/task request: ``{service, slot, mode, vip, gen}``."""
    spec = req.get("task")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise BadRequest(f"task: expected an object with service and slot, got {spec!r}")
    unknown = sorted(set(spec) - {"service", "slot", "mode", "vip", "gen", "vips"})
    if unknown:
        raise BadRequest(
            f"task field {unknown[0]!r}: unknown; expected service, slot, mode, vip, gen, vips"
        )
    mode = spec.get("mode", "vip")
    try:
        return TaskSpec(
            service=spec.get("service"),  # type: ignore[arg-type]
            slot=spec.get("slot"),  # type: ignore[arg-type]
            mode=EndpointMode(mode),
            vip=spec.get("vip"),
            gen=spec.get("gen", 1),
        )
    except ValueError as exc:
        if isinstance(mode, str) and mode not in ("vip", "dnsrr"):
            raise BadRequest(f"task mode {mode!r}: expected vip or dnsrr") from None
        raise BadRequest(f"task: {exc}") from None


def _task_vips(req: dict[str, Any]) -> dict[str, str]:
    """``task.vips``: the service's VIP on networks where it differs (the ingress one)."""
    spec = req.get("task")
    vips = spec.get("vips") if isinstance(spec, dict) else None
    if vips is None:
        return {}
    if not isinstance(vips, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in vips.items()
    ):
        raise BadRequest(f"task vips {vips!r}: expected an object of network -> VIP")
    return dict(vips)


def _networks(req: dict[str, Any]) -> list[str]:
    if "networks" not in req:
        return [_str(req, "network")]
    nets = req["networks"]
    if not isinstance(nets, list) or not nets or not all(isinstance(n, str) and n for n in nets):
        raise BadRequest("networks: expected a non-empty list of network names")
    if len(set(nets)) != len(nets):
        raise BadRequest(f"networks: {nets!r} lists a network twice")
    return list(nets)
