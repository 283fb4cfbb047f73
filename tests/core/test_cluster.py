"""Cluster state on the manager: networks, VNIs, IPAM, MTU, snapshots."""

from __future__ import annotations

import ipaddress
import json
import re

import msgpack
import pytest

from overlaysim.core.cluster import Cluster
from overlaysim.core.cluster_errors import (
    AddressExhausted,
    AddressInUse,
    ClusterError,
    EndpointExists,
    EndpointNotFound,
    InvalidSpec,
    NetworkExists,
    NetworkInUse,
    NetworkNotFound,
    NotAttachable,
    SubnetOverlap,
    VniExhausted,
)
from overlaysim.core.ipam import mac_for_ip
from overlaysim.core.mtu import ENCRYPTION_OVERHEAD, derive_mtu
from overlaysim.core.network import NetworkSpec


def ips(allocs) -> list[str]:
    return [a.ip for a in allocs]


def fill(cluster: Cluster, net: str, prefix: str, count: int) -> list[str]:
    return [cluster.allocate(net, f"{prefix}{i}", standalone=False).ip for i in range(count)]


# --- networks, subnets, VNIs -------------------------------------------------------------


def test_defaults_carve_lowest_free_block_with_first_host_as_gateway() -> None:
    c = Cluster()
    a = c.create_network(NetworkSpec(name="a"))
    b = c.create_network(NetworkSpec(name="b"))
    assert (a.subnet, a.gateway, a.ip_range, a.vni) == (
        "10.0.0.0/24",
        "10.0.0.1",
        "10.0.0.0/24",
        4096,
    )
    assert (b.subnet, b.gateway, b.vni) == ("10.0.1.0/24", "10.0.1.1", 4097)
    assert [n.name for n in c.networks()] == ["a", "b"]


def test_carving_skips_explicit_subnets_and_reuses_freed_blocks() -> None:
    c = Cluster(default_pool="10.0.0.0/16", default_size=24)
    c.create_network(NetworkSpec(name="big", subnet="10.0.0.0/23"))
    c.create_network(NetworkSpec(name="odd", subnet="10.0.3.128/25"))
    assert c.create_network(NetworkSpec(name="x")).subnet == "10.0.2.0/24"
    assert c.create_network(NetworkSpec(name="y")).subnet == "10.0.4.0/24"
    c.remove_network("x")
    assert c.create_network(NetworkSpec(name="z")).subnet == "10.0.2.0/24"


def test_default_pool_exhaustion_names_pool_and_size() -> None:
    c = Cluster(default_pool="10.9.0.0/23", default_size=24)
    c.create_network(NetworkSpec(name="a"))
    c.create_network(NetworkSpec(name="b"))
    with pytest.raises(AddressExhausted, match=r"default_pool='10\.9\.0\.0/23'.*/24.*network c"):
        c.create_network(NetworkSpec(name="c"))
    # An explicit subnet outside the pool still works.
    assert c.create_network(NetworkSpec(name="c", subnet="10.10.0.0/24")).vni == 4098


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("10.1.0.0/24", "10.1.0.0/24"),  # equal
        ("10.1.0.0/24", "10.1.0.128/25"),  # inside
        ("10.1.0.128/25", "10.1.0.0/16"),  # around
    ],
)
def test_overlapping_subnets_refused_naming_both(first: str, second: str) -> None:
    c = Cluster()
    c.create_network(NetworkSpec(name="one", subnet=first))
    with pytest.raises(SubnetOverlap) as err:
        c.create_network(NetworkSpec(name="two", subnet=second))
    msg = str(err.value)
    assert "network two" in msg and second in msg
    assert "network one" in msg and first in msg
    assert [n.name for n in c.networks()] == ["one"]


def test_adjacent_subnets_do_not_overlap() -> None:
    c = Cluster()
    c.create_network(NetworkSpec(name="one", subnet="10.1.0.0/25"))
    assert c.create_network(NetworkSpec(name="two", subnet="10.1.0.128/25")).vni == 4097


def test_vnis_unique_from_4096_lowest_free_after_removal() -> None:
    c = Cluster()
    nets = [c.create_network(NetworkSpec(name=f"n{i}")) for i in range(5)]
    assert [n.vni for n in nets] == [4096, 4097, 4098, 4099, 4100]
    c.remove_network("n1")
    c.remove_network("n3")
    assert c.create_network(NetworkSpec(name="m0")).vni == 4097
    assert c.create_network(NetworkSpec(name="m1")).vni == 4099
    assert c.create_network(NetworkSpec(name="m2")).vni == 4101
    vnis = [n.vni for n in c.networks()]
    assert len(set(vnis)) == len(vnis) and min(vnis) >= 4096


def test_vni_exhaustion() -> None:
    c = Cluster(vni_start=5000, vni_end=5001)
    assert [c.create_network(NetworkSpec(name=n)).vni for n in ("a", "b")] == [5000, 5001]
    with pytest.raises(VniExhausted, match=r"network c: no free VNI in 5000\.\.5001"):
        c.create_network(NetworkSpec(name="c"))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"vni_start": 4095}, "vni_start=4095"),
        ({"vni_start": 5000, "vni_end": 4999}, "vni_end=4999"),
        ({"vni_end": 1 << 24}, f"vni_end={1 << 24}"),
        ({"default_pool": "10.0.0.1/8"}, "default_pool='10.0.0.1/8'"),
        ({"default_size": 31}, "default_size=31"),
        ({"default_pool": "10.0.0.0/16", "default_size": 12}, "default_size=12"),
    ],
)
def test_cluster_settings_validated(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        Cluster(**kwargs)
    assert fragment in str(err.value)


def test_ids_deterministic_hex_and_new_on_recreate() -> None:
    def run() -> list[str]:
        c = Cluster()
        first = c.create_network(NetworkSpec(name="web")).id
        c.remove_network("web")
        second = c.create_network(NetworkSpec(name="web")).id
        return [first, second]

    ids = run()
    assert ids == run()
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"[0-9a-f]{25}", i) for i in ids)


def test_lookup_by_name_or_id_and_not_found() -> None:
    c = Cluster()
    net = c.create_network(NetworkSpec(name="web", attachable=True))
    assert c.network("web") == net
    assert c.network(net.id) == net
    assert c.allocate(net.id, "e1").network == "web"
    with pytest.raises(NetworkNotFound, match="network ghost not found"):
        c.network("ghost")
    with pytest.raises(NetworkNotFound):
        c.allocate("ghost", "e")


def test_duplicate_name_refused() -> None:
    c = Cluster()
    c.create_network(NetworkSpec(name="web"))
    with pytest.raises(NetworkExists, match="network with name web already exists"):
        c.create_network(NetworkSpec(name="web", subnet="10.50.0.0/24"))


def test_network_keeps_its_own_copies_of_maps() -> None:
    aux = {"router": "10.1.0.5"}
    labels = {"team": "a"}
    c = Cluster()
    net = c.create_network(
        NetworkSpec(name="n", subnet="10.1.0.0/24", aux_addresses=aux, labels=labels)
    )
    aux["router"] = "10.1.0.6"
    labels["team"] = "b"
    assert net.aux_addresses == {"router": "10.1.0.5"}
    assert c.network("n").labels == {"team": "a"}


# --- spec validation: errors name the field and the value ---------------------------------


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ({"subnet": "10.1.0.1/24"}, ["subnet='10.1.0.1/24'", "host bits", "10.1.0.0/24"]),
        ({"subnet": "10.1.0.0"}, ["subnet='10.1.0.0'", "prefix length"]),
        ({"subnet": "banana"}, ["subnet='banana'", "CIDR"]),
        ({"subnet": "fd00::/64"}, ["subnet='fd00::/64'", "IPv6"]),
        ({"subnet": "10.1.0.0/31"}, ["subnet='10.1.0.0/31'", "/30"]),
        ({"subnet": "127.0.0.0/24"}, ["subnet='127.0.0.0/24'", "loopback"]),
        ({"subnet": "224.1.0.0/24"}, ["subnet='224.1.0.0/24'", "multicast"]),
        ({"subnet": 42}, ["subnet=42", "string"]),
        (
            {"subnet": "10.1.0.0/24", "gateway": "10.2.0.1"},
            ["gateway='10.2.0.1'", "outside subnet 10.1.0.0/24", "10.1.0.1..10.1.0.254"],
        ),
        (
            {"subnet": "10.1.0.0/24", "gateway": "10.1.0.0"},
            ["gateway='10.1.0.0'", "network address"],
        ),
        (
            {"subnet": "10.1.0.0/24", "gateway": "10.1.0.255"},
            ["gateway='10.1.0.255'", "broadcast address"],
        ),
        ({"subnet": "10.1.0.0/24", "gateway": "10.1.0.1/24"}, ["gateway='10.1.0.1/24'"]),
        (
            {"subnet": "10.1.0.0/24", "ip_range": "10.1.1.0/25"},
            ["ip_range='10.1.1.0/25'", "outside subnet 10.1.0.0/24"],
        ),
        (
            {"subnet": "10.1.0.0/24", "ip_range": "10.1.0.1/25"},
            ["ip_range='10.1.0.1/25'", "host bits"],
        ),
        (
            {"subnet": "10.1.0.0/24", "aux_addresses": {"r": "10.2.0.5"}},
            ["aux_addresses['r']='10.2.0.5'", "outside subnet"],
        ),
        (
            {"subnet": "10.1.0.0/24", "aux_addresses": {"r": "10.1.0.1"}},
            ["aux_addresses['r']='10.1.0.1'", "gateway"],
        ),
        (
            {"subnet": "10.1.0.0/24", "aux_addresses": {"r": "10.1.0.9", "s": "10.1.0.9"}},
            ["aux_addresses['s']='10.1.0.9'", "aux_addresses['r']"],
        ),
        ({"gateway": "10.0.0.1"}, ["gateway='10.0.0.1'", "explicit subnet"]),
        ({"ip_range": "10.0.0.0/25"}, ["ip_range='10.0.0.0/25'", "explicit subnet"]),
        ({"aux_addresses": {"r": "10.0.0.5"}}, ["aux_addresses=", "explicit subnet"]),
        ({"mtu": 67}, ["mtu=67", "68.."]),
        ({"mtu": True}, ["mtu=True", "integer"]),
        ({"attachable": "yes"}, ["attachable='yes'", "true or false"]),
        ({"labels": {"a": 1}}, ["labels=", "strings"]),
    ],
)
def test_invalid_spec_names_field_and_value(spec: dict, fragments: list[str]) -> None:
    c = Cluster()
    with pytest.raises(InvalidSpec) as err:
        c.create_network(NetworkSpec(name="n", **spec))
    for fragment in fragments:
        assert fragment in str(err.value)
    assert c.networks() == []


@pytest.mark.parametrize("name", ["", "-x", "a b", "a/b", ".hidden"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(f"name={name!r}")):
        Cluster().create_network(NetworkSpec(name=name))


def test_errors_are_cluster_errors_and_value_errors() -> None:
    for exc in (InvalidSpec, NetworkExists, SubnetOverlap, AddressExhausted, NotAttachable):
        assert issubclass(exc, ClusterError) and issubclass(exc, ValueError)


# --- allocation --------------------------------------------------------------------------


def test_slash29_gives_five_then_exhausted() -> None:
    c = Cluster()
    net = c.create_network(NetworkSpec(name="tiny", subnet="10.1.0.0/29"))
    got = fill(c, "tiny", "e", 5)
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    assert net.gateway not in got
    with pytest.raises(AddressExhausted) as err:
        c.allocate("tiny", "e5", standalone=False)
    assert "network tiny" in str(err.value) and "10.1.0.0/29" in str(err.value)
    assert "8 addresses, 5 usable" in str(err.value)


def test_aux_addresses_and_custom_gateway_skipped() -> None:
    c = Cluster()
    c.create_network(
        NetworkSpec(
            name="n",
            subnet="10.1.0.0/29",
            gateway="10.1.0.6",
            aux_addresses={"router": "10.1.0.3", "printer": "10.1.0.4"},
        )
    )
    assert fill(c, "n", "e", 3) == ["10.1.0.1", "10.1.0.2", "10.1.0.5"]
    with pytest.raises(AddressExhausted, match="3 usable"):
        c.allocate("n", "late", standalone=False)


def test_ip_range_bounds_dynamic_allocation_but_not_requests() -> None:
    c = Cluster()
    c.create_network(NetworkSpec(name="n", subnet="10.1.0.0/24", ip_range="10.1.0.128/26"))
    got = fill(c, "n", "e", 64)
    assert got[0] == "10.1.0.128" and got[-1] == "10.1.0.191"
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network("10.1.0.128/26") for ip in got)
    with pytest.raises(AddressExhausted, match=r"ip_range 10\.1\.0\.128/26"):
        c.allocate("n", "more", standalone=False)
    # Static addresses outside the dynamic range, as in Docker, stay possible.
    assert c.allocate("n", "static", ip="10.1.0.20", standalone=False).ip == "10.1.0.20"
    with pytest.raises(InvalidSpec, match=r"ip='10\.2\.0\.20'.*outside subnet 10\.1\.0\.0/24"):
        c.allocate("n", "far", ip="10.2.0.20", standalone=False)


def test_release_reuses_only_after_wrapping() -> None:
    c = Cluster()
    c.create_network(NetworkSpec(name="n", subnet="10.1.0.0/29"))
    assert fill(c, "n", "e", 3) == ["10.1.0.2", "10.1.0.3", "10.1.0.4"]
    released = c.release("n", "e0")
    assert (released.endpoint, released.ip) == ("e0", "10.1.0.2")
    # Continue after the last allocation rather than handing .2 straight back.
    assert c.allocate("n", "a", standalone=False).ip == "10.1.0.5"
    c.release("n", "e1")  # frees .3
    assert c.allocate("n", "b", standalone=False).ip == "10.1.0.6"
    # Wrap: the oldest free addresses come back in order.
    assert c.allocate("n", "c", standalone=False).ip == "10.1.0.2"
    assert c.allocate("n", "d", standalone=False).ip == "10.1.0.3"
    assert ips(c.allocations("n")) == [f"10.1.0.{i}" for i in range(2, 7)]


def test_requested_addresses() -> None:
    c = Cluster()
    c.create_network(
        NetworkSpec(name="n", subnet="10.1.0.0/24", aux_addresses={"router": "10.1.0.9"})
    )
    got = c.allocate("n", "fixed", ip="10.1.0.2", standalone=False)
    assert (got.ip, got.prefixlen, got.gateway) == ("10.1.0.2", 24, "10.1.0.1")
    # A request does not move the dynamic cursor, and is never handed out again.
    assert c.allocate("n", "dyn", standalone=False).ip == "10.1.0.3"
    cases = [
        ("10.1.0.2", AddressInUse, "endpoint 'fixed'"),
        ("10.1.0.1", AddressInUse, "gateway"),
        ("10.1.0.9", AddressInUse, "aux_addresses['router']"),
        ("10.1.0.0", InvalidSpec, "network address"),
        ("10.1.0.255", InvalidSpec, "broadcast address"),
        ("10.1.0.300", InvalidSpec, "not a valid IP"),
    ]
    for ip, exc, fragment in cases:
        with pytest.raises(exc) as err:
            c.allocate("n", "x", ip=ip, standalone=False)
        assert f"ip={ip!r}" in str(err.value) and fragment in str(err.value)
    assert ips(c.allocations("n")) == ["10.1.0.2", "10.1.0.3"]


def test_endpoint_rules() -> None:
    c = Cluster()
    c.create_network(NetworkSpec(name="n", attachable=True))
    first = c.allocate("n", "web.1")
    with pytest.raises(EndpointExists, match=r"endpoint='web\.1'.*10\.0\.0\.2.*network n"):
        c.allocate("n", "web.1")
    assert c.allocation("n", "web.1") == first
    with pytest.raises(EndpointNotFound, match=r"endpoint='ghost'.*network n"):
        c.release("n", "ghost")
    with pytest.raises(InvalidSpec, match="endpoint=''"):
        c.allocate("n", "")
    c.release("n", "web.1")
    with pytest.raises(EndpointNotFound):
        c.allocation("n", "web.1")


def test_non_attachable_refuses_standalone_with_docker_wording() -> None:
    c = Cluster()
    c.create_network(NetworkSpec(name="front"))
    with pytest.raises(NotAttachable) as err:
        c.allocate("front", "ctr")
    assert str(err.value) == "network front is not manually attachable"
    assert c.allocations("front") == []
    assert c.allocate("front", "svc.1", standalone=False).ip == "10.0.0.2"
    c.create_network(NetworkSpec(name="open", attachable=True))
    assert c.allocate("open", "ctr").ip == "10.0.1.2"


def test_allocation_carries_mac_prefix_and_gateway() -> None:
    c = Cluster()
    c.create_network(NetworkSpec(name="n", subnet="192.168.7.0/24", attachable=True))
    a = c.allocate("n", "e")
    assert (a.network, a.endpoint, a.ip) == ("n", "e", "192.168.7.2")
    assert a.mac == "02:42:c0:a8:07:02" == mac_for_ip(a.ip)
    assert (a.prefixlen, a.gateway) == (24, "192.168.7.1")


@pytest.mark.parametrize(
    ("ip", "mac"),
    [("10.0.0.2", "02:42:0a:00:00:02"), ("172.18.255.254", "02:42:ac:12:ff:fe")],
)
def test_mac_for_ip(ip: str, mac: str) -> None:
    assert mac_for_ip(ip) == mac


def test_remove_refused_while_endpoints_listed_then_frees_everything() -> None:
    c = Cluster()
    net = c.create_network(NetworkSpec(name="web", attachable=True))
    c.allocate("web", "b")
    c.allocate("web", "a")
    with pytest.raises(NetworkInUse) as err:
        c.remove_network("web")
    assert str(err.value) == (
        f"network web id {net.id} has active endpoints: b (10.0.0.2), a (10.0.0.3)"
    )
    assert c.network("web") == net
    c.release("web", "a")
    c.release("web", "b")
    assert c.remove_network(net.id) == net
    assert c.networks() == []
    with pytest.raises(NetworkNotFound):
        c.remove_network("web")
    again = c.create_network(NetworkSpec(name="web"))
    assert (again.vni, again.subnet) == (net.vni, net.subnet) and again.id != net.id


def test_twenty_thousand_endpoints_on_a_slash16() -> None:
    c = Cluster()
    c.create_network(NetworkSpec(name="big", subnet="10.8.0.0/16"))
    got = fill(c, "big", "e", 20_000)
    assert len(set(got)) == 20_000
    assert got[0] == "10.8.0.2" and got[-1] == "10.8.78.33"  # offsets 2..20001
    for i in range(0, 20_000, 3):
        c.release("big", f"e{i}")
    more = fill(c, "big", "f", 1_000)
    assert more[0] == "10.8.78.34"  # continues after the last, no early reuse
    assert len(set(ips(c.allocations("big")))) == len(c.allocations("big"))


# --- MTU ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("underlay", "encrypted", "override", "expected"),
    [
        (1500, False, None, 1450),
        (1500, True, None, 1405),
        (9000, False, None, 8950),
        (9000, True, None, 8905),
        (1400, False, None, 1350),
        (1280, True, None, 1185),
        (1500, False, 1400, 1400),
        (1500, False, 1450, 1450),
        (1500, True, 1405, 1405),
        (1500, False, 68, 68),
        (118, False, None, 68),
    ],
)
def test_derive_mtu_table(
    underlay: int, encrypted: bool, override: int | None, expected: int
) -> None:
    assert derive_mtu(underlay, encrypted, override) == expected


@pytest.mark.parametrize(
    ("underlay", "encrypted", "override", "fragments"),
    [
        (1500, False, 1451, ["mtu=1451", "68..1450", "1500"]),
        (1500, True, 1406, ["mtu=1406", "68..1405", "encryption"]),
        (1500, False, 67, ["mtu=67"]),
        (117, False, None, ["underlay_mtu=117", "at least 118"]),
        (160, True, None, ["underlay_mtu=160", "at least 163"]),
        (1500.0, False, None, ["underlay_mtu=1500.0", "integer"]),
    ],
)
def test_derive_mtu_errors(underlay, encrypted, override, fragments: list[str]) -> None:
    with pytest.raises(InvalidSpec) as err:
        derive_mtu(underlay, encrypted, override)
    for fragment in fragments:
        assert fragment in str(err.value)


def _esp_in_udp_vxlan_size(inner_mtu: int) -> int:
    """Outer packet size for a full-size inner packet: IPv4 | UDP | ESP(VXLAN frame)."""
    vxlan_udp = 8 + 8 + 14 + inner_mtu  # UDP + VXLAN + inner Ethernet + inner packet
    pad = -(vxlan_udp + 2) % 4  # AES-GCM ESP pads payload + trailer to 4 bytes
    esp = 8 + 8 + vxlan_udp + pad + 2 + 16  # SPI/seq + IV + payload + pad + trailer + ICV
    return 20 + 8 + esp  # outer IPv4 + NAT-T UDP


def test_encrypted_mtu_always_fits_the_underlay() -> None:
    for underlay in range(68 + 50 + ENCRYPTION_OVERHEAD, 9001):
        assert _esp_in_udp_vxlan_size(derive_mtu(underlay, True)) <= underlay
        assert 20 + 8 + 8 + 14 + derive_mtu(underlay, False) == underlay


def test_spec_mtu_is_kept_as_override() -> None:
    c = Cluster()
    net = c.create_network(NetworkSpec(name="n", mtu=1400, encrypted=True))
    assert (net.mtu, net.encrypted) == (1400, True)
    assert derive_mtu(1500, net.encrypted, net.mtu) == 1400
    assert c.create_network(NetworkSpec(name="m")).mtu is None


def test_attachment_is_kept_and_checked() -> None:
    c = Cluster()
    assert c.create_network(NetworkSpec(name="v")).attachment == "veth"
    assert c.create_network(NetworkSpec(name="m", attachment="macvlan")).attachment == "macvlan"
    with pytest.raises(InvalidSpec, match=r"attachment='ipvlan': expected one of veth, macvlan"):
        c.create_network(NetworkSpec(name="x", attachment="ipvlan"))
    with pytest.raises(InvalidSpec, match="expected a plain network"):
        c.create_network(NetworkSpec(name="y", attachment="macvlan", encrypted=True))
    assert [n.name for n in c.networks()] == ["v", "m"]  # nothing half-made


def test_a_snapshot_from_before_attachments_restores_as_veth() -> None:
    snap = json.loads(json.dumps(_busy_cluster().snapshot()))
    for net in snap["networks"]:
        del net["attachment"]
    assert {n.attachment for n in Cluster.restore(snap).networks()} == {"veth"}


# --- snapshot / restore ---------------------------------------------------------------------


def _busy_cluster() -> Cluster:
    c = Cluster(default_pool="10.20.0.0/16", default_size=26, vni_start=5000)
    c.create_network(NetworkSpec(name="gone"))
    c.create_network(
        NetworkSpec(
            name="front",
            subnet="172.30.0.0/24",
            gateway="172.30.0.254",
            ip_range="172.30.0.0/28",
            aux_addresses={"router": "172.30.0.3"},
            attachable=True,
            encrypted=True,
            mtu=1300,
            labels={"tier": "web"},
        )
    )
    c.create_network(NetworkSpec(name="back", attachment="macvlan"))
    c.remove_network("gone")
    fill(c, "front", "f", 6)
    c.release("front", "f1")
    c.allocate("front", "pinned", ip="172.30.0.200")
    fill(c, "back", "b", 3)
    return c


def test_snapshot_roundtrips_through_json_and_msgpack() -> None:
    c = _busy_cluster()
    snap = c.snapshot()
    for data in (json.loads(json.dumps(snap)), msgpack.unpackb(msgpack.packb(snap))):
        restored = Cluster.restore(data)
        assert restored.snapshot() == snap
        assert restored.networks() == c.networks()
        assert restored.allocations("front") == c.allocations("front")


def test_restored_cluster_continues_identically() -> None:
    original = _busy_cluster()
    restored = Cluster.restore(json.loads(json.dumps(original.snapshot())))
    for c in (original, restored):
        c.create_network(NetworkSpec(name="later"))
    assert restored.network("later") == original.network("later")
    assert fill(restored, "front", "n", 8) == fill(original, "front", "n", 8)
    assert fill(restored, "back", "n", 4) == fill(original, "back", "n", 4)


def _tamper(path: str, value) -> dict:
    snap = _busy_cluster().snapshot()
    target = snap
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    last = keys[-1]
    target[int(last) if isinstance(target, list) else last] = value
    return snap


@pytest.mark.parametrize(
    ("path", "value", "fragments"),
    [
        ("format", 99, ["format=99"]),
        ("networks.1.vni", 5001, ["networks[1]", "vni=5001"]),
        ("networks.1.vni", 17, ["networks[1]", "vni=17"]),
        ("networks.1.subnet", "172.30.0.0/24", ["networks[1]", "gateway='10.20.0.65'"]),
        ("networks.1.name", "front", ["networks[1]", "front already exists"]),
        ("networks.0.endpoints.1", ["dup", "172.30.0.1"], ["networks[0]", "ip='172.30.0.1'"]),
        ("networks.0.endpoints.1", ["f0", "172.30.0.9"], ["networks[0]", "endpoint='f0'"]),
        ("networks.0.endpoints.1", ["x", "10.9.9.9"], ["networks[0]", "outside subnet"]),
        ("networks.0.cursor", 16, ["networks[0]", "cursor=16"]),
        ("networks.0.id", "nothex", ["networks[0]", "id='nothex'"]),
        ("networks.0.gateway", None, ["networks[0]", "resolved"]),
        ("created", 1, ["created=1"]),
    ],
)
def test_restore_rejects_broken_snapshots(path: str, value, fragments: list[str]) -> None:
    with pytest.raises(InvalidSpec) as err:
        Cluster.restore(_tamper(path, value))
    for fragment in fragments:
        assert fragment in str(err.value)


def test_restore_rejects_missing_fields() -> None:
    snap = _busy_cluster().snapshot()
    del snap["networks"][0]["endpoints"]
    with pytest.raises(InvalidSpec, match=r"networks\[0\].*endpoints"):
        Cluster.restore(snap)
    with pytest.raises(InvalidSpec, match="missing field 'vni_end'"):
        Cluster.restore(
            {"format": 1, "default_pool": "10.0.0.0/8", "default_size": 24, "vni_start": 4096}
        )


def test_restore_rejects_overlap_between_entries() -> None:
    snap = _busy_cluster().snapshot()
    clone = dict(snap["networks"][0], name="copy", vni=6000, id="f" * 25, endpoints=[])
    snap["networks"].append(clone)
    with pytest.raises(InvalidSpec) as err:
        Cluster.restore(snap)
    assert "networks[2]" in str(err.value)
    assert "network copy subnet 172.30.0.0/24 overlaps network front" in str(err.value)
