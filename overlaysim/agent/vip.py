"""VIP load balancing in the kernel: nftables DNAT with ``numgen``, per connection.

This kernel has no IPVS (``overlaysim doctor`` says so), so a service VIP is balanced the
way kube-proxy's nftables mode balances a ClusterIP: NAT rules pick a backend with
``numgen random`` (or ``numgen inc``, round robin) for the first packet of a
connection, and conntrack sends the rest of that connection to the same backend. Like
Docker's VIPs (and unlike a ClusterIP), the rule matches the address only: any port of
the VIP reaches the same port of a task.

One table, ``ip <prefix>_vip`` (:data:`TABLE`, named in agent/names.py), lives in each container's network namespace with a NAT chain
on the ``output`` hook (connections the container opens) and one on ``prerouting``
(connections routed through the namespace, the routing mesh's case). Whenever the task
set changes both chains' rules are swapped in one ``nft -f`` transaction (agent/nftswap.py:
the chains stay, their rules are flushed and added), so a new connection sees either the
old set or the new one, never a table half-written. After a replacement, conntrack entries that were sent to a backend
no longer in the set are deleted (kube-proxy does the same for UDP), so UDP "flows" and
half-open TCP to a removed task do not keep using it.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from overlaysim.agent.names import VIP_TABLE
from overlaysim.agent.netns import ns_path
from overlaysim.agent.nftswap import nat_swap_text
from overlaysim.agent.tap import in_netns

__all__ = [
    "TABLE",
    "VipBalancer",
    "VipError",
    "current_backends",
    "flush_conntrack",
    "remove_rules",
    "render_rules",
    "replace_rules",
]

TABLE = VIP_TABLE
Mode = Literal["random", "inc"]
Backends = Mapping[str, Sequence[str]]


class VipError(RuntimeError):
    """nft refused a ruleset or a namespace is gone."""


def _v4(ip: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(ip))
    except (ValueError, TypeError):
        raise ValueError(f"{what} {ip!r}: expected an IPv4 address") from None


def _normalise(backends: Backends) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for vip, ips in backends.items():
        v = _v4(vip, "vip")
        tasks = tuple(sorted({_v4(ip, f"task IP of {v}") for ip in ips}, key=ipaddress.IPv4Address))
        if tasks:
            out[v] = tasks
    return dict(sorted(out.items(), key=lambda kv: ipaddress.IPv4Address(kv[0])))


def _random_pick(vip: str, tasks: Sequence[str]) -> list[str]:
    """Uniform choice as a cascade of rules, no set: rule ``i`` takes task ``i`` with
    probability ``1/(N-i)`` of what reaches it (so ``1/N`` overall), the last takes the rest.

    A set lookup reads the ruleset generation apart from its rule, so for the instant of a
    swap a first packet can run an old rule against its already retired map, miss, and
    leave its connection untranslated (``No route to host`` to the VIP, seen in CI and
    about 7 in 20,000 connections under constant swaps). Rules alone are published as one.
    """
    n = len(tasks)
    return [
        f"ip daddr {vip} numgen random mod {n - i} 0 dnat ip to {ip}"
        if i < n - 1
        else f"ip daddr {vip} dnat ip to {ip}"
        for i, ip in enumerate(tasks)
    ]


def render_rules(backends: Backends, *, mode: Mode = "random") -> str:
    """The ``nft -f`` text swapping the table to ``vip -> task IPs`` (pure).

    VIPs with no task get no rule: a service with no live task has no name either.
    ``random`` (what the agent uses) is a cascade of plain rules, atomic under swaps;
    ``inc`` (strict rotation) needs one counter shared by the tasks, so it is a
    ``numgen inc`` map, whose lookup can miss for the instant of a swap.
    """
    if mode not in ("random", "inc"):
        raise ValueError(f"mode {mode!r}: expected random or inc")
    rules = []
    for vip, tasks in _normalise(backends).items():
        if mode == "random":
            rules.extend(_random_pick(vip, tasks))
            continue
        pick = ", ".join(f"{i} : {ip}" for i, ip in enumerate(tasks))
        rules.append(f"ip daddr {vip} dnat ip to numgen inc mod {len(tasks)} map {{ {pick} }}")
    return nat_swap_text(TABLE, (("out", "output"), ("pre", "prerouting")), rules)


def _nft(netns: str | None, args: Sequence[str], stdin: str | None = None) -> str:
    argv = ["nft", *args]
    if netns is not None:
        argv = ["nsenter", f"--net={ns_path(netns)}", *argv]
    try:
        res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VipError(f"nft in {netns or 'this namespace'}: {exc}") from None
    if res.returncode != 0:
        raise VipError(f"nft {' '.join(args)} in {netns or 'this namespace'}: {res.stderr.strip()}")
    return res.stdout


def replace_rules(netns: str | None, backends: Backends, *, mode: Mode = "random") -> None:
    """Atomically replace the VIP table of ``netns`` (a name or path)."""
    _nft(netns, ["-f", "-"], render_rules(backends, mode=mode))


def remove_rules(netns: str | None) -> bool:
    """Delete the VIP table; False if it was not there."""
    try:
        _nft(netns, ["delete", "table", "ip", TABLE])
    except VipError as exc:
        if "No such file" in str(exc):
            return False
        raise
    return True


def current_backends(netns: str | None) -> dict[str, tuple[str, ...]]:
    """What the kernel holds: ``vip -> task IPs`` read back from the output chain."""
    try:
        out = _nft(netns, ["-j", "list", "chain", "ip", TABLE, "out"])
    except VipError as exc:
        if "No such file" in str(exc):
            return {}
        raise
    found: dict[str, list[str]] = {}
    for item in json.loads(out).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        vip, tasks = None, []
        for stmt in rule.get("expr", []):
            if "match" in stmt and stmt["match"].get("left", {}).get("payload"):
                vip = stmt["match"].get("right")
            elif "dnat" in stmt:
                addr = stmt["dnat"].get("addr", {})
                if isinstance(addr, str):  # one rule of a random cascade
                    tasks = [addr]
                else:  # a numgen map
                    data = addr.get("map", {}).get("data", {}).get("set", [])
                    tasks = [pair[1] for pair in sorted(data, key=lambda p: p[0])]
        if vip is not None:
            found.setdefault(vip, []).extend(tasks)
    return {vip: tuple(tasks) for vip, tasks in found.items()}


def flush_conntrack(netns: str | None, vips: Sequence[str], keep: Backends) -> int:
    """Delete conntrack entries from a VIP to a task not in ``keep[vip]``; the count.

    Runs pyroute2's conntrack netlink calls in a short-lived thread that entered
    ``netns`` (a name or path; None: here), not in a forked child, and asks the kernel
    for the VIPs' entries only (a filtered dump, Linux 5.8+). A container's table holds
    an entry per DNS query and probe too: pyroute2 decodes about 2,000 entries a
    second, so dumping them all took 0.4-1 s per container in services.yaml (3,000
    entries: 1.5 s, filtered: 13 ms), once per local container after every task
    removal, on the data-plane worker the host's own detach waits on.
    """
    keep_n = {v: set(ips) for v, ips in _normalise(keep).items()}
    wanted = set(_normalise({v: ["0.0.0.0"] for v in vips}))
    path = None if netns is None else ns_path(netns)
    return int(in_netns(path, lambda: _flush_here(wanted, keep_n)))


def _vip_entries(ct: Conntrack, vip: str) -> list[Any]:
    """The entries whose original destination is ``vip``: filtered in the kernel, or
    a whole dump where the kernel cannot filter (the caller checks every entry)."""
    try:
        return list(ct.dump_entries(tuple_orig=NFCTAttrTuple(daddr=vip)))
    except NetlinkError:
        return list(ct.dump_entries())


def _flush_here(vips: set[str], keep: dict[str, set[str]]) -> int:
    n = 0
    ct = Conntrack()
    try:
        for vip in sorted(vips):
            for entry in _vip_entries(ct, vip):
                orig_dst, reply_src = entry.tuple_orig.daddr, entry.tuple_reply.saddr
                if (
                    orig_dst == vip
                    and reply_src != orig_dst
                    and reply_src not in keep.get(orig_dst, ())
                ):
                    try:
                        ct.entry("del", tuple_orig=entry.tuple_orig)
                        n += 1
                    except Exception:  # gone meanwhile
                        pass
    finally:
        ct.close()
    return n


@dataclass
class VipBalancer:
    """Keeps the VIP tables of one host's containers equal to what the directory says."""

    mode: Mode = "random"
    #: container -> (netns, last applied vip -> tasks)
    applied: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = field(default_factory=dict)
    #: Rule replacements done, conntrack entries flushed, failures.
    replaced: int = 0
    flushed: int = 0
    errors: int = 0

    def sync(self, container: str, netns: str, backends: Backends) -> bool:
        """Apply ``backends`` to ``container`` if they changed; True if rules were replaced."""
        want = _normalise(backends)
        _, have = self.applied.get(container, (netns, None))
        if have == want:
            return False
        if have is None and not want:
            # A new container with no VIP to balance: no table is what an empty one
            # does (no rule, accept), without an ``nft`` process per container. The
            # first VIP creates it (``render_rules`` creates what is absent).
            self.applied[container] = (netns, want)
            return False
        try:
            replace_rules(netns, want, mode=self.mode)
        except VipError:
            self.errors += 1
            raise
        self.replaced += 1
        self.applied[container] = (netns, want)
        gone = [v for v, ips in (have or {}).items() if set(ips) - set(want.get(v, ()))]
        if gone:
            try:
                self.flushed += flush_conntrack(netns, gone, want)
            except Exception:  # the rules are right; stale flows just age out
                self.errors += 1
        return True

    def forget(self, container: str) -> None:
        """The container is gone (its namespace, and the table in it, went with it)."""
        self.applied.pop(container, None)
