"""Cluster state on the manager: network definitions, VNI allocation and IPAM.

Like a swarm manager, :class:`Cluster` owns every overlay network and hands out its VNI
and the addresses of its endpoints; agents ask it (the live agent over TCP 2377, the
simulator by direct call). It is pure and deterministic: no I/O, no clock, no
randomness, so the same calls always give the same networks, ids and addresses.

Rules (docs/networks.md explains them at length):

* VNIs come from ``vni_start`` (default 4096: lower values collide with 802.1Q VLAN ids)
  to ``vni_end``; a new network takes the lowest VNI not held by an existing network.
* A network's subnet is given, or carved from the default pool as the lowest free
  ``/default_size`` block not overlapping any existing network. Subnets never overlap.
* The gateway defaults to the first host address. Network, broadcast, gateway and aux
  addresses are never handed out.
* Dynamic allocation takes the first free address of the ip-range at or after the one
  after the previous allocation, wrapping around: released addresses are reused last.
  A requested address may be anywhere in the subnet (as in Docker, the ip-range only
  bounds dynamic allocation), and must be free.

Every error is a :class:`ClusterError` (a :class:`ValueError`, in
:mod:`overlaysim.core.cluster_errors`) whose message names the field and value at fault
and what was expected. The network records and a spec's own checks are
:mod:`overlaysim.core.network`; the MTU rule is :mod:`overlaysim.core.mtu`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

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
    check_bool,
    check_int,
)
from overlaysim.core.ipam import (
    MAX_PREFIX,
    AddressError,
    Addressing,
    AddressPool,
    carve_subnet,
    check_host,
    field_subnet,
    mac_for_ip,
    parse_address,
    plan_addressing,
)
from overlaysim.core.network import (
    DEFAULT_ATTACHMENT,
    Allocation,
    Network,
    NetworkSpec,
    build_network,
    network_id,
    validate_spec,
)

#: The manager's API as this module offers it. The refusals are here too because the
#: manager's wire protocol (``agent/manager.py``) finds error classes by name in this
#: module's namespace; they are defined in :mod:`overlaysim.core.cluster_errors`.
__all__ = [
    "VNI_MAX",
    "VNI_MIN",
    "AddressExhausted",
    "AddressInUse",
    "Allocation",
    "Cluster",
    "ClusterError",
    "EndpointExists",
    "EndpointNotFound",
    "InvalidSpec",
    "Network",
    "NetworkExists",
    "NetworkInUse",
    "NetworkNotFound",
    "NetworkSpec",
    "NotAttachable",
    "SubnetOverlap",
    "VniExhausted",
]

#: Lowest VNI handed out: 1..4095 would collide with 802.1Q VLAN ids on hosts that map
#: VLANs to VNIs one to one.
VNI_MIN = 4096
#: VXLAN's VNI field is 24 bits.
VNI_MAX = (1 << 24) - 1
#: Version of the plain-data form produced by :meth:`Cluster.snapshot`.
SNAPSHOT_FORMAT = 1


# --- per-network state ------------------------------------------------------------------


@dataclass(slots=True)
class _NetState:
    """Mutable allocation state behind one :class:`Network`."""

    network: Network
    addressing: Addressing
    pool: AddressPool
    by_endpoint: dict[str, IPv4Address] = field(default_factory=dict)

    def allocation(self, endpoint: str, ip: IPv4Address) -> Allocation:
        text = str(ip)
        return Allocation(
            network=self.network.name,
            endpoint=endpoint,
            ip=text,
            mac=mac_for_ip(text),
            prefixlen=self.addressing.subnet.prefixlen,
            gateway=self.network.gateway,
        )

    def held(self) -> list[tuple[str, IPv4Address]]:
        """(endpoint, address) pairs in address order."""
        return sorted(self.by_endpoint.items(), key=lambda kv: int(kv[1]))


# --- the manager's state ----------------------------------------------------------------


class Cluster:
    """Network definitions, VNIs and addresses of one cluster, as a manager keeps them.

    ``default_pool`` / ``default_size``: where subnets come from when a spec has none
    (Docker's defaults: 10.0.0.0/8 in /24 blocks). ``vni_start`` .. ``vni_end``: the
    VNI range, inside 4096 .. 2**24 - 1.
    """

    def __init__(
        self,
        *,
        default_pool: str = "10.0.0.0/8",
        default_size: int = 24,
        vni_start: int = VNI_MIN,
        vni_end: int = VNI_MAX,
    ) -> None:
        try:
            pool = field_subnet("default_pool", default_pool)
        except AddressError as err:
            raise InvalidSpec(str(err)) from None
        check_int("default_size", default_size)
        if not pool.prefixlen <= default_size <= MAX_PREFIX:
            raise InvalidSpec(
                f"default_size={default_size}: expected {pool.prefixlen}..{MAX_PREFIX} "
                f"(a block inside default_pool {pool} with at least 2 host addresses)"
            )
        check_int("vni_start", vni_start)
        check_int("vni_end", vni_end)
        if not VNI_MIN <= vni_start <= VNI_MAX:
            raise InvalidSpec(
                f"vni_start={vni_start}: expected {VNI_MIN}..{VNI_MAX} "
                "(lower VNIs collide with 802.1Q VLAN ids)"
            )
        if not vni_start <= vni_end <= VNI_MAX:
            raise InvalidSpec(f"vni_end={vni_end}: expected {vni_start}..{VNI_MAX}")
        self._pool = pool
        self._default_size = default_size
        self._vni_start = vni_start
        self._vni_end = vni_end
        self._created = 0  # networks ever created: feeds the id so re-creation differs
        self._nets: dict[str, _NetState] = {}  # by name, in creation order
        self._by_id: dict[str, str] = {}
        self._vnis: set[int] = set()

    # --- networks ----------------------------------------------------------------------

    def create_network(self, spec: NetworkSpec) -> Network:
        """Validate ``spec``, pick subnet and VNI, and record the network."""
        addressing = validate_spec(spec)
        if spec.name in self._nets:
            raise NetworkExists(f"network with name {spec.name} already exists")
        if addressing is None:
            subnet = carve_subnet(self._pool, self._default_size, self._subnets())
            if subnet is None:
                raise AddressExhausted(
                    f"default_pool={str(self._pool)!r}: no free /{self._default_size} left "
                    f"for network {spec.name}; expected a free block or an explicit subnet"
                )
            addressing = plan_addressing(subnet)
        else:
            self._check_overlap(spec.name, addressing.subnet)
        vni = self._free_vni(spec.name)
        net_id = network_id(spec.name, self._created)
        while net_id in self._by_id:  # a 100-bit collision: skip the counter, don't fail
            self._created += 1
            net_id = network_id(spec.name, self._created)
        self._created += 1
        network = build_network(spec, net_id, vni, addressing)
        self._install(network, addressing)
        return network

    def remove_network(self, name: str) -> Network:
        """Forget a network, freeing its VNI and subnet.

        Refused with :class:`NetworkInUse`, listing the endpoints, while any endpoint
        holds an address on it.
        """
        state = self._state(name)
        network = state.network
        if state.by_endpoint:
            held = state.held()
            listed = ", ".join(f"{ep} ({ip})" for ep, ip in held[:20])
            more = f" and {len(held) - 20} more" if len(held) > 20 else ""
            raise NetworkInUse(
                f"network {network.name} id {network.id} has active endpoints: {listed}{more}"
            )
        del self._nets[network.name]
        del self._by_id[network.id]
        self._vnis.discard(network.vni)
        return network

    def network(self, name_or_id: str) -> Network:
        """The network with this exact name or id."""
        return self._state(name_or_id).network

    def networks(self) -> list[Network]:
        """All networks, in creation order."""
        return [s.network for s in self._nets.values()]

    # --- addresses ---------------------------------------------------------------------

    def allocate(
        self, network: str, endpoint: str, *, ip: str | None = None, standalone: bool = True
    ) -> Allocation:
        """Give ``endpoint`` an address on ``network`` (name or id).

        ``standalone`` is a container started with ``docker run --network``: allowed
        only on attachable networks. Services (``standalone=False``) may use any
        network. ``ip`` asks for a specific free address of the subnet; otherwise the
        next free address of the ip-range is taken.
        """
        state = self._state(network)
        name = state.network.name
        if not isinstance(endpoint, str) or not endpoint:
            raise InvalidSpec(f"endpoint={endpoint!r}: expected a non-empty name")
        if check_bool("standalone", standalone) and not state.network.attachable:
            raise NotAttachable(f"network {name} is not manually attachable")
        held = state.by_endpoint.get(endpoint)
        if held is not None:
            raise EndpointExists(
                f"endpoint={endpoint!r}: already holds {held} on network {name}; "
                "expected a new endpoint name"
            )
        pool = state.pool
        if ip is None:
            addr = pool.allocate()
            if addr is None:
                raise AddressExhausted(
                    f"network {name}: no free address in ip_range {state.network.ip_range} "
                    f"({pool.span_size} addresses, {pool.span_usable} usable, all allocated)"
                )
        else:
            addr = self._check_requested(state, ip)
            pool.claim(addr)
        state.by_endpoint[endpoint] = addr
        return state.allocation(endpoint, addr)

    def release(self, network: str, endpoint: str) -> Allocation:
        """Return ``endpoint``'s address on ``network``.

        The address goes back to the pool but is reused only after the rest of the
        ip-range has been handed out (see :class:`~overlaysim.core.ipam.AddressPool`).
        """
        state = self._state(network)
        addr = self._held(state, endpoint)
        del state.by_endpoint[endpoint]
        state.pool.release(addr)
        return state.allocation(endpoint, addr)

    def allocation(self, network: str, endpoint: str) -> Allocation:
        """The address ``endpoint`` holds on ``network``."""
        state = self._state(network)
        return state.allocation(endpoint, self._held(state, endpoint))

    def allocations(self, network: str) -> list[Allocation]:
        """Every allocation on ``network``, in address order."""
        state = self._state(network)
        return [state.allocation(ep, addr) for ep, addr in state.held()]

    # --- plain data ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain data, safe for msgpack and JSON.

        Keys are strings; values are str, int, bool, None, lists and dicts.
        :meth:`restore` inverts it exactly, including where the next dynamic
        allocation of each network starts.
        """
        networks = []
        for state in self._nets.values():
            net = state.network
            networks.append(
                {
                    "name": net.name,
                    "id": net.id,
                    "vni": net.vni,
                    "subnet": net.subnet,
                    "gateway": net.gateway,
                    "ip_range": net.ip_range,
                    "aux_addresses": dict(net.aux_addresses),
                    "attachable": net.attachable,
                    "encrypted": net.encrypted,
                    "mtu": net.mtu,
                    "labels": dict(net.labels),
                    "attachment": net.attachment,
                    "cursor": state.pool.cursor,
                    "endpoints": [[ep, str(addr)] for ep, addr in state.held()],
                }
            )
        return {
            "format": SNAPSHOT_FORMAT,
            "default_pool": str(self._pool),
            "default_size": self._default_size,
            "vni_start": self._vni_start,
            "vni_end": self._vni_end,
            "created": self._created,
            "networks": networks,
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> Cluster:
        """Rebuild a cluster from :meth:`snapshot` output, checking every rule again.

        A snapshot that breaks a rule (overlap, duplicate VNI or address, address
        outside its subnet, ...) raises :class:`InvalidSpec` naming the entry.
        """
        if not isinstance(data, dict):
            raise InvalidSpec(f"snapshot={type(data).__name__}: expected a mapping")
        if data.get("format") != SNAPSHOT_FORMAT:
            raise InvalidSpec(f"snapshot format={data.get('format')!r}: expected {SNAPSHOT_FORMAT}")
        try:
            cluster = cls(
                default_pool=data["default_pool"],
                default_size=data["default_size"],
                vni_start=data["vni_start"],
                vni_end=data["vni_end"],
            )
            created = check_int("created", data["created"])
            networks = data["networks"]
        except KeyError as err:
            raise InvalidSpec(f"snapshot: missing field {err.args[0]!r}") from None
        if not isinstance(networks, list):
            raise InvalidSpec(f"snapshot networks={networks!r}: expected a list")
        for index, entry in enumerate(networks):
            try:
                cluster._restore_network(entry)
            except ClusterError as err:
                raise InvalidSpec(f"snapshot networks[{index}]: {err}") from None
            except (KeyError, TypeError, AttributeError) as err:
                raise InvalidSpec(
                    f"snapshot networks[{index}]: malformed entry ({err!r})"
                ) from None
        if created < len(cluster._nets):
            raise InvalidSpec(
                f"snapshot created={created}: expected at least {len(cluster._nets)} "
                "(one per network)"
            )
        cluster._created = created
        return cluster

    # --- internals -----------------------------------------------------------------------

    def _state(self, name_or_id: str) -> _NetState:
        state = self._nets.get(name_or_id)
        if state is None and name_or_id in self._by_id:
            state = self._nets[self._by_id[name_or_id]]
        if state is None:
            raise NetworkNotFound(f"network {name_or_id} not found")
        return state

    @staticmethod
    def _held(state: _NetState, endpoint: str) -> IPv4Address:
        addr = state.by_endpoint.get(endpoint)
        if addr is None:
            raise EndpointNotFound(
                f"endpoint={endpoint!r}: holds no address on network {state.network.name}"
            )
        return addr

    def _subnets(self) -> list[IPv4Network]:
        return [s.addressing.subnet for s in self._nets.values()]

    def _check_overlap(self, name: str, subnet: IPv4Network) -> None:
        for other in self._nets.values():
            if other.addressing.subnet.overlaps(subnet):
                raise SubnetOverlap(
                    f"network {name} subnet {subnet} overlaps network {other.network.name} "
                    f"subnet {other.addressing.subnet}"
                )

    def _free_vni(self, name: str) -> int:
        # Lowest free: networks are few, so a walk over the held set is cheap.
        vni = self._vni_start
        while vni in self._vnis:
            vni += 1
        if vni > self._vni_end:
            raise VniExhausted(
                f"network {name}: no free VNI in {self._vni_start}..{self._vni_end} "
                f"({len(self._vnis)} held); expected a wider vni_start..vni_end range"
            )
        return vni

    def _check_requested(self, state: _NetState, ip: object) -> IPv4Address:
        """Parse a requested address and check it can be handed out."""
        net = state.network
        try:
            addr = parse_address(ip)
            check_host("ip", ip, addr, state.addressing.subnet)
        except AddressError as err:
            raise InvalidSpec(f"{err} (network {net.name})") from None
        except ValueError as err:
            raise InvalidSpec(f"ip={ip!r}: {err}") from None
        if addr == state.addressing.gateway:
            raise AddressInUse(f"ip={ip!r}: is the gateway of network {net.name}")
        for key, value in state.addressing.aux.items():
            if value == addr:
                raise AddressInUse(
                    f"ip={ip!r}: is reserved as aux_addresses[{key!r}] of network {net.name}"
                )
        if state.pool.is_taken(addr):
            owner = next(ep for ep, held in state.by_endpoint.items() if held == addr)
            raise AddressInUse(
                f"ip={ip!r}: already allocated to endpoint {owner!r} on network {net.name}"
            )
        return addr

    def _install(self, network: Network, addressing: Addressing) -> _NetState:
        state = _NetState(network, addressing, addressing.new_pool())
        self._nets[network.name] = state
        self._by_id[network.id] = network.name
        self._vnis.add(network.vni)
        return state

    def _restore_network(self, entry: dict[str, Any]) -> None:
        spec = NetworkSpec(
            name=entry["name"],
            subnet=entry["subnet"],
            gateway=entry["gateway"],
            ip_range=entry["ip_range"],
            aux_addresses=entry["aux_addresses"],
            attachable=entry["attachable"],
            encrypted=entry["encrypted"],
            mtu=entry["mtu"],
            labels=entry["labels"],
            attachment=entry.get("attachment", DEFAULT_ATTACHMENT),  # snapshots from before it
        )
        addressing = validate_spec(spec)
        if spec.name in self._nets:
            raise NetworkExists(f"network with name {spec.name} already exists")
        if addressing is None or entry["gateway"] is None or entry["ip_range"] is None:
            raise InvalidSpec("subnet, gateway, ip_range: expected all three resolved")
        if (
            str(addressing.subnet) != entry["subnet"]
            or str(addressing.ip_range) != entry["ip_range"]
        ):
            raise InvalidSpec(
                f"subnet={entry['subnet']!r} ip_range={entry['ip_range']!r}: "
                "expected canonical CIDR strings"
            )
        self._check_overlap(spec.name, addressing.subnet)
        vni = check_int("vni", entry["vni"])
        if not self._vni_start <= vni <= self._vni_end or vni in self._vnis:
            raise InvalidSpec(
                f"vni={vni}: expected a VNI in {self._vni_start}..{self._vni_end} "
                "not held by another network"
            )
        net_id = entry["id"]
        if not isinstance(net_id, str) or not re.fullmatch(r"[0-9a-f]{25}", net_id):
            raise InvalidSpec(f"id={net_id!r}: expected 25 lowercase hex characters")
        if net_id in self._by_id:
            raise InvalidSpec(f"id={net_id!r}: already used by network {self._by_id[net_id]}")
        state = self._install(build_network(spec, net_id, vni, addressing), addressing)
        endpoints = entry["endpoints"]
        if not isinstance(endpoints, list):
            raise InvalidSpec(f"endpoints={endpoints!r}: expected a list of [endpoint, ip]")
        for pair in endpoints:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise InvalidSpec(f"endpoints entry {pair!r}: expected [endpoint, ip]")
            # Restored allocations were admitted once; the attachable rule is not re-run.
            self.allocate(spec.name, pair[0], ip=pair[1], standalone=False)
        cursor = check_int("cursor", entry["cursor"])
        try:
            state.pool.cursor = cursor
        except ValueError as err:
            raise InvalidSpec(f"cursor={cursor}: {err}") from None
