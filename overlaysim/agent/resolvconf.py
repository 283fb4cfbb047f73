"""Per-container ``resolv.conf``: the embedded DNS server, the host's search domains.

``ip netns exec NETNS`` bind-mounts every file of ``/etc/netns/NETNS/`` over the same
name in ``/etc`` for the command it runs, so writing ``/etc/netns/NETNS/resolv.conf``
makes every ordinary resolver in the container (glibc, musl, dnspython) ask
127.0.0.11. Like Docker, the host's ``search`` and ``options`` lines are kept (so short
names get the same domains as on the host), the host's nameservers are not (the embedded
server forwards to them itself), and ``ndots:0`` makes a dotted service-task name such as
``web.1`` be tried as it is first.
"""

from __future__ import annotations

import os
from pathlib import Path

from overlaysim.agent.dns import DNS_ADDR

__all__ = ["NETNS_ETC", "remove_resolv_conf", "render_resolv_conf", "write_resolv_conf"]

NETNS_ETC = Path("/etc/netns")


def render_resolv_conf(host_text: str, nameserver: str = DNS_ADDR) -> str:
    """A container's resolv.conf derived from the host's."""
    search: list[str] = []
    options: list[str] = []
    for line in host_text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith(("#", ";")):
            continue
        if parts[0] in ("search", "domain"):
            search = parts[1:]  # the last one wins, as in the resolver
        elif parts[0] == "options":
            options += [o for o in parts[1:] if not o.startswith("ndots:")]
    lines = [
        "# written by overlaysim: the embedded DNS server of this container",
        f"nameserver {nameserver}",
    ]
    if search:
        lines.append("search " + " ".join(search))
    lines.append("options " + " ".join(["ndots:0", *dict.fromkeys(options)]))
    return "\n".join(lines) + "\n"


def write_resolv_conf(
    netns: str, *, host: Path = Path("/etc/resolv.conf"), root: Path = NETNS_ETC
) -> Path:
    """Write ``root/NETNS/resolv.conf`` atomically and return its path."""
    if not netns or "/" in netns or netns in (".", ".."):
        raise ValueError(f"netns {netns!r}: expected a namespace name")
    try:
        host_text = host.read_text()
    except OSError:
        host_text = ""
    d = root / netns
    d.mkdir(parents=True, exist_ok=True)
    path = d / "resolv.conf"
    tmp = d / ".resolv.conf.tmp"
    tmp.write_text(render_resolv_conf(host_text))
    os.replace(tmp, path)
    return path


def remove_resolv_conf(netns: str, *, root: Path = NETNS_ETC) -> bool:
    """Delete the container's resolv.conf, and its directory if nothing else is in it."""
    if not netns or "/" in netns or netns in (".", ".."):
        return False
    d = root / netns
    path = d / "resolv.conf"
    existed = path.exists()
    path.unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:
        pass  # absent, or holds files that are not ours
    return existed
