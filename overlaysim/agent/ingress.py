"""The routing mesh on one host: a published port on the underlay address reaches a task.

``overlaysim service create --publish P:T`` makes port ``P`` answer on every host's
underlay address, wherever the tasks run, as Docker's routing mesh does. Per host:

* an *ingress sandbox*: a container of the agent on the ``ingress`` overlay network
  (so it has the service's ingress VIP and its tasks' ingress addresses in its tables,
  and the agent keeps a VIP table balancing one over the other in it, as for any
  container), joined to the host's own namespace by a veth pair on a link-local /30;
* in the host namespace, table ``ip <prefix>_ingress``: new connections to
  ``<underlay address>:P`` (from outside: ``prerouting``; from the host itself:
  ``output``) are DNATed to ``<ingress VIP>:T`` and routed into the sandbox;
* in the sandbox, the VIP table DNATs the VIP to a task's ingress address (per
  connection, ``numgen random``, exactly like a service VIP), and table ``ip
  <prefix>_ingress`` masquerades what it forwards onto the overlay, so the task
  answers the sandbox and conntrack undoes both translations on the way back.

Everything here is blocking (``ip``, ``nft``, sysctls) and runs on the agent's
data-plane worker thread. The host table and the veth pair are removed when the last
published port goes and when the agent stops; the sandbox is an ordinary container
of the agent (its namespace holds the other veth end).

Forwarding: the mesh needs ``net.ipv4.ip_forward=1`` in the host namespace. The value
it had before is kept in the host table itself, as the table's comment
(``ip_forward=0``), written before forwarding is turned on; :func:`remove_host_side`
puts it back. So a killed agent's next boot, which finds the old table, restores the
host's forwarding too (the data lives with the leftover it describes, no file).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from overlaysim.agent.netns import ns_path
from overlaysim.agent.nftswap import nat_swap_text

__all__ = [
    "FORWARD_NOTE",
    "HOST_ADDR",
    "SANDBOX_ADDR",
    "forward_before",
    "forwarding",
    "IngressError",
    "plumb",
    "remove_host_side",
    "render_host_rules",
    "replace_host_rules",
]

#: The /30 between the host namespace and its ingress sandbox (link-local, never routed).
HOST_ADDR = "169.254.251.1"
SANDBOX_ADDR = "169.254.251.2"
SANDBOX_LINK = "ig0"
#: The host table's comment: ``ip_forward=<value before the mesh>``.
FORWARD_NOTE = "ip_forward="


class IngressError(RuntimeError):
    """A routing-mesh kernel operation failed."""


def host_link(prefix: str) -> str:
    """The host end of the veth pair (carries the project prefix, at most 15 chars)."""
    return f"{prefix}-ig"


def table(prefix: str) -> str:
    return f"{prefix}_ingress"


def _run(argv: Sequence[str], stdin: str | None = None, ok_if: str = "") -> str:
    try:
        res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IngressError(f"{' '.join(argv[:4])}: {exc}") from None
    if res.returncode != 0 and not (ok_if and ok_if in res.stderr):
        raise IngressError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def _in(netns: str, argv: Sequence[str]) -> list[str]:
    return ["nsenter", f"--net={ns_path(netns)}", *argv]


FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def forwarding() -> str:
    """The host namespace's ``net.ipv4.ip_forward`` now (``"0"`` or ``"1"``)."""
    return FORWARD.read_text().strip()


def _set_forwarding(value: str) -> None:
    FORWARD.write_text(f"{value}\n")


def plumb(prefix: str, sandbox_netns: str, ingress_subnet: str) -> None:
    """Join the host namespace and the ingress sandbox (idempotent)."""
    subnet = str(ipaddress.ip_network(ingress_subnet, strict=False))
    link = host_link(prefix)
    _run(["ip", "link", "del", link], ok_if="Cannot find device")  # a leftover: start clean
    _run(["ip", "link", "add", link, "type", "veth", "peer", "name", SANDBOX_LINK,
          "netns", ns_path(sandbox_netns)])  # fmt: skip
    _run(["ip", "addr", "add", f"{HOST_ADDR}/30", "dev", link])
    _run(["ip", "link", "set", link, "up"])
    _run(["ip", "route", "replace", subnet, "via", SANDBOX_ADDR, "dev", link])
    _set_forwarding("1")  # the value before is already in the host table's comment
    sb = sandbox_netns
    _run(_in(sb, ["ip", "addr", "add", f"{SANDBOX_ADDR}/30", "dev", SANDBOX_LINK]))
    _run(_in(sb, ["ip", "link", "set", SANDBOX_LINK, "up"]))
    _run(_in(sb, ["ip", "route", "replace", "default", "via", HOST_ADDR]))
    _run(_in(sb, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
    t = table(prefix)
    masq = (
        f"table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n"
        f"\tchain post {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n"
        f'\t\tiifname "{SANDBOX_LINK}" oifname != "{SANDBOX_LINK}" masquerade\n\t}}\n}}\n'
    )
    _run(_in(sb, ["nft", "-f", "-"]), stdin=masq)


def render_host_rules(
    prefix: str, underlay_ip: str, ports: Sequence[Sequence[object]], forward_before: str = "0"
) -> str:
    """The ``nft -f`` text swapping the host table's rules to ``[[P, vip, T, service], ...]``;
    ``forward_before`` is the host's ``ip_forward`` before the mesh (the table's comment,
    written when the table is created and kept by later swaps)."""
    ipaddress.IPv4Address(underlay_ip)
    if forward_before not in ("0", "1"):
        raise ValueError(f"forward_before={forward_before!r}: expected '0' or '1'")
    rules = []
    for p, vip, t, *_ in sorted(ports, key=lambda x: int(x[0])):  # type: ignore[call-overload]
        ipaddress.IPv4Address(str(vip))
        # one rule per protocol, no anonymous set: a set lookup can miss for the
        # instant of a swap (agent/vip.py, _random_pick)
        rules.extend(
            f"ip daddr {underlay_ip} meta l4proto {proto} th dport {int(p)} "
            f"dnat ip to {vip}:{int(t)}"
            for proto in ("tcp", "udp")
        )
    chains = (("pre", "prerouting"), ("out", "output"))
    return nat_swap_text(table(prefix), chains, rules, comment=f"{FORWARD_NOTE}{forward_before}")


def replace_host_rules(text: str) -> None:
    """Replace the host's ingress table in one transaction."""
    _run(["nft", "-f", "-"], stdin=text)


def forward_before(prefix: str) -> str | None:
    """The ``ip_forward`` value the host table recorded (None: no table, or no note)."""
    text = _run(["nft", "list", "table", "ip", table(prefix)], ok_if="No such file")
    found = re.search(rf'comment "{FORWARD_NOTE}([01])"', text)
    return found.group(1) if found else None


def remove_host_side(prefix: str) -> str | None:
    """Delete the host's ingress table and veth (the sandbox end goes with it), and put
    back the ``ip_forward`` value the table recorded; returns that value (None: there
    was no table)."""
    before = forward_before(prefix)
    _run(["nft", "delete", "table", "ip", table(prefix)], ok_if="No such file")
    _run(["ip", "link", "del", host_link(prefix)], ok_if="Cannot find device")
    if before is not None:
        _set_forwarding(before)
    return before
