"""Overlay vs underlay TCP throughput of the kernel VXLAN data plane, in one run.

Builds two underlay hosts (named namespaces ``osimb-u1`` and ``osimb-u2`` joined by
a veth pair, 10.98.0.1/24 and 10.98.0.2/24), one overlay network with a container
on each host (through :class:`overlaysim.agent.dataplane.DataPlane`, prefix
``osimb``), then runs iperf3 TCP host -> host over the underlay and container ->
container over the overlay, back to back, for each variant of MTU and offload
settings. Prints Gbit/s for both and their ratio. Everything is rebuilt per variant
and removed at the end; traffic stays between the namespaces built here.

Run as root: ``.venv/bin/python bench/dataplane.py [--seconds 10] [--repeat 1]``.
Do not run it at the same time as the Mininet emulation tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from overlaysim.agent import netns as kns
from overlaysim.agent.created import clean_prefixed
from overlaysim.agent.dataplane import DataPlane, NetInfo, docker_mac, sandbox_mtu

PREFIX = "osimb"
U1, U2 = f"{PREFIX}-u1", f"{PREFIX}-u2"
L1, L2 = f"{PREFIX}-l1", f"{PREFIX}-l2"
IP1, IP2 = "10.98.0.1", "10.98.0.2"
C1_IP, C2_IP = "10.40.0.2", "10.40.0.3"


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """One configuration: underlay MTU, overlay MTU (0 = derived) and ethtool changes.

    ``offloads`` maps a device role (``underlay``, ``vxlan``, ``veth``) to feature
    settings, e.g. ``{"veth": {"rx-gro": True}}``; ``veth`` means both ends of each
    container's veth pair.
    """

    name: str
    underlay_mtu: int = 1500
    overlay_mtu: int = 0
    offloads: dict[str, dict[str, bool]] = field(default_factory=dict)


GRO_ALL = {"underlay": {"rx-gro": True}, "veth": {"rx-gro": True}}
NO_TSO_GSO = {"tx-tcp-segmentation": False, "tx-generic-segmentation": False}
NO_TNL_GSO = {"tx-udp_tnl-segmentation": False, "tx-udp_tnl-csum-segmentation": False}
VARIANTS = (
    Variant(name="default"),
    Variant(name="mtu-1400", overlay_mtu=1400),
    Variant(name="mtu-1300", overlay_mtu=1300),
    Variant(name="gro-veth", offloads=GRO_ALL),
    Variant(name="vxlan-no-tso-gso", offloads={"vxlan": NO_TSO_GSO}),
    Variant(name="underlay-no-tnl-gso", offloads={"underlay": NO_TNL_GSO}),
    Variant(name="jumbo-9000", underlay_mtu=9000),
    Variant(name="jumbo-9000-gro", underlay_mtu=9000, offloads=GRO_ALL),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """Samples of one variant; each overlay run directly follows an underlay run.

    The ratio is the median of per-pair ratios, so a busy moment on the machine
    that slows one pair does not skew the comparison.
    """

    variant: str
    underlay_mtu: int
    overlay_mtu: int
    offloads: str
    underlay_gbps: tuple[float, ...]
    overlay_gbps: tuple[float, ...]
    underlay_retrans: tuple[int, ...]  # TCP retransmissions per run (reordering, drops)
    overlay_retrans: tuple[int, ...]

    @property
    def ratios(self) -> list[float]:
        return [o / u for u, o in zip(self.underlay_gbps, self.overlay_gbps, strict=True) if u]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else 0.0


# --- building ---------------------------------------------------------------------------


def build_underlay(one: tuple[str, str, str], two: tuple[str, str, str], mtu: int = 1500) -> None:
    """Two named namespaces ``(netns, veth name, IPv4)`` joined by a veth pair (/24)."""
    for ns, _, _ in (one, two):
        kns.create_netns(ns)
    with IPRoute(netns=one[0], flags=0) as h1:
        h1.link("add", ifname=one[1], kind="veth", peer={"ifname": two[1], "net_ns_fd": two[0]})
    for ns, ifname, ip in (one, two):
        with IPRoute(netns=ns, flags=0) as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            ipr.link("set", index=index, mtu=mtu)
            ipr.addr("add", index=index, address=ip, prefixlen=24)
            ipr.link("set", index=index, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


@contextmanager
def testbed(variant: Variant) -> Iterator[tuple[DataPlane, DataPlane, int]]:
    """Underlay hosts, data planes and one container per host; torn down on exit."""
    planes: list[DataPlane] = []
    try:
        build_underlay((U1, L1, IP1), (U2, L2, IP2), variant.underlay_mtu)
        net = NetInfo(
            name="bench", vni=4096, subnet="10.40.0.0/24", gateway="10.40.0.1",
            mtu=variant.overlay_mtu,
        )  # fmt: skip
        d1 = DataPlane(host="u1", underlay_ip=IP1, host_netns=U1, prefix=PREFIX)
        planes.append(d1)
        d2 = DataPlane(host="u2", underlay_ip=IP2, host_netns=U2, prefix=PREFIX)
        planes.append(d2)
        d1.attach("c1", net, C1_IP, 24, docker_mac(C1_IP))
        d2.attach("c2", net, C2_IP, 24, docker_mac(C2_IP))
        d1.add_remote("bench", C2_IP, docker_mac(C2_IP), IP2)
        d2.add_remote("bench", C1_IP, docker_mac(C1_IP), IP1)
        apply_offloads(variant, (d1, d2), net)
        yield d1, d2, sandbox_mtu(net, variant.underlay_mtu)
    finally:
        for plane in planes:
            plane.close()
        for name in (U1, U2):
            kns.remove_netns(name)


def _set_features(changes: list[tuple[str, dict[str, bool]]]) -> None:
    """In the current namespace: set ethtool features (runs in a forked helper)."""
    from pyroute2.ethtool import Ethtool

    with Ethtool() as tool:
        for ifname, wanted in changes:
            features = tool.get_features(ifname)
            for name, enable in wanted.items():
                features.features[name].enable = enable
            tool.set_features(ifname, features)


def apply_offloads(variant: Variant, planes: tuple[DataPlane, DataPlane], net: NetInfo) -> None:
    """Apply the variant's ethtool changes to underlay, VXLAN and container veths."""
    for plane, host_ns, underlay, container in (
        (planes[0], U1, L1, "c1"),
        (planes[1], U2, L2, "c2"),
    ):
        per_ns: dict[str, list[tuple[str, dict[str, bool]]]] = {}
        sandbox = plane.sandbox_netns(net)
        for role, wanted in variant.offloads.items():
            if role == "underlay":
                per_ns.setdefault(host_ns, []).append((underlay, wanted))
            elif role == "vxlan":
                per_ns.setdefault(sandbox, []).append((f"{PREFIX}-{net.vni}", wanted))
            elif role == "veth":
                per_ns.setdefault(plane.container_netns(container), []).append(("eth0", wanted))
                with IPRoute(netns=sandbox, flags=0) as ipr:
                    ports = [
                        m.get("ifname")
                        for m in ipr.link("dump")
                        if m.get("ifname", "").startswith("veth")
                    ]
                per_ns.setdefault(sandbox, []).extend((port, wanted) for port in ports)
            else:
                raise ValueError(f"unknown device role {role!r}")
        for ns, changes in per_ns.items():
            kns.run_in_netns(ns, _set_features, changes)


# --- measuring --------------------------------------------------------------------------


def iperf3_tcp(server_ns: str, client_ns: str, server_ip: str, seconds: float) -> tuple[float, int]:
    """TCP goodput client -> server in Gbit/s (as received) and retransmissions."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):  # until the server listens
            client = subprocess.run(
                ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip]
                + ["-t", str(seconds), "-O", "1", "-J"],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
            )
            report = json.loads(client.stdout or "{}")
            end = report.get("end", {})
            if client.returncode == 0 and "sum_received" in end:
                retrans = int(end.get("sum_sent", {}).get("retransmits", 0))
                return end["sum_received"]["bits_per_second"] / 1e9, retrans
            time.sleep(0.1)  # not listening yet, or a run that reported an error
        raise RuntimeError(f"iperf3 to {server_ip} failed: {client.stdout[-300:]}")
    finally:
        server.kill()
        server.wait(timeout=10)


def measure(variant: Variant, seconds: float, repeat: int) -> Result:
    with testbed(variant) as (d1, d2, mtu):
        c1, c2 = d1.container_netns("c1"), d2.container_netns("c2")
        under, over = [], []
        for _ in range(repeat):  # interleaved, so drift in the machine hits both
            under.append(iperf3_tcp(U2, U1, IP2, seconds))
            over.append(iperf3_tcp(c2, c1, C2_IP, seconds))
    offloads = "; ".join(
        f"{role}: " + ",".join(f"{k}={'on' if v else 'off'}" for k, v in wanted.items())
        for role, wanted in variant.offloads.items()
    )
    return Result(
        variant=variant.name,
        underlay_mtu=variant.underlay_mtu,
        overlay_mtu=mtu,
        offloads=offloads or "kernel defaults",
        underlay_gbps=tuple(g for g, _ in under),
        overlay_gbps=tuple(g for g, _ in over),
        underlay_retrans=tuple(r for _, r in under),
        overlay_retrans=tuple(r for _, r in over),
    )


def print_table(results: list[Result]) -> None:
    """Medians (Gbit/s, retransmissions); the ratio also shows its range over repeats."""
    head = (
        f"{'variant':<20} {'u-MTU':>5} {'o-MTU':>5} {'underlay':>8} {'overlay':>8} "
        f"{'ratio':>5} {'(min-max)':>11} {'u-retr':>7} {'o-retr':>7}  offloads"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        spread = f"({min(r.ratios):.2f}-{max(r.ratios):.2f})" if r.ratios else ""
        print(
            f"{r.variant:<20} {r.underlay_mtu:>5} {r.overlay_mtu:>5} "
            f"{statistics.median(r.underlay_gbps):>8.2f} {statistics.median(r.overlay_gbps):>8.2f} "
            f"{r.ratio:>5.2f} {spread:>11} {statistics.median(r.underlay_retrans):>7.0f} "
            f"{statistics.median(r.overlay_retrans):>7.0f}  {r.offloads}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="iperf3 duration (s)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant (median)")
    parser.add_argument(
        "--variants",
        default="all",
        help="comma-separated names: " + ",".join(v.name for v in VARIANTS),
    )
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args(argv)
    chosen = [v for v in VARIANTS if args.variants == "all" or v.name in args.variants.split(",")]
    if not chosen:
        parser.error(f"no variant matches {args.variants!r}")
    clean_prefixed(PREFIX)  # leftovers of an interrupted earlier run
    results = []
    for variant in chosen:
        result = measure(variant, args.seconds, args.repeat)
        pairs = ", ".join(
            f"{u:.2f}/{o:.2f}"
            for u, o in zip(result.underlay_gbps, result.overlay_gbps, strict=True)
        )
        print(
            f"  {variant.name}: underlay/overlay Gbit/s {pairs}; ratio {result.ratio:.2f}",
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    print_table(results)
    if args.json:
        args.json.write_text(
            json.dumps([asdict(r) | {"ratio": r.ratio} for r in results], indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
