"""Scripts the service tests run inside hosts and tasks: a task server and a prober.

Shared by the World-driven (``test_services_world``) and the CLI-driven
(``test_services_cli``) service tests, so both check the routing mesh the same way.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def server(mark: str = "") -> str:
    """A task command's script: answer every connection on port 8080 with the task's
    hostname (``web.<slot>``, from its UTS namespace). ``mark`` goes into a comment, so
    the test can look for leftover processes by their command line."""
    return (
        f"# {mark}\n"
        "import socket\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 8080))\n"
        "s.listen(64)\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        "    c.sendall(socket.gethostname().encode())\n"
        "    c.close()\n"
    )


# Run in a host's namespace: N new TCP connections to ip:port each; who answered (or
# the error's type name when nobody did).
KNOCK = """\
import json, socket, sys
port, n, out = int(sys.argv[1]), int(sys.argv[2]), {}
for ip in sys.argv[3:]:
    seen = out[ip] = {}
    for _ in range(n):
        try:
            with socket.create_connection((ip, port), timeout=2) as s:
                who = s.recv(64).decode() or "empty"
        except OSError as exc:
            who = type(exc).__name__
        seen[who] = seen.get(who, 0) + 1
print(json.dumps(out))
"""


def knock(underlay: Any, src: str, port: int, n: int, ips: list[str]) -> dict[str, dict[str, int]]:
    """From host ``src``, ``n`` new connections to ``port`` on each of ``ips``:
    ip -> {who answered: count}. ``underlay`` is the testbed's (its ``cmd`` runs in a host)."""
    res = underlay.cmd(src, [sys.executable, "-c", KNOCK, str(port), str(n), *ips])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])
