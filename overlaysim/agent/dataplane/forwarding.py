"""Forwarding state: the remote endpoints of each network and their kernel entries.

A remote endpoint ``(ip, mac, vtep)`` becomes a static FDB entry ``mac -> vtep`` and
a permanent neighbour ``ip -> mac`` on the network's VXLAN device (proxy ARP answers
from it); on an encrypted network the same two maps are the ESP path's table
(:mod:`.encrypted`). :class:`Remotes` remembers the endpoints given per network, in
order: the most recently added wins an IP or MAC claimed twice (IP reuse), and
endpoints given before a sandbox exists are programmed when it is built.
:func:`diff` compares wanted and held entries for a reconcile, which repairs drift
both ways.
"""

from __future__ import annotations

from collections.abc import Iterable

from overlaysim.agent.dataplane.ports import norm_mac
from overlaysim.agent.nlbatch import NeighOp, NeighSocket
from overlaysim.core.endpoint import canonical_ipv4

#: A remote endpoint: (ip, mac, vtep).
Remote = tuple[str, str, str]
#: Kernel entries: FDB ``{mac: vtep}`` and neighbours ``{ip: mac}``.
Maps = tuple[dict[str, str], dict[str, str]]
#: What a network holds: FDB ``{(mac, vtep)}`` and neighbours ``{(ip, mac)}``.
Held = tuple[set[tuple[str, str]], set[tuple[str, str]]]


def norm_remote(ip: str, mac: str, vtep: str) -> Remote:
    """A remote endpoint in canonical form; ValueError for a bad field."""
    return canonical_ipv4(ip), norm_mac(mac), canonical_ipv4(vtep)


class _Claims:
    """One network's remote endpoints in order (later wins), indexed by IP and by MAC.

    The indexes answer "who holds this IP / MAC now" without a pass over the network,
    so one table event costs the same with 10 or 1,000 endpoints: each index keeps the
    claims on one key in the same relative order as :attr:`order`.
    """

    __slots__ = ("by_ip", "by_mac", "order")

    def __init__(self) -> None:
        self.order: dict[Remote, None] = {}
        self.by_ip: dict[str, dict[Remote, None]] = {}
        self.by_mac: dict[str, dict[Remote, None]] = {}

    def push(self, r: Remote) -> None:
        self.pop(r)
        self.order[r] = None
        self.by_ip.setdefault(r[0], {})[r] = None
        self.by_mac.setdefault(r[1], {})[r] = None

    def pop(self, r: Remote) -> None:
        if self.order.pop(r, 0) is None:
            for index, key in ((self.by_ip, r[0]), (self.by_mac, r[1])):
                claims = index[key]
                del claims[r]
                if not claims:
                    del index[key]


class Remotes:
    """Remote endpoints per network, as last given (local ones, at ``underlay_ip``, never)."""

    def __init__(self, underlay_ip: str) -> None:
        self.underlay_ip = underlay_ip
        self._by_net: dict[str, _Claims] = {}

    def add(self, network: str, remote: Remote) -> bool:
        """Remember ``remote`` as the newest claim on its IP and MAC; False if it is local."""
        if remote[2] == self.underlay_ip:
            return False
        claims = self._by_net.get(network)
        if claims is None:
            claims = self._by_net[network] = _Claims()
        claims.push(remote)
        return True

    def remove(self, network: str, remote: Remote) -> None:
        """Forget ``remote`` (an IP or MAC it claimed falls back to an older claim)."""
        claims = self._by_net.get(network)
        if claims is not None:
            claims.pop(remote)

    def replace(self, network: str, desired: Iterable[Remote]) -> None:
        """Remember exactly ``desired`` (sorted: the entry that sorts last wins a clash)."""
        claims = self._by_net[network] = _Claims()
        for r in sorted(norm_remote(*r) for r in desired):
            if r[2] != self.underlay_ip:
                claims.push(r)

    def holders(self, network: str, ip: str, mac: str) -> tuple[str | None, str | None]:
        """What ``maps(network)`` says for one MAC and one IP, without building it:
        the MAC's VTEP and the IP's MAC (None where nothing claims them)."""
        claims = self._by_net.get(network)
        if claims is None:
            return None, None
        on_mac, on_ip = claims.by_mac.get(mac), claims.by_ip.get(ip)
        vtep = next(reversed(on_mac))[2] if on_mac else None
        owner = next(reversed(on_ip))[1] if on_ip else None
        return vtep, owner

    def maps(self, network: str) -> Maps:
        """Kernel state wanted for ``network``: ``{mac: vtep}``, ``{ip: mac}``."""
        fdb: dict[str, str] = {}
        neigh: dict[str, str] = {}
        claims = self._by_net.get(network)
        for ip, mac, vtep in claims.order if claims else ():  # later entries win
            fdb[mac] = vtep
            neigh[ip] = mac
        return fdb, neigh


def diff(want: Maps, have: Held) -> dict[str, list]:
    """``{"added": [...], "removed": [...]}`` turning ``have`` into ``want``.

    Items are ``("fdb", mac, vtep)`` and ``("neigh", ip, mac)``, sorted.
    """
    fdb_want, neigh_want = set(want[0].items()), set(want[1].items())
    fdb_have, neigh_have = have
    removed = [("fdb", *e) for e in sorted(fdb_have - fdb_want)]
    removed += [("neigh", *e) for e in sorted(neigh_have - neigh_want)]
    added = [("fdb", *e) for e in sorted(fdb_want - fdb_have)]
    added += [("neigh", *e) for e in sorted(neigh_want - neigh_have)]
    return {"added": added, "removed": removed}


# --- a VXLAN device's entries ---------------------------------------------------------
# Written as netlink bursts (:mod:`overlaysim.agent.nlbatch`): a sandbox's whole table, a
# reconcile's repairs or one endpoint's two entries each go in one write, acks read once.


def vxlan_program(sock: NeighSocket, vx: int, maps: Maps) -> None:
    """Write every wanted entry (a new sandbox)."""
    fdb, neigh = maps
    ops = [NeighOp("set", "fdb", vx, mac, vtep) for mac, vtep in fdb.items()]
    ops += [NeighOp("set", "neigh", vx, mac, ip) for ip, mac in neigh.items()]
    sock.apply(ops)


def vxlan_sync(
    sock: NeighSocket, vx: int, remotes: Remotes, network: str, ip: str, mac: str
) -> None:
    """Bring the entries of one IP and one MAC in line with what ``remotes`` holds for
    ``network`` (only those two keys are looked up: a table event's cost does not grow
    with the network)."""
    vtep, owner = remotes.holders(network, ip, mac)
    fdb = {mac: vtep} if vtep is not None else {}
    neigh = {ip: owner} if owner is not None else {}
    sock.apply(sync_ops(vx, (fdb, neigh), [(ip, mac)]))


def sync_ops(vx: int, maps: Maps, touched: Iterable[tuple[str, str]]) -> list[NeighOp]:
    """The requests bringing the entries of each ``(ip, mac)`` in line with ``maps``."""
    fdb, neigh = maps
    ops = []
    for ip, mac in touched:
        if mac in fdb:
            ops.append(NeighOp("set", "fdb", vx, mac, fdb[mac]))
        else:
            ops.append(NeighOp("del", "fdb", vx, mac))  # no dst: the whole entry
        if ip in neigh:
            ops.append(NeighOp("set", "neigh", vx, neigh[ip], ip))
        else:
            ops.append(NeighOp("del", "neigh", vx, "", ip))
    return ops


def vxlan_apply(sock: NeighSocket, vx: int, changes: dict[str, list]) -> None:
    """Apply a :func:`diff`: removals first, then additions."""
    ops = []
    for kind, key, value in changes["removed"]:
        if kind == "fdb":
            ops.append(NeighOp("del", "fdb", vx, key, value))
        else:
            ops.append(NeighOp("del", "neigh", vx, "", key))
    for kind, key, value in changes["added"]:
        if kind == "fdb":
            ops.append(NeighOp("set", "fdb", vx, key, value))
        else:
            ops.append(NeighOp("set", "neigh", vx, value, key))
    sock.apply(ops)


def vxlan_held(sock: NeighSocket, vx: int) -> Held:
    """The VXLAN device's own FDB and neighbour entries."""
    return sock.entries(vx)
