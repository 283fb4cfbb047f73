"""Kernel VXLAN data plane: real namespaces, real traffic, exact teardown.

Two "underlay hosts" are named namespaces ``osimt-u1`` and ``osimt-u2`` joined by a
veth pair with 10.99.0.1/24 and 10.99.0.2/24. Each gets a DataPlane with the test
prefix ``osimt``, so everything here is named ``osimt-*`` and is removed by the
fixtures even when a test fails.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from overlaysim.agent import names
from overlaysim.agent import netns as kns
from overlaysim.agent.created import clean_prefixed, clean_recorded, load_outstanding
from overlaysim.agent.dataplane import (
    DataPlane,
    DataPlaneError,
    NetInfo,
    docker_mac,
    sandbox_mtu,
)
from overlaysim.agent.netns import AF_BRIDGE, NTF_SELF, NUD_PERMANENT

U1, U2 = "osimt-u1", "osimt-u2"
L1, L2 = "osimt-l1", "osimt-l2"
IP1, IP2 = "10.99.0.1", "10.99.0.2"
PREFIX = "osimt"

WEB = NetInfo(name="web", vni=5001, subnet="10.20.0.0/24", gateway="10.20.0.1")
NET_A = NetInfo(name="a", vni=4101, subnet="10.30.1.0/24", gateway="10.30.1.1")
NET_B = NetInfo(name="b", vni=4102, subnet="10.30.2.0/24", gateway="10.30.2.1")
MV = NetInfo(name="mv", vni=4103, subnet="10.30.3.0/24", gateway="10.30.3.1", attachment="macvlan")


# --- helpers ---------------------------------------------------------------------------


def run_in(ns: str, *argv: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    """Run a tool inside a namespace (reading state or sending test traffic only)."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )


def pings(ns: str, ip: str) -> bool:
    return run_in(ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", ip).returncode == 0


def remove_prefixed_netns(prefix: str) -> None:
    for name in kns.list_netns():
        if name.startswith(prefix):
            kns.remove_netns(name)


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    return [line.split(":")[1].strip().split("@")[0] for line in out.stdout.splitlines()]


def endpoint(ip: str) -> tuple[str, str]:
    return ip, docker_mac(ip)


def vxlan_packets(pcap: bytes) -> list[tuple[int, int, bytes]]:
    """(UDP dst port, VNI, inner frame) of every IPv4/UDP packet in a pcap file."""
    magic = struct.unpack("<I", pcap[:4])[0]
    order = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    assert struct.unpack(order + "I", pcap[20:24])[0] == 1, "expected Ethernet captures"
    found = []
    offset = 24
    while offset + 16 <= len(pcap):
        caplen = struct.unpack(order + "IIII", pcap[offset : offset + 16])[2]
        frame = pcap[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        if frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        dport = struct.unpack("!H", ip[ihl + 2 : ihl + 4])[0]
        vx = ip[ihl + 8 : ihl + 16]
        assert vx[0] & 0x08, "VXLAN I flag must be set"
        found.append((dport, int.from_bytes(vx[4:7], "big"), ip[ihl + 16 :]))
    return found


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def underlay() -> Iterator[None]:
    remove_prefixed_netns(f"{PREFIX}-")  # leftovers of an interrupted earlier run
    for name in (U1, U2):
        kns.create_netns(name)
    try:
        with IPRoute(netns=U1, flags=0) as h1:
            h1.link("add", ifname=L1, kind="veth", peer={"ifname": L2, "net_ns_fd": U2})
        for ns, ifname, ip in ((U1, L1, IP1), (U2, L2, IP2)):
            with IPRoute(netns=ns, flags=0) as ipr:
                index = ipr.link_lookup(ifname=ifname)[0]
                ipr.addr("add", index=index, address=ip, prefixlen=24)
                ipr.link("set", index=index, state="up")
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield
    finally:
        remove_prefixed_netns(f"{PREFIX}-")


@pytest.fixture
def planes(underlay: None, tmp_path: Path) -> Iterator[tuple[DataPlane, DataPlane]]:
    d1 = DataPlane(
        host="u1", underlay_ip=IP1, host_netns=U1, prefix=PREFIX, record_path=tmp_path / "u1.jsonl"
    )
    d2 = DataPlane(
        host="u2", underlay_ip=IP2, host_netns=U2, prefix=PREFIX, record_path=tmp_path / "u2.jsonl"
    )
    try:
        yield d1, d2
    finally:
        d1.close()
        d2.close()


def connect(d1: DataPlane, d2: DataPlane, net: NetInfo, ip1: str, ip2: str) -> None:
    """Container c1 on u1 and c2 on u2 on ``net``, each programmed with the other."""
    d1.attach("c1", net, ip1, net.prefixlen, docker_mac(ip1))
    d2.attach("c2", net, ip2, net.prefixlen, docker_mac(ip2))
    d1.add_remote(net.name, ip2, docker_mac(ip2), IP2)
    d2.add_remote(net.name, ip1, docker_mac(ip1), IP1)


# --- pure pieces (no root needed) ------------------------------------------------------


def test_docker_mac_and_mtu() -> None:
    assert docker_mac("10.20.0.3") == "02:42:0a:14:00:03"
    # the core's derivation, encryption overhead included (it used to be ignored here)
    plain = NetInfo(name="p", vni=4096, subnet="10.0.0.0/24", gateway="10.0.0.1")
    sealed = NetInfo(name="s", vni=4097, subnet="10.0.1.0/24", gateway="10.0.1.1", encrypted=True)
    assert sandbox_mtu(plain, 1500) == 1450
    assert sandbox_mtu(plain, 9000) == 8950
    assert sandbox_mtu(sealed, 1500) == 1405
    assert sandbox_mtu(sealed, 9000) == 8905
    fixed = NetInfo(name="f", vni=4098, subnet="10.0.2.0/24", gateway="10.0.2.1", mtu=1300)
    assert sandbox_mtu(fixed, 1500) == 1300
    with pytest.raises(ValueError, match="too small"):
        sandbox_mtu(plain, 100)


def test_netinfo_validates() -> None:
    with pytest.raises(ValueError, match="vni"):
        NetInfo(name="x", vni=0, subnet="10.0.0.0/24", gateway="10.0.0.1")
    with pytest.raises(ValueError, match="gateway"):
        NetInfo(name="x", vni=4096, subnet="10.0.0.0/24", gateway="10.0.1.1")
    assert WEB.prefixlen == 24
    with pytest.raises(
        ValueError, match=r"network 'x': attachment='ipvlan': expected one of veth, macvlan"
    ):
        NetInfo(name="x", vni=4096, subnet="10.0.0.0/24", gateway="10.0.0.1", attachment="ipvlan")
    with pytest.raises(ValueError, match="expected a plain network"):
        NetInfo(
            name="x", vni=4096, subnet="10.0.0.0/24", gateway="10.0.0.1", encrypted=True,
            attachment="macvlan",
        )  # fmt: skip


def test_name_parts_are_safe_and_distinct() -> None:
    assert names.name_part("c1") == "c1"
    # dashes would make <prefix>-<host>-<container> ambiguous; digits collide with VNIs
    assert names.name_part("a-b") != "a-b" and names.name_part("a-b").startswith("x")
    assert names.name_part("4096") != "4096"
    assert names.name_part("a" * 60) != names.name_part("a" * 61)
    with pytest.raises(ValueError):
        DataPlane(host="h", underlay_ip=IP1, prefix="toolongprefix")


def test_calls_from_a_running_event_loop_are_refused() -> None:
    import asyncio

    plane = DataPlane(host="h", underlay_ip=IP1, prefix=PREFIX)  # touches nothing

    async def direct() -> None:
        plane.kernel_state("web")

    with pytest.raises(DataPlaneError, match="run_in_executor"):
        asyncio.run(direct())


# --- kernel -----------------------------------------------------------------------------


@pytest.mark.emu
def test_tcp_between_hosts_rides_vxlan_with_the_network_vni(
    planes: tuple[DataPlane, DataPlane], require_tools, tmp_path: Path
) -> None:
    require_tools("iperf3", "tcpdump")
    d1, d2 = planes
    ip1, ip2 = "10.20.0.2", "10.20.0.3"
    connect(d1, d2, WEB, ip1, ip2)
    assert d1.underlay_mtu() == 1500
    offloads = d1.offloads("web")
    vxlan = offloads.pop(f"{PREFIX}-{WEB.vni}")
    assert vxlan["tx-tcp-segmentation"] and vxlan["tx-generic-segmentation"] and vxlan["rx-gro"]
    ports = [name for name in offloads if name.startswith("veth")]
    assert len(ports) == 1 and set(offloads) == {"br0", ports[0]}
    assert offloads[ports[0]]["tx-tcp-segmentation"]
    c1, c2 = d1.container_netns("c1"), d2.container_netns("c2")

    pcap = tmp_path / "underlay.pcap"
    dump = subprocess.Popen(
        ["ip", "netns", "exec", U1, "tcpdump", "-i", L1, "-nn", "-U", "-s", "160"]
        + ["-w", str(pcap), "udp", "port", "4789"],
        stderr=subprocess.PIPE,
        text=True,
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", c2, "iperf3", "-s", "-1", "-B", ip2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert dump.stderr is not None
        assert "listening on" in dump.stderr.readline()  # capture is armed
        report = None
        for _ in range(30):  # the server needs a moment to listen
            client = run_in(c1, "iperf3", "-c", ip2, "-t", "1", "-J")
            if client.returncode == 0:
                report = json.loads(client.stdout)
                break
            time.sleep(0.1)
        assert report is not None, "iperf3 never connected over the overlay"
        assert report["end"]["sum_received"]["bytes"] > 1_000_000
    finally:
        server.kill()
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
        server.wait(timeout=10)

    packets = vxlan_packets(pcap.read_bytes())
    assert len(packets) > 10
    assert {dport for dport, _, _ in packets} == {4789}
    assert {vni for _, vni, _ in packets} == {WEB.vni}
    macs = {bytes.fromhex(docker_mac(ip).replace(":", "")) for ip in (ip1, ip2)}
    assert all(inner[0:6] in macs and inner[6:12] in macs for _, _, inner in packets)
    inner_tcp = [inner for _, _, inner in packets if inner[12:14] == b"\x08\x00" and inner[23] == 6]
    assert inner_tcp, "no inner TCP segments captured"
    assert {inner[26:30] for inner in inner_tcp} == {
        bytes(map(int, ip.split("."))) for ip in (ip1, ip2)
    }


@pytest.mark.emu
def test_entries_match_kernel_and_go_away(planes: tuple[DataPlane, DataPlane]) -> None:
    d1, _ = planes
    d1.ensure_network(WEB)
    remotes = [("10.20.0.5", IP2), ("10.20.0.6", IP2), ("10.20.0.7", "10.99.0.3")]
    for ip, vtep in remotes:
        d1.add_remote("web", ip, docker_mac(ip), vtep)
    d1.add_remote("web", "10.20.0.9", docker_mac("10.20.0.9"), IP1)  # local: not programmed

    fdb, neigh = d1.kernel_state("web")
    assert fdb == {(docker_mac(ip), vtep) for ip, vtep in remotes}
    assert neigh == {endpoint(ip) for ip, _ in remotes}

    # an independent reader agrees: iproute2's view of the sandbox
    sandbox = d1.sandbox_netns(WEB)
    vx = f"{PREFIX}-{WEB.vni}"
    shown = json.loads(run_in(sandbox, "bridge", "-j", "fdb", "show", "dev", vx).stdout)
    assert {(e["mac"], e["dst"]) for e in shown if "dst" in e} == fdb
    assert all("permanent" in e.get("state", "") for e in shown if "dst" in e)
    shown = json.loads(run_in(sandbox, "ip", "-j", "neigh", "show", "dev", vx).stdout)
    assert {(e["dst"], e["lladdr"]) for e in shown} == neigh
    assert all("PERMANENT" in e["state"] for e in shown)
    details = json.loads(run_in(sandbox, "ip", "-j", "-d", "link", "show", vx).stdout)[0]
    data = details["linkinfo"]["info_data"]
    assert (data["id"], data["port"], data["local"]) == (WEB.vni, 4789, IP1)
    assert data["learning"] is False and data["proxy"] is True
    assert details["mtu"] == 1450 and details["master"] == "br0"

    d1.remove_remote("web", "10.20.0.6", docker_mac("10.20.0.6"), IP2)
    fdb, neigh = d1.kernel_state("web")
    assert (docker_mac("10.20.0.6"), IP2) not in fdb
    assert endpoint("10.20.0.6") not in neigh
    assert len(fdb) == 2 and len(neigh) == 2


@pytest.mark.emu
def test_ip_reused_on_another_host_survives_the_late_delete(
    planes: tuple[DataPlane, DataPlane],
) -> None:
    d1, _ = planes
    d1.ensure_network(WEB)
    ip, mac = endpoint("10.20.0.5")
    d1.add_remote("web", ip, mac, IP2)
    d1.add_remote("web", ip, mac, "10.99.0.3")  # new owner announced before the old delete
    d1.remove_remote("web", ip, mac, IP2)  # the old owner's delete arrives late
    assert d1.kernel_state("web") == ({(mac, "10.99.0.3")}, {(ip, mac)})
    d1.remove_remote("web", ip, mac, "10.99.0.3")
    assert d1.kernel_state("web") == (set(), set())


@pytest.mark.emu
def test_reconcile_repairs_drift(planes: tuple[DataPlane, DataPlane]) -> None:
    d1, _ = planes
    d1.ensure_network(WEB)
    desired = {
        ("10.20.0.5", docker_mac("10.20.0.5"), IP2),
        ("10.20.0.6", docker_mac("10.20.0.6"), IP2),
    }
    for remote in desired:
        d1.add_remote("web", *remote)
    assert d1.reconcile("web", desired) == {"added": [], "removed": []}

    # drift by hand: a stale FDB and neighbour entry (IP reuse), one wanted entry lost
    stale_mac = docker_mac("10.20.0.77")
    with IPRoute(netns=d1.sandbox_netns(WEB), flags=0) as ipr:
        vx = ipr.link_lookup(ifname=f"{PREFIX}-{WEB.vni}")[0]
        ipr.neigh(
            "add", family=AF_BRIDGE, ifindex=vx, lladdr=stale_mac, dst="10.99.0.77",
            state=NUD_PERMANENT, flags=NTF_SELF,
        )  # fmt: skip
        ipr.neigh("add", ifindex=vx, dst="10.20.0.77", lladdr=stale_mac, state=NUD_PERMANENT)
        ipr.neigh(
            "del", family=AF_BRIDGE, ifindex=vx, lladdr=docker_mac("10.20.0.6"), flags=NTF_SELF
        )

    changes = d1.reconcile("web", desired)
    assert changes["removed"] == [
        ("fdb", stale_mac, "10.99.0.77"),
        ("neigh", "10.20.0.77", stale_mac),
    ]
    assert changes["added"] == [("fdb", docker_mac("10.20.0.6"), IP2)]
    assert d1.kernel_state("web") == (
        {(mac, vtep) for _, mac, vtep in desired},
        {(ip, mac) for ip, mac, _ in desired},
    )
    assert d1.reconcile("web", desired) == {"added": [], "removed": []}

    # a shrinking desired set removes, and becomes the remembered state
    one = {("10.20.0.5", docker_mac("10.20.0.5"), IP2)}
    assert len(d1.reconcile("web", one)["removed"]) == 2
    d1.remove_network("web")
    d1.ensure_network(WEB)
    assert d1.kernel_state("web") == ({(docker_mac("10.20.0.5"), IP2)}, {endpoint("10.20.0.5")})


@pytest.mark.emu
def test_entries_before_the_network_are_replayed(planes: tuple[DataPlane, DataPlane]) -> None:
    d1, _ = planes
    ip, mac = endpoint("10.20.0.8")
    d1.add_remote("web", ip, mac, IP2)
    assert d1.kernel_state("web") == (set(), set())
    assert d1.reconcile("web", {(ip, mac, IP2)}) == {"added": [], "removed": []}
    d1.ensure_network(WEB)
    assert d1.kernel_state("web") == ({(mac, IP2)}, {(ip, mac)})
    # removal is synchronous: the same VNI and port can be created again at once
    d1.remove_network("web")
    assert not kns.netns_exists(d1.sandbox_netns(WEB))
    d1.ensure_network(WEB)
    assert d1.kernel_state("web") == ({(mac, IP2)}, {(ip, mac)})


@pytest.mark.emu
def test_networks_are_isolated_and_a_dual_homed_container_reaches_both(
    planes: tuple[DataPlane, DataPlane],
) -> None:
    d1, d2 = planes
    c1_ip, c2_ip, c3_a, c3_b = "10.30.1.2", "10.30.2.3", "10.30.1.4", "10.30.2.4"
    d1.attach("c1", NET_A, c1_ip, 24, docker_mac(c1_ip))
    d2.attach("c2", NET_B, c2_ip, 24, docker_mac(c2_ip))
    assert d2.attach("c3", NET_A, c3_a, 24, docker_mac(c3_a)) == "eth0"
    assert d2.attach("c3", NET_B, c3_b, 24, docker_mac(c3_b)) == "eth1"
    d1.add_remote("a", c3_a, docker_mac(c3_a), IP2)
    d2.add_remote("a", c1_ip, docker_mac(c1_ip), IP1)
    for name, plane, net in (("c1", d1, NET_A), ("c2", d2, NET_B)):
        # a default route via the gateway: isolation must hold even when one exists
        with IPRoute(netns=plane.container_netns(name), flags=0) as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway=net.gateway)

    c1, c2, c3 = d1.container_netns("c1"), d2.container_netns("c2"), d2.container_netns("c3")
    assert pings(c3, c1_ip)  # network a, across hosts
    assert pings(c3, c2_ip)  # network b, same host
    assert not pings(c1, c2_ip)
    assert not pings(c1, c3_b)
    assert not pings(c2, c1_ip)

    # c3 was u2's last container on a: the sandbox goes, the remembered remote stays
    d2.detach("c3", "a")
    assert not kns.netns_exists(d2.sandbox_netns(NET_A))
    assert d2.kernel_state("a") == (set(), set())
    assert not pings(c3, c1_ip)
    assert pings(c3, c2_ip)
    assert d2.attach("c3", NET_A, c3_a, 24, docker_mac(c3_a)) == "eth0"
    assert d2.kernel_state("a") == ({(docker_mac(c1_ip), IP1)}, {endpoint(c1_ip)})
    assert pings(c3, c1_ip)


@pytest.mark.emu
def test_macvlan_attachment_carries_traffic_without_bridge_or_veth(
    planes: tuple[DataPlane, DataPlane],
) -> None:
    """Containers as macvlans of the VXLAN device: across hosts (VXLAN, the network's
    VNI), on one host (the macvlans' bridge mode), to the gateway; isolated from a
    veth-attached network; nothing left when they go."""
    d1, d2 = planes
    c1_ip, c2_ip, c3_ip = "10.30.3.2", "10.30.3.3", "10.30.3.4"
    connect(d1, d2, MV, c1_ip, c2_ip)
    assert d2.attach("c3", MV, c3_ip, 24, docker_mac(c3_ip)) == "eth0"
    d1.add_remote("mv", c3_ip, docker_mac(c3_ip), IP2)
    other_ip = "10.30.1.9"
    d1.attach("c9", NET_A, other_ip, 24, docker_mac(other_ip))
    c1, c2, c3 = d1.container_netns("c1"), d2.container_netns("c2"), d2.container_netns("c3")
    sandbox = d2.sandbox_netns(MV)
    with IPRoute(netns=c2, flags=0) as ipr:
        (eth0,) = ipr.get_links(ifname="eth0")
        kind = eth0.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND")
        assert (kind, eth0.get_attr("IFLA_ADDRESS")) == ("macvlan", docker_mac(c2_ip))
        assert eth0.get_attr("IFLA_MTU") == sandbox_mtu(MV, 1500)
    shown = {link["ifname"] for link in json.loads(run_in(sandbox, "ip", "-j", "link").stdout)}
    assert shown == {"lo", f"{PREFIX}-4103", "gw0"}  # no bridge, no veth
    assert pings(c1, c2_ip)  # across hosts
    assert pings(c2, c1_ip)
    assert pings(c2, c3_ip)  # same host
    assert pings(c1, MV.gateway)
    assert not pings(c1, other_ip) and not pings(d1.container_netns("c9"), c1_ip)
    assert d2.kernel_state("mv") == ({(docker_mac(c1_ip), IP1)}, {endpoint(c1_ip)})
    d2.detach("c3", "mv")
    assert not kns.netns_exists(c3)
    assert pings(c1, c2_ip)
    d2.detach("c2", "mv")  # u2's last container on mv: the sandbox goes
    assert not kns.netns_exists(sandbox) and not kns.netns_exists(c2)


@pytest.mark.emu
def test_close_removes_exactly_what_was_created(
    planes: tuple[DataPlane, DataPlane], tmp_path: Path
) -> None:
    d1, d2 = planes
    connect(d1, d2, WEB, "10.20.0.2", "10.20.0.3")
    d2.attach("c3", NET_A, "10.30.1.3", 24, docker_mac("10.30.1.3"))
    created = {n for n in kns.list_netns() if n.startswith(f"{PREFIX}-u")} - {U1, U2}
    assert created == {
        f"{PREFIX}-u1-5001", f"{PREFIX}-u1-c1", f"{PREFIX}-u2-5001",
        f"{PREFIX}-u2-4101", f"{PREFIX}-u2-c2", f"{PREFIX}-u2-c3",
    }  # fmt: skip
    d1.close()
    d2.close()
    d1.close()  # idempotent
    assert set(kns.list_netns()) & created == set()
    assert {n for n in kns.list_netns() if n.startswith(PREFIX)} == {U1, U2}
    for ns, underlay_link in ((U1, L1), (U2, L2)):  # no VXLAN device left behind either
        shown = json.loads(run_in(ns, "ip", "-j", "link").stdout)
        assert {link["ifname"] for link in shown} == {"lo", underlay_link}
    assert not [name for name in root_links() if name.startswith(PREFIX)]
    assert load_outstanding(tmp_path / "u1.jsonl") == []
    assert load_outstanding(tmp_path / "u2.jsonl") == []
    with pytest.raises(DataPlaneError, match="closed"):
        d1.ensure_network(WEB)


@pytest.mark.emu
def test_crashed_run_is_cleaned_from_its_record(underlay: None, tmp_path: Path) -> None:
    record = tmp_path / "run" / "created.jsonl"
    crashed = DataPlane(
        host="u1", underlay_ip=IP1, host_netns=U1, prefix=PREFIX, record_path=record
    )
    crashed.attach("c1", WEB, "10.20.0.2", 24, docker_mac("10.20.0.2"))
    crashed.attach("c-2/odd", WEB, "10.20.0.3", 24, docker_mac("10.20.0.3"))
    left = {obj.name for obj in load_outstanding(record)}
    assert left == {
        f"{PREFIX}-u1-5001",
        f"{PREFIX}-u1-c1",
        f"{PREFIX}-u1-{names.name_part('c-2/odd')}",
    }
    assert {obj.owner for obj in load_outstanding(record)} >= {"container:c-2/odd"}
    # the process "dies" without close(); another process cleans from the record
    removed = clean_recorded(record)
    assert {obj.name for obj in removed} == left
    assert not left & set(kns.list_netns())
    assert load_outstanding(record) == []
    assert clean_recorded(record) == []


@pytest.mark.emu
def test_clean_prefixed_removes_only_its_prefix(underlay: None) -> None:
    crashed = DataPlane(host="u1", underlay_ip=IP1, host_netns=U1, prefix="osimtq")
    crashed.attach("c1", WEB, "10.20.0.2", 24, docker_mac("10.20.0.2"))
    assert clean_prefixed("osimtq") == ["osimtq-u1-5001", "osimtq-u1-c1"]
    assert not [n for n in kns.list_netns() if n.startswith("osimtq-")]
    assert kns.netns_exists(U1) and kns.netns_exists(U2)  # other prefixes untouched
