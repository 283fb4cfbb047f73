"""Start agents by forking a warm interpreter instead of exec'ing a fresh one.

Starting ``overlayd`` with ``python -m`` costs each host a full interpreter start and
about a CPU-second of imports (asyncio, pyroute2, the protocol core) before the agent
does anything; a hundred hosts on two cores spend most of their set-up there. The fork
server is one process that pays for those imports once and then, per request, forks a
child that enters the host's network and mount namespaces (what ``mnexec -a`` does),
starts its own session (``mnexec -d``), points its standard streams where asked and
runs the agent's ``main``. Every agent is still its own process with its own pid:
SIGKILL is still a crash, and nothing is shared once the child runs.

Two sides, one module:

* :func:`serve` is the server (``python -m overlaysim.emu.forkserver``). It reads one
  JSON request a line on stdin and answers on stdout: ``{"id", "pid"}`` or
  ``{"id", "error"}`` for a spawn, ``{"exit": pid, "status": code}`` when a child ends
  (it is their parent, so it reaps them). It exits when stdin closes. The underlay stops
  every agent it knows of before that; a child still running then is one nobody
  recorded (a Ctrl-C between the fork and the reply, or a client that died), so the
  server stops it itself: SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`.
* :class:`ForkServer` is the client: it starts the server, sends requests and hands back
  :class:`Forked` handles that answer ``poll``/``wait``/``returncode`` like a
  :class:`subprocess.Popen`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: ``setns`` flags: the namespaces a Mininet host owns that an agent must enter.
_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
#: The only program the server runs; anything else is refused.
AGENT_MODULE = "overlaysim.agent.daemon"
#: Seconds a child left running at the server's end gets between SIGTERM and SIGKILL
#: (an agent's graceful leave takes about one second).
STOP_GRACE_S = 3.0


class ForkServerError(RuntimeError):
    """The fork server could not start a process; the message says why."""


# --- client side --------------------------------------------------------------------


class Forked:
    """A process the fork server started: a small :class:`subprocess.Popen` look-alike."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self._server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._server.wait(self.pid, timeout)
        return self.returncode


class ForkServer:
    """Client of one fork server process (started here, in the root namespace)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal must not reach it
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in = self.proc.stdin
        self._cond = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._exits: dict[int, int] = {}
        self._next = 0
        self._dead = False
        self._reader = threading.Thread(target=self._read, name="forkserver", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def spawn(
        self, ns_pid: int, argv: Sequence[str], stderr: Path, timeout: float = 60.0
    ) -> Forked:
        """Fork an agent into the namespaces of process ``ns_pid`` (a host's shell).

        ``argv`` is the agent's command line as ``python -m overlaysim.agent.daemon ...``
        would take it; stdin and stdout go to ``/dev/null``, stderr is appended to
        ``stderr``.
        """
        argv = list(argv)
        if argv[1:3] != ["-m", AGENT_MODULE]:
            raise ForkServerError(f"the fork server only starts {AGENT_MODULE}, not {argv[:3]}")
        with self._cond:
            self._next += 1
            rid = self._next
        line = {"id": rid, "ns_pid": ns_pid, "args": argv[3:], "stderr": str(stderr)}
        try:
            with self._cond:  # one writer at a time: requests are whole lines
                self._in.write(json.dumps(line).encode() + b"\n")
                self._in.flush()
        except OSError as exc:
            raise ForkServerError(f"fork server is gone: {exc}") from None
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self._replies or self._dead, timeout):
                raise ForkServerError(f"fork server did not answer within {timeout:.0f} s")
            if rid not in self._replies:
                raise ForkServerError("fork server exited")
            reply = self._replies.pop(rid)
        if "error" in reply:
            raise ForkServerError(reply["error"])
        return Forked(self, int(reply["pid"]))

    def status(self, pid: int) -> int | None:
        with self._cond:
            return self._exits.get(pid)

    def wait(self, pid: int, timeout: float | None) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: pid in self._exits or self._dead, timeout):
                raise subprocess.TimeoutExpired(f"forked pid {pid}", timeout or 0.0)
            if pid in self._exits:
                return self._exits[pid]
        # The server is gone, so nobody reports this child any more: poll it directly.
        return _wait_orphan(pid, timeout)

    def close(self, timeout: float = STOP_GRACE_S + 5.0) -> None:
        """Stop the server. Children the underlay stopped are gone already; any other
        still running is stopped by the server on its way out (see :func:`serve`)."""
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            with self._cond:
                if "exit" in msg:
                    self._exits[int(msg["exit"])] = int(msg["status"])
                else:
                    self._replies[int(msg["id"])] = msg
                self._cond.notify_all()
        with self._cond:
            self._dead = True
            self._cond.notify_all()


def _wait_orphan(pid: int, timeout: float | None) -> int:
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and not _zombie(pid):
        if deadline is not None and time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(f"forked pid {pid}", timeout or 0.0)
        time.sleep(0.05)
    return -signal.SIGKILL  # unknown: its parent is gone, so nobody kept the status


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# --- server side ----------------------------------------------------------------------


def _setns(path: str, nstype: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _child(req: dict[str, Any], keep: Sequence[int]) -> None:
    """In the forked child: become the agent, never return."""
    code = 1
    try:
        for fd in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        ns_pid = int(req["ns_pid"])
        _setns(f"/proc/{ns_pid}/ns/net", _CLONE_NEWNET)
        _setns(f"/proc/{ns_pid}/ns/mnt", _CLONE_NEWNS)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        os.close(null)
        os.close(err)
        sys.argv = ["overlayd", *req["args"]]
        from overlaysim.agent.daemon import main

        code = main(list(req["args"]))
    except SystemExit as exc:  # argparse errors end here
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - the child must end in _exit, whatever happens
        with contextlib.suppress(Exception):
            print(f"overlayd (forked): {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Run the fork server until stdin closes (see the module docstring)."""
    import gc

    import overlaysim.agent.daemon  # noqa: F401 - the point: pay for the imports once

    # Move what the imports made out of the collector's sight: children would otherwise
    # touch (and so copy) every shared page on their first collections.
    gc.freeze()

    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    out = sys.stdout.buffer
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client decides when we stop
    stop = []  # SIGTERM/SIGHUP (e.g. from `overlaysim clean`): stop as if stdin closed
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.append(True))
    sel = selectors.DefaultSelector()
    stdin = sys.stdin.buffer
    sel.register(stdin.fileno(), selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    buf = b""

    def say(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg).encode() + b"\n")
        out.flush()

    live: set[int] = set()  # forked and not reaped: their pids cannot be reused yet

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            live.discard(pid)
            with contextlib.suppress(OSError):  # the client may be gone
                say({"exit": pid, "status": os.waitstatus_to_exitcode(status)})

    open_ = True
    while open_ and not stop:
        for key, _ in sel.select():
            if key.fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                reap()
                continue
            chunk = os.read(key.fd, 65536)
            if not chunk:
                open_ = False
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    req = json.loads(line)
                    rid = req["id"]
                except (ValueError, KeyError, TypeError):
                    continue
                try:
                    pid = os.fork()
                except OSError as exc:
                    with contextlib.suppress(OSError):
                        say({"id": rid, "error": f"fork: {exc}"})
                    continue
                if pid == 0:
                    _child(req, (wake_r, wake_w))
                live.add(pid)
                with contextlib.suppress(OSError):
                    say({"id": rid, "pid": pid})
        reap()
    _stop_children(live, reap)


def _stop_children(live: set[int], reap: Callable[[], None]) -> None:
    """SIGTERM every child still running, SIGKILL what is left after the grace."""
    import time

    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 2.0)):
        for pid in list(live):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while live and time.monotonic() < deadline:
            time.sleep(0.02)
            reap()
        if not live:
            return


if __name__ == "__main__":
    serve()
