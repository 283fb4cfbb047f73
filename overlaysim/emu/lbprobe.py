"""The load-balancing probe (``measure.lb_probe``): new TCP connections through a VIP.

After the timeline, every live task of the service starts a small responder in its own
network and UTS namespaces (the way the agent starts a task command,
:func:`~overlaysim.agent.uts.exec_argv`): it answers each connection on the probe port
with its hostname (``<service>.<slot>``) and closes it. The client container then opens
N new TCP connections to the service's VIP, one after the other, so each is a new
conntrack flow that the client's nftables VIP table balances on its own. The answers
become ``lb_probe.csv`` rows; ``metrics/lbspread.py`` counts them. The responders are
killed before returning (and the underlay stops any left in every case).
"""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from overlaysim.agent.uts import exec_argv
from overlaysim.emu.net import Underlay
from overlaysim.emu.probes import Endpoint, in_container

#: Seconds a responder has to say it listens.
READY_S = 10.0
#: Seconds one probe connection may take (connect and answer).
CONNECT_S = 2.0

# In a task: listen on the port, then answer every connection with the hostname.
RESPONDER = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1])))\n"
    "s.listen(128)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    try:\n"
    "        c.sendall(socket.gethostname().encode())\n"
    "    except OSError:\n"
    "        pass\n"
    "    c.close()\n"
)

# In the client: N new connections to ip:port, one at a time; who answered each.
KNOCK = (
    "import json, socket, sys\n"
    "ip, port, n, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])\n"
    "out = []\n"
    "for _ in range(n):\n"
    "    try:\n"
    "        with socket.create_connection((ip, port), timeout=wait) as c:\n"
    "            out.append(c.recv(64).decode(errors='replace'))\n"
    "    except OSError:\n"
    "        out.append('')\n"
    "print(json.dumps(out))\n"
)


def _start(underlay: Underlay, task: Endpoint, port: int) -> subprocess.Popen[str]:
    argv = exec_argv(task.netns, task.netns, [sys.executable, "-c", RESPONDER, str(port)])
    return underlay.popen(
        task.host,
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _ready(proc: subprocess.Popen[str], deadline: float) -> bool:
    """Whether the responder printed ``ready`` before ``deadline`` (monotonic)."""
    assert proc.stdout is not None
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
        return False
    return proc.stdout.readline().strip() == "ready"


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


def lb_probe(
    underlay: Underlay,
    *,
    service: str,
    vip: str,
    client: Endpoint,
    tasks: Sequence[Endpoint],
    connections: int,
    port: int,
    t: float,
) -> tuple[list[dict[str, Any]], str]:
    """``lb_probe.csv`` rows and a reason ("" when the probe ran).

    ``tasks`` are the service's live tasks (their names are what they answer); a task
    whose responder does not start is still listed, so the connections it misses show.
    """
    base = {"t": t, "service": service, "client": client.name, "vip": vip, "port": port}
    rows: list[dict[str, Any]] = [
        {**base, "kind": "task", "seq": i, "answer": task.name}
        for i, task in enumerate(sorted(tasks, key=lambda e: e.name))
    ]
    procs: list[subprocess.Popen[str]] = []
    try:
        procs = [_start(underlay, task, port) for task in tasks]
        deadline = time.monotonic() + READY_S
        silent = [
            task.name for task, p in zip(tasks, procs, strict=True) if not _ready(p, deadline)
        ]
        argv = [sys.executable, "-c", KNOCK, vip, str(port), str(connections), f"{CONNECT_S:g}"]
        out = in_container(underlay, client, argv, timeout=connections * (CONNECT_S + 1) + 30)
        try:
            answers = json.loads(out.stdout) if out.returncode == 0 else None
        except ValueError:
            answers = None
    finally:
        for p in procs:
            _stop(p)
    if not isinstance(answers, list):
        return [], f"the probe client failed: {out.stderr.strip()[-200:] or out.returncode}"
    rows += [
        {**base, "kind": "connection", "seq": i, "answer": str(a)} for i, a in enumerate(answers)
    ]
    reason = f"no responder started in {', '.join(silent)}" if silent else ""
    return rows, reason
