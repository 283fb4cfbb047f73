"""Overlay vs underlay TCP throughput of the kernel VXLAN data plane, in one run.

Builds two underlay hosts (named namespaces ``osimb-u1`` and ``osimb-u2`` joined by
a veth pair, 10.98.0.1/24 and 10.98.0.2/24), one overlay network with a container
on each host (through :class:`overlaysim.agent.dataplane.DataPlane`, prefix
``osimb``), then runs iperf3 TCP host -> host over the underlay and container ->
container over the overlay for each variant of MTU, offload and bridge settings.

It also builds, once for the whole run, a hand-made *reference*: two more namespaces
(``osimb-r1``/``osimb-r2``, a veth underlay 10.98.1.0/24) with a VXLAN device in each
carrying the overlay address itself, a static FDB entry and a permanent neighbour for
the peer: the kernel's VXLAN with no bridge and no container hop, the ceiling our
data plane can reach. Every round runs underlay, ours and the reference back to back
(the order of ours and the reference alternates between rounds) and prints
overlay/underlay and ours/reference; the table gives medians with their range.

``--macvlan`` adds a second hand-made path to every round: the same VXLAN devices in two
more host namespaces (``osimb-m1``/``osimb-m2``), each with a container namespace whose
interface is a macvlan (bridge mode) on the VXLAN device: a container hop without our
veth pair and bridge. Its ratio to the reference (``mv/ref``) says what that other way of
attaching containers would buy on this machine.
``--same-host`` adds a third container ``c3`` on the first host, on the same network, and
times ``c3`` -> ``c1`` in every round: traffic that never leaves the host (veth pair,
bridge, veth pair; or macvlan to macvlan). Its ratio to the reference (``local/ref``,
both timed in the same round) compares attachments across variants.
Everything is removed at the end; traffic stays between the namespaces built here.

Run as root: ``.venv/bin/python bench/dataplane.py [--seconds 10] [--repeat 5]``.
Do not run it at the same time as the Mininet emulation tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from overlaysim.agent import netns as kns
from overlaysim.agent.created import clean_prefixed
from overlaysim.agent.dataplane import DataPlane, NetInfo, docker_mac, sandbox_mtu
from overlaysim.core.mtu import VXLAN_OVERHEAD
from overlaysim.core.network import DEFAULT_ATTACHMENT

PREFIX = "osimb"
U1, U2 = f"{PREFIX}-u1", f"{PREFIX}-u2"
L1, L2 = f"{PREFIX}-l1", f"{PREFIX}-l2"
IP1, IP2 = "10.98.0.1", "10.98.0.2"
C1_IP, C2_IP = "10.40.0.2", "10.40.0.3"
C3_IP = "10.40.0.4"  # --same-host: a second container on the first host


R1, R2 = f"{PREFIX}-r1", f"{PREFIX}-r2"
RL1, RL2 = f"{PREFIX}-rl1", f"{PREFIX}-rl2"
RIP1, RIP2 = "10.98.1.1", "10.98.1.2"
RC1, RC2 = "10.41.9.1", "10.41.9.2"

M1, M2 = f"{PREFIX}-m1", f"{PREFIX}-m2"
MC1, MC2 = f"{PREFIX}-mc1", f"{PREFIX}-mc2"
ML1, ML2 = f"{PREFIX}-ml1", f"{PREFIX}-ml2"
MIP1, MIP2 = "10.98.2.1", "10.98.2.2"
MV1, MV2 = "10.41.10.1", "10.41.10.2"


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    """One configuration: underlay MTU, overlay MTU (0 = derived), ethtool changes and
    sandbox bridge options.

    ``offloads`` maps a device role (``underlay``, ``vxlan``, ``veth``) to feature
    settings, e.g. ``{"veth": {"rx-gro": True}}``; ``veth`` means both ends of each
    container's veth pair. ``bridge`` holds ``ip link set br0 type bridge`` options.
    ``attachment`` is the network's (:data:`overlaysim.agent.dataplane.sandbox.
    ATTACHMENTS`): ``macvlan`` has no bridge and no veth pair.
    """

    name: str
    underlay_mtu: int = 1500
    overlay_mtu: int = 0
    offloads: dict[str, dict[str, bool]] = field(default_factory=dict)
    bridge: dict[str, str] = field(default_factory=dict)
    attachment: str = DEFAULT_ATTACHMENT


GRO_ALL = {"underlay": {"rx-gro": True}, "veth": {"rx-gro": True}}
NO_TSO_GSO = {"tx-tcp-segmentation": False, "tx-generic-segmentation": False}
NO_TNL_GSO = {"tx-udp_tnl-segmentation": False, "tx-udp_tnl-csum-segmentation": False}
#: br_netfilter is loaded here and sets bridge-nf-call-* to 1 in every new namespace, so
#: each bridged frame also walks the IP netfilter hooks; the sandbox has no rules.
NO_BR_NF = {"nf_call_iptables": "0", "nf_call_ip6tables": "0", "nf_call_arptables": "0"}
VARIANTS = (
    Variant(name="default"),
    Variant(name="macvlan", attachment="macvlan"),
    Variant(name="gro-cveth", offloads={"veth": {"rx-gro": True}}),
    Variant(name="bridge-no-nf", bridge=NO_BR_NF),
    Variant(name="gro-cveth-no-nf", offloads={"veth": {"rx-gro": True}}, bridge=NO_BR_NF),
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
    """Samples of one variant, one per round: underlay, ours and the reference ran
    back to back in each round.

    Ratios are medians of per-round ratios, so a busy moment on the machine that slows
    one round does not skew the comparison.
    """

    variant: str
    underlay_mtu: int
    overlay_mtu: int
    offloads: str
    underlay_gbps: tuple[float, ...]
    overlay_gbps: tuple[float, ...]
    reference_gbps: tuple[float, ...]
    underlay_retrans: tuple[int, ...]  # TCP retransmissions per run (reordering, drops)
    overlay_retrans: tuple[int, ...]
    load: tuple[float, ...]  # 1-minute load average at the start of each round
    macvlan_gbps: tuple[float, ...] = ()  # the hand-built macvlan path, with --macvlan
    local_gbps: tuple[float, ...] = ()  # c3 -> c1 on one host, with --same-host

    @property
    def ratios(self) -> list[float]:
        return [o / u for u, o in zip(self.underlay_gbps, self.overlay_gbps, strict=True) if u]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else 0.0

    @property
    def ref_ratios(self) -> list[float]:
        return _to_reference(self.reference_gbps, self.overlay_gbps)

    @property
    def ref_ratio(self) -> float:
        return statistics.median(self.ref_ratios) if self.ref_ratios else 0.0

    @property
    def macvlan_ratios(self) -> list[float]:
        return _to_reference(self.reference_gbps, self.macvlan_gbps)

    @property
    def local_ratios(self) -> list[float]:
        return _to_reference(self.reference_gbps, self.local_gbps)


def _to_reference(reference: tuple[float, ...], path: tuple[float, ...]) -> list[float]:
    """Per-round ratios of a path to the reference timed in the same round (an optional
    path has no samples when it was not asked for)."""
    return [x / r for r, x in zip(reference, path, strict=False) if r]


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
def testbed(
    variant: Variant, same_host: bool = False
) -> Iterator[tuple[DataPlane, DataPlane, int]]:
    """Underlay hosts, data planes and one container per host (two on the first with
    ``same_host``); torn down on exit."""
    planes: list[DataPlane] = []
    try:
        build_underlay((U1, L1, IP1), (U2, L2, IP2), variant.underlay_mtu)
        net = NetInfo(
            name="bench", vni=4096, subnet="10.40.0.0/24", gateway="10.40.0.1",
            mtu=variant.overlay_mtu, attachment=variant.attachment,
        )  # fmt: skip
        d1 = DataPlane(host="u1", underlay_ip=IP1, host_netns=U1, prefix=PREFIX)
        planes.append(d1)
        d2 = DataPlane(host="u2", underlay_ip=IP2, host_netns=U2, prefix=PREFIX)
        planes.append(d2)
        d1.attach("c1", net, C1_IP, 24, docker_mac(C1_IP))
        d2.attach("c2", net, C2_IP, 24, docker_mac(C2_IP))
        if same_host:
            d1.attach("c3", net, C3_IP, 24, docker_mac(C3_IP))
        d1.add_remote("bench", C2_IP, docker_mac(C2_IP), IP2)
        d2.add_remote("bench", C1_IP, docker_mac(C1_IP), IP1)
        apply_offloads(variant, (d1, d2), net)
        if variant.bridge:
            opts = [x for kv in variant.bridge.items() for x in kv]
            for plane in (d1, d2):
                sandbox = plane.sandbox_netns(net)
                _ip(sandbox, "link", "set", "br0", "type", "bridge", *opts)
        yield d1, d2, sandbox_mtu(net, variant.underlay_mtu)
    finally:
        for plane in planes:
            plane.close()
        for name in (U1, U2):
            kns.remove_netns(name)


def _ip(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True, timeout=10)


def _vxlan_toward(
    ns: str, local: str, underlay_mtu: int, peer_mac: str, peer: str, *link_opts: str
) -> None:
    """``vx0`` in ``ns`` (VNI 4096, ``nolearning``, up) with a static FDB entry sending
    ``peer_mac`` to VTEP ``peer``; ``link_opts`` go to ``ip link add`` (an address)."""
    _ip(ns, "link", "add", "vx0", *link_opts, "mtu", str(underlay_mtu - VXLAN_OVERHEAD),
        "type", "vxlan", "id", "4096", "dstport", "4789", "local", local,
        "nolearning")  # fmt: skip
    _ip(ns, "link", "set", "vx0", "up")
    subprocess.run(
        ["bridge", "-n", ns, "fdb", "add", peer_mac, "dev", "vx0", "dst", peer, "self",
         "permanent"], check=True, capture_output=True, timeout=10,
    )  # fmt: skip


@contextmanager
def reference(underlay_mtu: int = 1500) -> Iterator[tuple[str, str, str]]:
    """The hand-built ceiling: a VXLAN device per namespace carrying the overlay address,
    static FDB and neighbour entries, no bridge, no container. Yields (server netns,
    client netns, server overlay IP)."""
    try:
        build_underlay((R1, RL1, RIP1), (R2, RL2, RIP2), underlay_mtu)
        macs = {R1: "02:42:0a:29:09:01", R2: "02:42:0a:29:09:02"}
        for ns, local, peer, ip, peer_ip, peer_ns in (
            (R1, RIP1, RIP2, RC1, RC2, R2),
            (R2, RIP2, RIP1, RC2, RC1, R1),
        ):
            _vxlan_toward(ns, local, underlay_mtu, macs[peer_ns], peer, "address", macs[ns])
            _ip(ns, "addr", "add", f"{ip}/24", "dev", "vx0")
            _ip(ns, "neigh", "add", peer_ip, "lladdr", macs[peer_ns], "dev", "vx0", "nud",
                "permanent")  # fmt: skip
        yield R2, R1, RC2
    finally:
        for name in (R1, R2):
            kns.remove_netns(name)


@contextmanager
def macvlan_path(underlay_mtu: int = 1500) -> Iterator[tuple[str, str, str]]:
    """The reference's VXLAN devices, but the overlay address sits in a container
    namespace on a macvlan (bridge mode) of the VXLAN device: a container hop with no
    veth pair and no bridge. Yields (server netns, client netns, server overlay IP)."""
    try:
        build_underlay((M1, ML1, MIP1), (M2, ML2, MIP2), underlay_mtu)
        macs = {M1: "02:42:0a:29:0a:01", M2: "02:42:0a:29:0a:02"}
        for ns, cns, local, peer, ip, peer_ip, peer_ns in (
            (M1, MC1, MIP1, MIP2, MV1, MV2, M2),
            (M2, MC2, MIP2, MIP1, MV2, MV1, M1),
        ):
            kns.create_netns(cns)
            _vxlan_toward(ns, local, underlay_mtu, macs[peer_ns], peer)
            _ip(ns, "link", "add", "link", "vx0", "name", "mv0", "netns", cns, "address",
                macs[ns], "mtu", str(underlay_mtu - VXLAN_OVERHEAD), "type", "macvlan",
                "mode", "bridge")  # fmt: skip
            _ip(cns, "addr", "add", f"{ip}/24", "dev", "mv0")
            _ip(cns, "link", "set", "mv0", "up")
            _ip(cns, "link", "set", "lo", "up")
            _ip(cns, "neigh", "add", peer_ip, "lladdr", macs[peer_ns], "dev", "mv0", "nud",
                "permanent")  # fmt: skip
        yield MC2, MC1, MV2
    finally:
        for name in (MC1, MC2, M1, M2):
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


def measure(
    variant: Variant,
    seconds: float,
    repeat: int,
    ref: tuple[str, str, str],
    macvlan: tuple[str, str, str] | None = None,
    same_host: bool = False,
) -> Result:
    with testbed(variant, same_host) as (d1, d2, mtu):
        c1, c2 = d1.container_netns("c1"), d2.container_netns("c2")
        c3 = d1.container_netns("c3") if same_host else ""
        under, over, refs, mvs, local, load = [], [], [], [], [], []
        for i in range(repeat):  # interleaved, so drift in the machine hits every path
            load.append(os.getloadavg()[0])
            under.append(iperf3_tcp(U2, U1, IP2, seconds))
            paths = [
                lambda: over.append(iperf3_tcp(c2, c1, C2_IP, seconds)),
                lambda: refs.append(iperf3_tcp(*ref, seconds)[0]),
            ]
            if macvlan is not None:
                paths.append(lambda: mvs.append(iperf3_tcp(*macvlan, seconds)[0]))
            if same_host:
                paths.append(lambda: local.append(iperf3_tcp(c1, c3, C1_IP, seconds)[0]))
            for run in paths[::-1] if i % 2 else paths:  # alternate which runs first
                run()
    changes = [
        f"{role}: " + ",".join(f"{k}={'on' if v else 'off'}" for k, v in wanted.items())
        for role, wanted in variant.offloads.items()
    ]
    if variant.attachment != DEFAULT_ATTACHMENT:
        changes.append(f"attachment: {variant.attachment}")
    if variant.bridge:
        changes.append("br0: " + ",".join(f"{k}={v}" for k, v in variant.bridge.items()))
    return Result(
        variant=variant.name,
        underlay_mtu=variant.underlay_mtu,
        overlay_mtu=mtu,
        offloads="; ".join(changes) or "kernel defaults",
        underlay_gbps=tuple(g for g, _ in under),
        overlay_gbps=tuple(g for g, _ in over),
        reference_gbps=tuple(refs),
        underlay_retrans=tuple(r for _, r in under),
        overlay_retrans=tuple(r for _, r in over),
        load=tuple(load),
        macvlan_gbps=tuple(mvs),
        local_gbps=tuple(local),
    )


def _spread(values: list[float]) -> str:
    return f"({min(values):.2f}-{max(values):.2f})" if values else ""


def print_table(results: list[Result]) -> None:
    """Medians (Gbit/s, retransmissions); ratios also show their range over rounds."""
    head = (
        f"{'variant':<16} {'u-MTU':>5} {'o-MTU':>5} {'underlay':>8} {'ours':>6} {'ref':>6} "
        f"{'ours/under':>10} {'(range)':>11} {'ours/ref':>8} {'(range)':>11} {'load':>9}  settings"
    )
    print(head)
    print("-" * len(head))
    med = statistics.median
    for r in results:
        print(
            f"{r.variant:<16} {r.underlay_mtu:>5} {r.overlay_mtu:>5} "
            f"{med(r.underlay_gbps):>8.2f} {med(r.overlay_gbps):>6.2f} "
            f"{med(r.reference_gbps):>6.2f} {r.ratio:>10.2f} {_spread(r.ratios):>11} "
            f"{r.ref_ratio:>8.2f} {_spread(r.ref_ratios):>11} "
            f"{min(r.load):>4.1f}-{max(r.load):<4.1f}  {r.offloads}"
        )
    for r in results:
        if r.macvlan_gbps:
            mv = r.macvlan_ratios
            print(
                f"{r.variant}: hand-built macvlan path {med(r.macvlan_gbps):.2f} Gbit/s, "
                f"mv/ref {med(mv):.2f} {_spread(mv)}, ours/ref {r.ref_ratio:.2f} "
                f"{_spread(r.ref_ratios)} (medians over {len(mv)} rounds)"
            )
    for r in results:
        if r.local_gbps:
            lr = r.local_ratios
            print(
                f"{r.variant}: same host c3 -> c1 {med(r.local_gbps):.2f} Gbit/s "
                f"{_spread(list(r.local_gbps))}, local/ref {med(lr):.2f} {_spread(lr)} "
                f"(medians over {len(lr)} rounds)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="iperf3 duration (s)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per variant (median)")
    parser.add_argument(
        "--variants",
        default="all",
        help="comma-separated names: " + ",".join(v.name for v in VARIANTS),
    )
    parser.add_argument(
        "--macvlan",
        action="store_true",
        help="also time a hand-built container hop through a macvlan on the VXLAN device "
        "(no veth pair, no bridge) in every round",
    )
    parser.add_argument(
        "--same-host",
        action="store_true",
        help="also time two containers on one host (c3 -> c1, same network) in every round",
    )
    parser.add_argument("--json", type=Path, help="also write results here")
    args = parser.parse_args(argv)
    chosen = [v for v in VARIANTS if args.variants == "all" or v.name in args.variants.split(",")]
    if not chosen:
        parser.error(f"no variant matches {args.variants!r}")
    clean_prefixed(PREFIX)  # leftovers of an interrupted earlier run
    results = []
    with reference() as ref, macvlan_path() if args.macvlan else nullcontext() as mv:
        for variant in chosen:
            if variant.underlay_mtu != 1500:
                print(f"  {variant.name}: the reference runs on a 1500 underlay", file=sys.stderr)
            result = measure(variant, args.seconds, args.repeat, ref, mv, args.same_host)
            rounds = ", ".join(
                f"{u:.2f}/{o:.2f}/{f:.2f}"
                for u, o, f in zip(
                    result.underlay_gbps, result.overlay_gbps, result.reference_gbps, strict=True
                )
            )
            print(
                f"  {variant.name}: underlay/ours/reference Gbit/s {rounds}; "
                f"ours/underlay {result.ratio:.2f}, ours/reference {result.ref_ratio:.2f} "
                f"(load {', '.join(f'{x:.1f}' for x in result.load)})",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    print_table(results)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    asdict(r)
                    | {
                        "ratio": r.ratio,
                        "ref_ratio": r.ref_ratio,
                        "macvlan_ratios": r.macvlan_ratios,
                        "local_ratios": r.local_ratios,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
