"""Data-plane measurements on a live testbed: reachability pings and iperf3 throughput.

Containers are named network namespaces (``<prefix>-<host>-<container>``, from the
agent's ``task``/``run`` answer). The agent creates them inside its Mininet host, whose
mount namespace is private (``mnexec -n``), so the name is only bound there: every
command enters the host first (``Underlay.cmd``/``popen``, i.e. ``mnexec -a``) and
then the container (``ip netns exec``). Traffic only ever goes between namespaces this
run created.

* :func:`reachability` pings, for every ordered container pair (a deterministic sample
  of at most ``max_pairs``), the destination's address on each network the two share;
  pairs that share no network must be unreachable, so every address of the destination
  is pinged and any answer counts as reachable. A ping is retried (``attempts``) so
  that an impairment's random loss is not read as a missing route.
* :func:`throughput` runs iperf3 between two containers over the overlay and between
  their hosts over the underlay, one after the other in the same run, and reports
  both rates and their ratio. Every iperf3 started here is killed before returning.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from overlaysim.emu.net import Underlay
from overlaysim.scenario.sites import site_pair, sites_of

#: At most this many ordered container pairs are pinged.
MAX_PROBE_PAIRS = 400
IPERF_PORT = 5201


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A container as the probes see it: where it runs, its namespace, its addresses."""

    name: str
    host: str
    #: Named network namespace of the container ("" when it does not exist now).
    netns: str
    #: Network name -> the container's IPv4 address on it.
    ips: dict[str, str] = field(default_factory=dict)
    #: Whether the container's host runs now (ground truth).
    up: bool = True


def pairs(endpoints: Sequence[Endpoint], max_pairs: int, seed: int) -> list[tuple[str, str]]:
    """Ordered pairs of distinct container names; a seeded sample if there are too many."""
    names = sorted(e.name for e in endpoints)
    out = [(a, b) for a in names for b in names if a != b]
    if len(out) > max_pairs:
        out = sorted(random.Random(f"probes:{seed}").sample(out, max_pairs))
    return out


def in_container(
    underlay: Underlay, src: Endpoint, argv: Sequence[str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside container ``src`` (through its host's mount namespace)."""
    return underlay.cmd(src.host, ["ip", "netns", "exec", src.netns, *argv], timeout=timeout)


def ping(underlay: Underlay, src: Endpoint, ip: str, attempts: int = 3, wait_s: int = 1) -> bool:
    """Whether ``ip`` answers one ICMP echo from container ``src`` (up to ``attempts`` tries)."""
    return ping_rtt(underlay, src, ip, attempts, wait_s) is not None


def ping_rtt(
    underlay: Underlay, src: Endpoint, ip: str, attempts: int = 3, wait_s: int = 1
) -> float | None:
    """Round-trip time in ms from ``src`` to ``ip``: the lower of two echoes 0.2 s apart
    (None: neither answered).

    Timed in user space (``-U``): the kernel's receive timestamp is taken before the
    NFQUEUE delay line holds a packet, so it would miss half of the delay. The lower of
    two echoes, because a user-space clock also counts the pinger's own wake-up lag,
    which on a busy machine is sometimes milliseconds.
    """
    if not src.netns:
        return None
    argv = ["ping", "-U", "-n", "-q", "-c2", "-i0.2", f"-W{wait_s}", ip]
    for _ in range(attempts):
        try:
            out = in_container(underlay, src, argv, timeout=wait_s + 10)
        except subprocess.TimeoutExpired:
            continue
        if out.returncode == 0:
            return _rtt(out.stdout)
        if out.returncode != 1:  # 2: no route or no such namespace; retrying cannot help
            return None
    return None


def _rtt(stdout: str) -> float:
    """The min of ``rtt min/avg/max/mdev = 0.1/0.2/0.3/0.0 ms``."""
    for line in stdout.splitlines():
        if "min/avg/max" in line:
            return float(line.split("=")[1].split("/")[0])
    return float("nan")


def reachability(
    underlay: Underlay,
    endpoints: Sequence[Endpoint],
    t: float,
    *,
    max_pairs: int = MAX_PROBE_PAIRS,
    seed: int = 0,
    attempts: int = 3,
    workers: int = 16,
) -> list[dict[str, Any]]:
    """Rows of ``reachability.csv`` measured now (``t`` is the scenario time to record).

    ``expected`` follows the simulator: a pair on a shared network is expected to
    reach when both hosts run; a pair with no shared network never is. ``rtt_ms`` is
    the answering echo's round trip; ``sites`` names the two hosts' sites.
    """
    by_name = {e.name: e for e in endpoints}
    site = sites_of(underlay.topology)
    jobs: list[tuple[dict[str, Any], Endpoint, list[str]]] = []
    for a, b in pairs(endpoints, max_pairs, seed):
        src, dst = by_name[a], by_name[b]
        shared = sorted(set(src.ips) & set(dst.ips))
        sites = site_pair(site, src.host, dst.host)
        if not shared:
            row = {"t": t, "src": a, "dst": b, "network": "", "expected": False, "sites": sites}
            jobs.append((row, src, sorted(set(dst.ips.values()))))
            continue
        for net in shared:
            up = src.up and dst.up
            row = {"t": t, "src": a, "dst": b, "network": net, "expected": up, "sites": sites}
            jobs.append((row, src, [dst.ips[net]]))

    def run(job: tuple[dict[str, Any], Endpoint, list[str]]) -> dict[str, Any]:
        row, src, ips = job
        tries = attempts if row["expected"] else 1  # a stray answer needs no retry to count
        for ip in ips:
            rtt = ping_rtt(underlay, src, ip, tries)
            if rtt is not None:
                return {**row, "reachable": True, "rtt_ms": rtt}
        return {**row, "reachable": False, "rtt_ms": None}

    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        return list(pool.map(run, jobs))


# --- throughput ------------------------------------------------------------------------


class _Iperf:
    """One iperf3 server process; always killed on exit."""

    def __init__(self, proc: subprocess.Popen[Any]) -> None:
        self.proc = proc

    def __enter__(self) -> _Iperf:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def _client(
    run: Any, server_ip: str, seconds: float, retries: int = 20
) -> tuple[float | None, str]:
    """Run an iperf3 client with ``run(argv, timeout)``; (bits per second, error)."""
    argv = ["iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J"]
    error = "no result"
    for _ in range(retries):
        out = run(argv, seconds + 20)
        try:
            data = json.loads(out.stdout or "{}")
        except ValueError:
            data = {}
        if "error" in data or out.returncode != 0 or not data:
            error = str(data.get("error") or out.stderr.strip() or f"exit {out.returncode}")
            if "connect" in error or "refused" in error:  # the server is not listening yet
                time.sleep(0.2)
                continue
            return None, error
        try:
            return float(data["end"]["sum_received"]["bits_per_second"]), ""
        except (KeyError, TypeError, ValueError):
            return None, "iperf3 output without end.sum_received"
    return None, error


def overlay_bps(
    underlay: Underlay, src: Endpoint, dst: Endpoint, dst_ip: str, seconds: float
) -> tuple[float | None, str]:
    """TCP throughput from container ``src`` to ``dst_ip`` (the server runs in ``dst``)."""
    serve = ["iperf3", "-s", "-1", "-B", dst_ip, "-p", str(IPERF_PORT)]
    server = underlay.popen(
        dst.host,
        ["ip", "netns", "exec", dst.netns, *serve],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with _Iperf(server):
        return _client(
            lambda argv, timeout: in_container(underlay, src, argv, timeout), dst_ip, seconds
        )


def underlay_bps(
    underlay: Underlay, src_host: str, dst_host: str, seconds: float
) -> tuple[float | None, str]:
    """TCP throughput from ``src_host`` to ``dst_host`` over the underlay."""
    dst_ip = underlay.underlay_ip(dst_host)
    server = underlay.popen(
        dst_host,
        ["iperf3", "-s", "-1", "-B", dst_ip, "-p", str(IPERF_PORT)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with _Iperf(server):
        return _client(
            lambda argv, timeout: underlay.cmd(src_host, argv, timeout=timeout), dst_ip, seconds
        )


def throughput(
    underlay: Underlay, src: Endpoint | None, dst: Endpoint | None, seconds: float = 5.0
) -> dict[str, Any]:
    """One ``throughput.csv`` row for the pair; ``reason`` says why a value is missing."""
    row: dict[str, Any] = {
        "src": src.name if src else "",
        "dst": dst.name if dst else "",
        "proto": "tcp",
        "overlay_bps": None,
        "underlay_bps": None,
        "ratio": None,
        "reason": "",
    }
    if src is None or dst is None:
        row["reason"] = "container does not exist at the end of the run"
        return row
    shared = sorted(set(src.ips) & set(dst.ips))
    if not shared:
        row["reason"] = "the containers share no network"
        return row
    if not (src.up and dst.up and src.netns and dst.netns):
        row["reason"] = "a container's host is down at the end of the run"
        return row
    reasons = []
    ov, err = overlay_bps(underlay, src, dst, dst.ips[shared[0]], seconds)
    if ov is None:
        reasons.append(f"overlay: {err}")
    if src.host == dst.host:
        un, err = None, "both containers are on one host"
    else:
        un, err = underlay_bps(underlay, src.host, dst.host, seconds)
    if un is None:
        reasons.append(f"underlay: {err}")
    row["overlay_bps"], row["underlay_bps"] = ov, un
    if ov is not None and un:
        row["ratio"] = ov / un
    row["reason"] = "; ".join(reasons)
    return row


#: ``Ip:`` counters of /proc/net/snmp read by :func:`ip_fragment_counters`.
IP_FRAGMENT_COUNTERS = ("FragCreates", "FragOKs", "FragFails", "ReasmOKs", "ReasmFails")


def ip_fragment_counters(underlay: Underlay, hosts: Sequence[str]) -> dict[str, Any]:
    """IPv4 fragmentation counters of each host's underlay namespace since it was made.

    An overlay MTU too large for the underlay shows here first: every full-size overlay
    frame becomes a fragmented VXLAN packet (``FragCreates``), or is dropped where
    fragmenting is not allowed (``FragFails``). Totals plus one entry per host; a host
    whose counters cannot be read is listed under ``unread``.
    """
    totals = dict.fromkeys(IP_FRAGMENT_COUNTERS, 0)
    per_host: dict[str, dict[str, int]] = {}
    unread: list[str] = []
    for h in hosts:
        try:
            out = underlay.cmd(h, ["cat", "/proc/net/snmp"], timeout=10).stdout
            ip = [line.split() for line in out.splitlines() if line.startswith("Ip:")]
            values = dict(zip(ip[0][1:], (int(v) for v in ip[1][1:]), strict=True))
            per_host[h] = {k: values[k] for k in IP_FRAGMENT_COUNTERS}
        except (OSError, IndexError, KeyError, ValueError, subprocess.SubprocessError):
            unread.append(h)
            continue
        for k in IP_FRAGMENT_COUNTERS:
            totals[k] += per_host[h][k]
    return {**totals, "per_host": per_host, "unread": unread}


def full_size_ping(
    underlay: Underlay, src: Endpoint | None, dst: Endpoint | None, count: int = 5
) -> dict[str, Any]:
    """Echoes as large as ``src``'s interface MTU allows, with Don't Fragment, to ``dst``.

    The container trusts its MTU: an overlay MTU larger than the underlay can carry shows
    as these echoes lost (or, where the host may fragment the tunnel packet, as
    fragments in :func:`ip_fragment_counters`) while small pings still pass.
    """
    row: dict[str, Any] = {"src": getattr(src, "name", ""), "dst": getattr(dst, "name", "")}
    shared = sorted(set(src.ips) & set(dst.ips)) if src and dst else []
    if not shared or not src or not src.netns:
        return {**row, "mtu": None, "sent": 0, "received": 0, "reason": "no shared network"}
    try:
        mtu = int(in_container(underlay, src, ["cat", "/sys/class/net/eth0/mtu"], 10).stdout)
        argv = ["ping", "-n", "-q", "-M", "do", "-s", str(mtu - 28), "-c", str(count)]
        out = in_container(underlay, src, [*argv, "-i0.2", "-W1", dst.ips[shared[0]]], 30)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return {**row, "mtu": None, "sent": 0, "received": 0, "reason": str(exc)}
    received = 0
    for part in out.stdout.replace(",", "\n").splitlines():
        if part.strip().endswith("received"):
            received = int(part.split()[0])
    return {**row, "mtu": mtu, "sent": count, "received": received, "reason": ""}
