"""The fork server stops the agents it forked that are still running when it ends (root).

The underlay stops every agent it recorded before it closes the fork server. An agent
forked but never recorded (Ctrl-C between the fork and the server's reply, or a
client that died) would otherwise run on in a namespace nobody owns any more, out of
`overlaysim clean`'s sight. Each test forks a real agent into a throw-away network
namespace (held by an ``unshare -n`` process, so no named namespace is made), lets it
answer on its control socket, ends the server without stopping the agent, and checks
that the agent is gone and left gracefully.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlaysim.agent.control import ControlClient
from overlaysim.agent.logging import read_log
from overlaysim.emu.forkserver import AGENT_MODULE, ForkServer

pytestmark = pytest.mark.emu


@pytest.fixture
def netns_holder() -> Iterator[int]:
    """The pid of a process alone in a fresh network namespace with loopback up."""
    proc = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 300"],
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/exe") != "/usr/bin/sleep":
            assert proc.poll() is None, "unshare failed"
            assert time.monotonic() < deadline, "the namespace holder did not start"
            time.sleep(0.02)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("end", ["stdin closes", "SIGTERM"])
def test_an_agent_nobody_stopped_is_stopped_with_the_server(
    netns_holder: int, tmp_path: Path, end: str
) -> None:
    sock, log = tmp_path / "f1.sock", tmp_path / "f1.jsonl"
    argv = [sys.executable, "-m", AGENT_MODULE, "--name", "f1", "--bind", "127.0.0.1"]
    argv += ["--control", str(sock), "--log", str(log), "--profile", "local"]
    argv += ["--prefix", "osimf", "--serve-manager"]
    server = ForkServer()
    agent = None
    try:
        agent = server.spawn(netns_holder, argv, tmp_path / "f1.err")
        ns = os.readlink(f"/proc/{netns_holder}/ns/net")
        deadline = time.monotonic() + 60
        while True:
            try:
                assert ControlClient(sock, timeout=5).call("status")
                break
            except OSError:
                assert _alive(agent.pid), (tmp_path / "f1.err").read_text()
                assert time.monotonic() < deadline, "the forked agent never answered"
                time.sleep(0.1)
        assert os.readlink(f"/proc/{agent.pid}/ns/net") == ns  # it entered the namespace

        if end == "stdin closes":
            server.close()
        else:
            os.kill(server.pid, signal.SIGTERM)
            server.proc.wait(timeout=10)
        assert server.proc.returncode is not None
        assert not _alive(agent.pid), "the agent outlived its fork server"
        kinds = [line["kind"] for line in read_log(log)]
        assert kinds[-1] == "stop", kinds[-5:]  # SIGTERM first: a graceful leave
    finally:
        server.close()
        if agent is not None and _alive(agent.pid):  # the failure above: leave nothing
            os.kill(agent.pid, signal.SIGKILL)
