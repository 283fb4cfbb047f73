"""Property tests: IPAM against a naive reference model, subnet carving, VNIs."""

from __future__ import annotations

import ipaddress
import json
from ipaddress import IPv4Address, IPv4Network

from hypothesis import given, settings
from hypothesis import strategies as st

from overlaysim.core.cluster import Cluster
from overlaysim.core.cluster_errors import AddressExhausted, AddressInUse, InvalidSpec, VniExhausted
from overlaysim.core.ipam import carve_subnet
from overlaysim.core.network import NetworkSpec

# --- reference model of one network's allocation -------------------------------------------


class Model:
    """Obvious, slow IPAM: lists and loops, no bitmap."""

    def __init__(self, subnet: IPv4Network, span: IPv4Network, gateway, aux: list) -> None:
        self.subnet = subnet
        self.span = list(span)  # every address of the dynamic range, in order
        self.reserved = {subnet.network_address, subnet.broadcast_address, gateway, *aux}
        self.gateway = gateway
        self.aux = set(aux)
        self.held: dict[str, IPv4Address] = {}
        self.cursor = self.span[0]

    def allocate(self) -> IPv4Address | None:
        taken = set(self.held.values()) | self.reserved
        after = [a for a in self.span if a >= self.cursor]
        before = [a for a in self.span if a < self.cursor]
        for addr in after + before:
            if addr not in taken:
                nxt = addr + 1
                self.cursor = nxt if nxt <= self.span[-1] else self.span[0]
                return addr
        return None

    def request_outcome(self, addr: IPv4Address) -> type[Exception] | None:
        if addr in (self.subnet.network_address, self.subnet.broadcast_address):
            return InvalidSpec
        if addr == self.gateway or addr in self.aux or addr in self.held.values():
            return AddressInUse
        return None


@st.composite
def layouts(draw):
    """A subnet with an ip_range inside it, maybe a custom gateway and aux addresses."""
    prefix = draw(st.integers(min_value=26, max_value=30))
    subnet = IPv4Network((int(IPv4Address("10.7.0.0")) + draw(st.integers(0, 3)) * 256, prefix))
    range_prefix = draw(st.integers(min_value=prefix, max_value=32))
    ranges = list(subnet.subnets(new_prefix=range_prefix))
    span = draw(st.sampled_from(ranges))
    hosts = list(subnet.hosts())
    gateway = draw(st.sampled_from(hosts))
    others = [h for h in hosts if h != gateway]
    aux = draw(st.lists(st.sampled_from(others), unique=True, max_size=min(3, len(others))))
    return subnet, span, gateway, aux


ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 0)),
        st.tuples(st.just("request"), st.integers(0, 63)),
        st.tuples(st.just("release"), st.integers(0, 63)),
        st.tuples(st.just("restore"), st.integers(0, 0)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(layout=layouts(), sequence=ops)
def test_allocation_matches_model_and_stays_unique(layout, sequence) -> None:
    subnet, span, gateway, aux = layout
    cluster = Cluster()
    cluster.create_network(
        NetworkSpec(
            name="n",
            subnet=str(subnet),
            gateway=str(gateway),
            ip_range=str(span),
            aux_addresses={f"aux{i}": str(a) for i, a in enumerate(aux)},
        )
    )
    model = Model(subnet, span, gateway, aux)
    counter = 0
    for op, arg in sequence:
        counter += 1
        endpoint = f"e{counter}"
        if op == "alloc":
            expected = model.allocate()
            if expected is None:
                try:
                    cluster.allocate("n", endpoint, standalone=False)
                except AddressExhausted:
                    pass
                else:
                    raise AssertionError("allocated from an exhausted range")
            else:
                got = cluster.allocate("n", endpoint, standalone=False)
                assert got.ip == str(expected)
                model.held[endpoint] = expected
        elif op == "request":
            addr = subnet.network_address + arg % subnet.num_addresses
            outcome = model.request_outcome(addr)
            if outcome is None:
                assert cluster.allocate("n", endpoint, ip=str(addr), standalone=False).ip == str(
                    addr
                )
                model.held[endpoint] = addr
            else:
                try:
                    cluster.allocate("n", endpoint, ip=str(addr), standalone=False)
                except outcome:
                    pass
                else:
                    raise AssertionError(f"{addr} handed out despite {outcome.__name__}")
        elif op == "release" and model.held:
            victim = sorted(model.held)[arg % len(model.held)]
            assert cluster.release("n", victim).ip == str(model.held.pop(victim))
        elif op == "restore":
            cluster = Cluster.restore(json.loads(json.dumps(cluster.snapshot())))

        held = [IPv4Address(a.ip) for a in cluster.allocations("n")]
        assert len(held) == len(set(held))
        assert sorted(held) == sorted(model.held.values())
        assert all(a in subnet and a not in model.reserved for a in held)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=18, max_value=28), st.data())
def test_dynamic_allocations_fill_range_exactly_once(prefix, data) -> None:
    subnet = IPv4Network(f"10.64.0.0/{prefix}")
    span = data.draw(st.sampled_from(list(subnet.subnets(new_prefix=min(prefix + 2, 30)))))
    cluster = Cluster()
    cluster.create_network(NetworkSpec(name="n", subnet=str(subnet), ip_range=str(span)))
    usable = [a for a in span if a not in (subnet.network_address, subnet.broadcast_address)]
    usable = [a for a in usable if a != subnet.network_address + 1]  # default gateway
    got = [
        IPv4Address(cluster.allocate("n", f"e{i}", standalone=False).ip) for i in range(len(usable))
    ]
    assert got == usable  # lowest first, each exactly once, all inside the range
    try:
        cluster.allocate("n", "one-too-many", standalone=False)
    except AddressExhausted:
        pass
    else:
        raise AssertionError("range should be exhausted")


# --- subnet carving ------------------------------------------------------------------------


def _brute_carve(pool: IPv4Network, prefix: int, taken: list[IPv4Network]):
    for candidate in pool.subnets(new_prefix=prefix):
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    return None


@st.composite
def aligned_net(draw) -> IPv4Network:
    prefix = draw(st.integers(min_value=20, max_value=30))
    start = draw(st.integers(int(IPv4Address("10.0.0.0")), int(IPv4Address("10.0.63.255"))))
    return IPv4Network((start >> (32 - prefix) << (32 - prefix), prefix))


taken_nets = st.lists(aligned_net(), max_size=12)


@settings(max_examples=300, deadline=None)
@given(taken=taken_nets, prefix=st.integers(min_value=21, max_value=28))
def test_carve_subnet_is_lowest_free_block(taken, prefix) -> None:
    pool = IPv4Network("10.0.0.0/19")
    got = carve_subnet(pool, prefix, taken)
    assert got == _brute_carve(pool, prefix, taken)
    if got is not None:
        assert got.subnet_of(pool) and got.prefixlen == prefix
        assert not any(got.overlaps(t) for t in taken)


# --- networks and VNIs ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 20)), max_size=60),
    st.integers(min_value=0, max_value=8),
)
def test_vnis_unique_lowest_free_and_subnets_disjoint(actions, width) -> None:
    start = 4096 + 1000
    cluster = Cluster(
        default_pool="10.0.0.0/20", default_size=24, vni_start=start, vni_end=start + width
    )
    counter = 0
    for create, pick in actions:
        names = [n.name for n in cluster.networks()]
        if create or not names:
            counter += 1
            held = {n.vni for n in cluster.networks()}
            lowest = next((v for v in range(start, start + width + 1) if v not in held), None)
            try:
                net = cluster.create_network(NetworkSpec(name=f"n{counter}"))
            except VniExhausted:
                assert lowest is None
            except AddressExhausted:
                assert len(names) == 16  # the /20 holds sixteen /24s
            else:
                assert net.vni == lowest
        else:
            cluster.remove_network(names[pick % len(names)])
        nets = cluster.networks()
        vnis = [n.vni for n in nets]
        assert len(set(vnis)) == len(vnis)
        assert all(start <= v <= start + width for v in vnis)
        subnets = [ipaddress.ip_network(n.subnet) for n in nets]
        for i, a in enumerate(subnets):
            assert not any(a.overlaps(b) for b in subnets[i + 1 :])
