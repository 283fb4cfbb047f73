"""Address mechanics for overlay networks: parsing, subnet carving, per-network pools.

Only IPv4: the overlay carries IPv4 containers over a VXLAN-over-IPv4 underlay, and
MAC addresses are derived from the IPv4 bytes. Parsers raise plain :class:`ValueError`
with a short reason; the ``field_*`` / ``plan_addressing`` helpers raise
:class:`AddressError` naming the field and value, which :mod:`overlaysim.core.cluster`
re-raises as its own ``InvalidSpec``.

:class:`AddressPool` is the allocator of one network: a bitmap over the whole subnet
plus a cursor over the dynamic range, so handing out or returning an address never
walks the allocated set in Python (the search for a free bit is one C-level regex scan
over the packed bitmap).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

#: Longest prefix accepted for a network subnet: a /30 still has two host addresses.
MAX_PREFIX = 30

#: Blocks an overlay subnet must not touch, with the reason given in errors.
_FORBIDDEN: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "'this network' block"),
    (IPv4Network("127.0.0.0/8"), "loopback block"),
    (IPv4Network("224.0.0.0/4"), "multicast block"),
    (IPv4Network("240.0.0.0/4"), "reserved block"),
)

# Any byte that is not 0xff holds at least one free address.
_NOT_FULL = re.compile(rb"[^\xff]")


def parse_cidr(text: object) -> IPv4Network:
    """Parse an IPv4 network in CIDR notation; host bits must be zero."""
    if not isinstance(text, str):
        raise ValueError(
            f"expected a string in CIDR notation such as 10.0.1.0/24, got {type(text).__name__}"
        )
    if "/" not in text:
        raise ValueError("missing prefix length; expected CIDR notation such as 10.0.1.0/24")
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise ValueError("not a valid CIDR; expected e.g. 10.0.1.0/24") from None
    if iface.version != 4:
        raise ValueError("IPv6 is not supported; expected an IPv4 CIDR such as 10.0.1.0/24")
    net = iface.network
    if iface.ip != net.network_address:
        raise ValueError(f"host bits set; expected the network address {net}")
    return IPv4Network(net)


def parse_address(text: object) -> IPv4Address:
    """Parse a single IPv4 address (no prefix length)."""
    if not isinstance(text, str):
        raise ValueError(
            f"expected a string with an IPv4 address such as 10.0.1.5, got {type(text).__name__}"
        )
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("not a valid IP address; expected e.g. 10.0.1.5") from None
    if addr.version != 4:
        raise ValueError("IPv6 is not supported; expected an IPv4 address such as 10.0.1.5")
    return IPv4Address(addr)


def check_subnet(net: IPv4Network) -> None:
    """Reject subnets that cannot carry containers: too small, or in a special block."""
    if net.prefixlen > MAX_PREFIX:
        raise ValueError(
            f"too small; expected a prefix of /{MAX_PREFIX} or shorter (at least 2 host addresses)"
        )
    for block, why in _FORBIDDEN:
        if net.overlaps(block):
            raise ValueError(f"overlaps the {why} {block}; expected a unicast range")


def host_bounds(net: IPv4Network) -> tuple[IPv4Address, IPv4Address]:
    """First and last host address (network and broadcast addresses excluded)."""
    return net.network_address + 1, net.broadcast_address - 1


def carve_subnet(
    pool: IPv4Network, prefixlen: int, taken: Iterable[IPv4Network]
) -> IPv4Network | None:
    """Lowest ``/prefixlen`` inside ``pool`` that overlaps none of ``taken``.

    Walks ``taken`` once in address order, jumping the candidate past each network it
    collides with, so the cost grows with the number of networks, not the pool size.
    Returns None when the pool has no free block of that size.
    """
    if not pool.prefixlen <= prefixlen <= 32:
        raise ValueError(f"prefix /{prefixlen} does not fit inside {pool}")
    step = 1 << (32 - prefixlen)
    candidate = int(pool.network_address)  # aligned: pool prefix <= prefixlen
    for net in sorted(taken, key=lambda n: int(n.network_address)):
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if hi < candidate:
            continue
        if lo > candidate + step - 1:
            break
        candidate = (hi // step + 1) * step  # next aligned block after the collision
    if candidate + step - 1 > int(pool.broadcast_address):
        return None
    return IPv4Network((candidate, prefixlen))


class AddressError(ValueError):
    """A network's addressing is inconsistent; the message names the field and value."""


@dataclass(frozen=True, slots=True)
class Addressing:
    """A network's resolved addressing: subnet, gateway, dynamic range, aux addresses."""

    subnet: IPv4Network
    gateway: IPv4Address
    ip_range: IPv4Network
    aux: dict[str, IPv4Address]

    def reserved(self) -> list[IPv4Address]:
        """Addresses never handed out: network, broadcast, gateway and aux addresses."""
        net = self.subnet
        return [net.network_address, net.broadcast_address, self.gateway, *self.aux.values()]

    def new_pool(self) -> AddressPool:
        """An empty allocator for this addressing."""
        return AddressPool(self.subnet, self.ip_range, self.reserved())


def _field_cidr(name: str, value: object) -> IPv4Network:
    try:
        return parse_cidr(value)
    except ValueError as err:
        raise AddressError(f"{name}={value!r}: {err}") from None


def _field_address(name: str, value: object) -> IPv4Address:
    try:
        return parse_address(value)
    except ValueError as err:
        raise AddressError(f"{name}={value!r}: {err}") from None


def check_host(name: str, value: object, addr: IPv4Address, subnet: IPv4Network) -> None:
    """``addr`` (given as ``name=value``) must be a host address of ``subnet``."""
    first, last = host_bounds(subnet)
    if addr not in subnet:
        raise AddressError(f"{name}={value!r}: outside subnet {subnet}; expected {first}..{last}")
    if not first <= addr <= last:
        kind = "network" if addr == subnet.network_address else "broadcast"
        raise AddressError(
            f"{name}={value!r}: is the {kind} address of {subnet}; expected {first}..{last}"
        )


def field_subnet(name: str, value: object) -> IPv4Network:
    """Parse and check a subnet given as field ``name``."""
    net = _field_cidr(name, value)
    try:
        check_subnet(net)
    except ValueError as err:
        raise AddressError(f"{name}={value!r}: {err}") from None
    return net


def plan_addressing(
    subnet: IPv4Network,
    *,
    gateway: object = None,
    ip_range: object = None,
    aux: Mapping[str, object] | None = None,
) -> Addressing:
    """Resolve and check a network's addressing inside an already checked ``subnet``.

    The gateway defaults to the first host address and the range to the whole subnet.
    Aux addresses must be distinct host addresses other than the gateway.
    """
    gw = host_bounds(subnet)[0]
    if gateway is not None:
        gw = _field_address("gateway", gateway)
        check_host("gateway", gateway, gw, subnet)
    span = subnet
    if ip_range is not None:
        span = _field_cidr("ip_range", ip_range)
        if not span.subnet_of(subnet):
            raise AddressError(
                f"ip_range={ip_range!r}: outside subnet {subnet}; expected a range inside {subnet}"
            )
    resolved: dict[str, IPv4Address] = {}
    seen: dict[IPv4Address, str] = {}
    for key, value in (aux or {}).items():
        name = f"aux_addresses[{key!r}]"
        if not key:
            raise AddressError(f"aux_addresses: empty name for {value!r}; expected a name")
        addr = _field_address(name, value)
        check_host(name, value, addr, subnet)
        if addr == gw:
            raise AddressError(f"{name}={value!r}: is the gateway; expected another address")
        if addr in seen:
            raise AddressError(
                f"{name}={value!r}: already reserved as aux_addresses[{seen[addr]!r}]; "
                "expected distinct addresses"
            )
        seen[addr] = key
        resolved[key] = addr
    return Addressing(subnet, gw, span, resolved)


def mac_for_ip(ip: str) -> str:
    """Docker-style MAC for an IPv4 address: ``02:42`` then the four address bytes.

    The 02 prefix marks a locally administered unicast address, so it cannot clash with
    a vendor MAC; deriving it from the IP means every node computes the same MAC
    without asking.
    """
    packed = parse_address(ip).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


def _lowest_zero_bit(byte: int) -> int:
    return ((byte + 1) & ~byte).bit_length() - 1


class AddressPool:
    """Which addresses of one subnet are taken: a packed bitmap and a cursor.

    Offsets count from the subnet's network address. ``reserved`` addresses (network,
    broadcast, gateway, aux) are marked taken for good and never released. Dynamic
    allocation searches only ``span`` (the ip-range) and continues after the previously
    allocated address, wrapping to the start of the span: a released address is reused
    only after the rest of the span has been tried, which keeps stale ARP/FDB entries on
    remote hosts from pointing a recycled address at a new container. Explicit claims
    may use any free address of the subnet and do not move the cursor.
    """

    __slots__ = (
        "_base",
        "_size",
        "_bits",
        "_reserved",
        "_span_lo",
        "_span_hi",
        "_span_free",
        "_cursor",
    )

    def __init__(
        self, subnet: IPv4Network, span: IPv4Network, reserved: Iterable[IPv4Address] = ()
    ) -> None:
        if not span.subnet_of(subnet):
            raise ValueError(f"range {span} is not inside {subnet}")
        self._base = int(subnet.network_address)
        self._size = subnet.num_addresses
        # Bit i of byte b is offset 8*b + i. Bits past the subnet stay 0: every search
        # is bounded by the span's end, so they are never returned.
        self._bits = bytearray((self._size + 7) // 8)
        self._span_lo = int(span.network_address) - self._base
        self._span_hi = self._span_lo + span.num_addresses
        self._span_free = span.num_addresses
        self._cursor = self._span_lo
        offsets = {self._offset(addr) for addr in reserved}
        self._reserved = frozenset(offsets)
        for off in offsets:
            self._set(off)

    # --- queries -------------------------------------------------------------------

    @property
    def span_size(self) -> int:
        """Addresses in the dynamic range, reserved ones included."""
        return self._span_hi - self._span_lo

    @property
    def span_usable(self) -> int:
        """Addresses in the dynamic range that can ever be handed out."""
        lo, hi = self._span_lo, self._span_hi
        return hi - lo - sum(1 for off in self._reserved if lo <= off < hi)

    @property
    def span_free(self) -> int:
        """Addresses in the dynamic range free right now."""
        return self._span_free

    @property
    def cursor(self) -> int:
        """Offset (from the subnet's first address) where the next search starts."""
        return self._cursor

    @cursor.setter
    def cursor(self, value: int) -> None:
        if not self._span_lo <= value < self._span_hi:
            raise ValueError(f"cursor {value} outside {self._span_lo}..{self._span_hi - 1}")
        self._cursor = value

    def is_taken(self, addr: IPv4Address) -> bool:
        """Whether ``addr`` (inside the subnet) is allocated or reserved."""
        off = self._offset(addr)
        return bool(self._bits[off >> 3] >> (off & 7) & 1)

    # --- changes -------------------------------------------------------------------

    def allocate(self) -> IPv4Address | None:
        """Take the first free address at or after the cursor (wrapping); None if full."""
        if self._span_free == 0:
            return None
        off = self._search(self._cursor, self._span_hi)
        if off is None:
            off = self._search(self._span_lo, self._cursor)
        if off is None:  # unreachable while _span_free is right; fail loudly if not
            raise AssertionError("span_free > 0 but no free bit found")
        self._set(off)
        self._cursor = off + 1 if off + 1 < self._span_hi else self._span_lo
        return IPv4Address(self._base + off)

    def claim(self, addr: IPv4Address) -> None:
        """Take a specific free address of the subnet."""
        if self.is_taken(addr):
            raise ValueError(f"{addr} is already taken")
        self._set(self._offset(addr))

    def release(self, addr: IPv4Address) -> None:
        """Return a taken, non-reserved address."""
        off = self._offset(addr)
        if off in self._reserved:
            raise ValueError(f"{addr} is reserved")
        if not self.is_taken(addr):
            raise ValueError(f"{addr} is not taken")
        self._bits[off >> 3] &= ~(1 << (off & 7)) & 0xFF
        if self._span_lo <= off < self._span_hi:
            self._span_free += 1

    # --- internals -----------------------------------------------------------------

    def _offset(self, addr: IPv4Address) -> int:
        off = int(addr) - self._base
        if not 0 <= off < self._size:
            raise ValueError(f"{addr} is outside the subnet")
        return off

    def _set(self, off: int) -> None:
        self._bits[off >> 3] |= 1 << (off & 7)
        if self._span_lo <= off < self._span_hi:
            self._span_free -= 1

    def _search(self, lo: int, hi: int) -> int | None:
        """First free offset in ``[lo, hi)``, or None."""
        if lo >= hi:
            return None
        first = lo >> 3
        byte = self._bits[first] | ((1 << (lo & 7)) - 1)  # bits below lo count as taken
        if byte != 0xFF:
            off = (first << 3) + _lowest_zero_bit(byte)
            return off if off < hi else None
        match = _NOT_FULL.search(self._bits, first + 1, (hi + 7) >> 3)
        if match is None:
            return None
        at = match.start()
        off = (at << 3) + _lowest_zero_bit(self._bits[at])
        return off if off < hi else None
