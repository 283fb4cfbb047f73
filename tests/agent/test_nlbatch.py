"""Neighbour/FDB bursts: the encoding as pyroute2 reads it, and the kernel's view (emu)."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from overlaysim.agent import netns as kns
from overlaysim.agent.nlbatch import (
    AF_BRIDGE,
    AF_INET,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NTF_SELF,
    NUD_PERMANENT,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    BatchError,
    NeighOp,
    NeighSocket,
    encode,
    encode_addr_add,
    encode_link_del_named,
    encode_link_up,
    encode_macvlan_add,
    encode_veth_add,
)


def _decoded(data: bytes) -> ndmsg:
    msg = ndmsg(data)
    msg.decode()
    return msg


def test_an_fdb_set_is_the_request_bridge_fdb_replace_makes() -> None:
    msg = _decoded(encode(NeighOp("set", "fdb", 7, "02:42:0a:00:00:05", "10.0.0.9"), 41))
    hdr = msg["header"]
    assert hdr["type"] == RTM_NEWNEIGH and hdr["sequence_number"] == 41
    assert hdr["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    assert (msg["family"], msg["ifindex"]) == (AF_BRIDGE, 7)
    assert (msg["state"], msg["flags"]) == (NUD_PERMANENT, NTF_SELF)
    assert msg.get_attr("NDA_LLADDR") == "02:42:0a:00:00:05"
    assert msg.get_attr("NDA_DST") == "10.0.0.9"
    assert hdr["length"] == len(
        encode(NeighOp("set", "fdb", 7, "02:42:0a:00:00:05", "10.0.0.9"), 1)
    )


def test_a_neighbour_delete_names_only_the_ip() -> None:
    msg = _decoded(encode(NeighOp("del", "neigh", 3, "", "10.10.0.4"), 2))
    assert msg["header"]["type"] == RTM_DELNEIGH
    assert msg["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK
    assert (msg["family"], msg["ifindex"]) == (AF_INET, 3)
    assert msg.get_attr("NDA_DST") == "10.10.0.4"
    assert msg.get_attr("NDA_LLADDR") is None


def test_a_bad_mac_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="bad MAC"):
        encode(NeighOp("set", "neigh", 3, "02:42", "10.10.0.4"), 1)


def test_a_container_port_is_an_address_and_a_link_up() -> None:
    addr = ifaddrmsg(encode_addr_add(5, "10.10.0.7", 24, 9))
    addr.decode()
    assert addr["header"]["type"] == 20 and addr["header"]["sequence_number"] == 9
    assert (addr["index"], addr["prefixlen"], addr["family"]) == (5, 24, AF_INET)
    assert addr.get_attr("IFA_LOCAL") == addr.get_attr("IFA_ADDRESS") == "10.10.0.7"
    up = ifinfmsg(encode_link_up(5, 10))
    up.decode()
    assert (up["index"], up["flags"] & 1, up["change"] & 1) == (5, 1, 1)


@pytest.fixture
def vxlan_ns() -> Iterator[tuple[str, int]]:
    name = f"osimt-nl-{uuid.uuid4().hex[:6]}"
    kns.create_netns(name)
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link(
                "add", ifname="vx", kind="vxlan", vxlan_id=42, vxlan_port=4789, vxlan_learning=0
            )
            vx = ipr.link_lookup(ifname="vx")[0]
            ipr.link("set", index=vx, state="up")
        yield name, vx
    finally:
        kns.remove_netns(name)


@pytest.mark.emu
def test_a_burst_programs_what_pyroute2_reads_back_and_names_what_failed(
    vxlan_ns: tuple[str, int],
) -> None:
    name, vx = vxlan_ns
    sock = NeighSocket(kns.ns_path(name))
    try:
        ops = []
        for i in range(1, 301):  # more than one write's worth
            mac, ip, vtep = (
                f"02:42:0a:0a:{i // 256:02x}:{i % 256:02x}",
                f"10.10.{i // 256}.{i % 256}",
                f"10.0.0.{i % 7 + 1}",
            )
            ops += [NeighOp("set", "fdb", vx, mac, vtep), NeighOp("set", "neigh", vx, mac, ip)]
        sock.apply(ops)
        with IPRoute(netns=name, flags=0) as ipr:
            seen = kns.vxlan_entries(ipr, vx)
        want_fdb = {(o.mac, o.ip) for o in ops if o.kind == "fdb"}
        want_neigh = {(o.ip, o.mac) for o in ops if o.kind == "neigh"}
        assert seen == (want_fdb, want_neigh)
        assert sock.entries(vx) == seen  # our dump reads the same

        gone = NeighOp("del", "neigh", vx, "", "10.99.0.1")  # never there: not an error
        bad = NeighOp("set", "neigh", vx + 1000, "02:42:0a:0a:00:01", "10.10.0.1")
        first = ops[0]
        with pytest.raises(BatchError) as info:
            sock.apply([gone, NeighOp("del", "fdb", vx, first.mac, first.ip), bad])
        assert info.value.failed == [(bad, errno.ENODEV)]
        fdb, _ = sock.entries(vx)
        assert (first.mac, first.ip) not in fdb and len(fdb) == 299  # the rest still ran
    finally:
        sock.close()


def test_a_port_is_one_veth_request_with_its_peer_moved() -> None:
    msg = ifinfmsg(
        encode_veth_add(
            "vethab12", mtu=1450, master=4, peer="eth1", peer_mac="02:42:0a:0a:00:07",
            peer_ns_fd=17, seq=12,
        )
    )  # fmt: skip
    msg.decode()
    hdr = msg["header"]
    assert (hdr["type"], hdr["sequence_number"]) == (RTM_NEWLINK, 12)
    assert hdr["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert (msg["flags"] & 1, msg["change"] & 1) == (1, 1)  # up
    assert msg.get_attr("IFLA_IFNAME") == "vethab12"
    assert (msg.get_attr("IFLA_MTU"), msg.get_attr("IFLA_MASTER")) == (1450, 4)
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == "eth1"
    assert peer.get_attr("IFLA_ADDRESS") == "02:42:0a:0a:00:07"
    assert (peer.get_attr("IFLA_MTU"), peer.get_attr("IFLA_NET_NS_FD")) == (1450, 17)
    gone = ifinfmsg(encode_link_del_named("vethab12", 13))
    gone.decode()
    assert gone["header"]["type"] == RTM_DELLINK and gone.get_attr("IFLA_IFNAME") == "vethab12"


def test_a_macvlan_port_is_one_request_made_in_the_container() -> None:
    msg = ifinfmsg(
        encode_macvlan_add("eth1", link=3, mtu=1450, mac="02:42:0a:0a:00:08", ns_fd=19, seq=14)
    )
    msg.decode()
    hdr = msg["header"]
    assert (hdr["type"], hdr["sequence_number"]) == (RTM_NEWLINK, 14)
    assert hdr["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert msg.get_attr("IFLA_IFNAME") == "eth1"
    assert msg.get_attr("IFLA_ADDRESS") == "02:42:0a:0a:00:08"
    assert (msg.get_attr("IFLA_MTU"), msg.get_attr("IFLA_LINK")) == (1450, 3)
    assert msg.get_attr("IFLA_NET_NS_FD") == 19
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "macvlan"
    assert info.get_attr("IFLA_INFO_DATA").get_attr("IFLA_MACVLAN_MODE") == "bridge"
    with pytest.raises(ValueError, match="MAC"):
        encode_macvlan_add("eth1", link=3, mtu=1450, mac="02:42", ns_fd=19, seq=1)


@pytest.mark.emu
def test_the_veth_request_builds_a_working_port() -> None:
    """The raw request against the kernel: the pair exists, on the bridge, the peer moved."""
    box, cont = f"osimt-nl-{uuid.uuid4().hex[:6]}", f"osimt-nl-{uuid.uuid4().hex[:6]}"
    kns.create_netns(box)
    kns.create_netns(cont)
    try:
        with IPRoute(netns=box, flags=0) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            br = ipr.link_lookup(ifname="br0")[0]
        sock = NeighSocket(kns.ns_path(box))
        fd = os.open(kns.ns_path(cont), os.O_RDONLY)
        try:
            req = lambda seq: encode_veth_add(  # noqa: E731
                "vethx", mtu=1400, master=br, peer="eth0", peer_mac="02:42:0a:0a:00:09",
                peer_ns_fd=fd, seq=seq,
            )  # fmt: skip
            assert sock.acked([req]) == [0]
            assert sock.acked([req]) == [errno.EEXIST]  # never adopts
        finally:
            os.close(fd)
        with IPRoute(netns=box, flags=0) as ipr:
            (link,) = ipr.get_links(ifname="vethx")
            assert link.get_attr("IFLA_MASTER") == br and link.get_attr("IFLA_MTU") == 1400
            assert link["flags"] & 1
        with IPRoute(netns=cont, flags=0) as ipr:
            (peer,) = ipr.get_links(ifname="eth0")
            assert peer.get_attr("IFLA_ADDRESS") == "02:42:0a:0a:00:09"
        assert sock.acked([lambda seq: encode_link_del_named("vethx", seq)]) == [0]
        assert sock.acked([lambda seq: encode_link_del_named("vethx", seq)]) == [errno.ENODEV]
        sock.close()
    finally:
        kns.remove_netns(box)
        kns.remove_netns(cont)
