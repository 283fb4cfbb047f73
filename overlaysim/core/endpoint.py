"""The endpoint value: one container's address on one overlay network.

Every runtime announces a local container by writing one entry into the network's
:data:`ENDPOINTS` table, keyed by the container's name; its value is
:meth:`Endpoint.to_value`. Peers read it back with :meth:`Endpoint.from_value`, which
refuses a malformed value with :class:`ValueError` (a peer's junk never becomes a
kernel call).

``vtep`` is where the owner's tunnel ends, in the address space of the runtime's
underlay: the host's underlay IPv4 address for a live agent, the host name in the
simulator (whose underlay addresses hosts by name). A runtime that must program a
kernel asks for an IP with ``from_value(..., vtep_ip=True)``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

#: The table holding one entry per container endpoint (key = container name).
ENDPOINTS = "endpoints"

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def canonical_ipv4(text: str) -> str:
    """``text`` as a dotted-quad IPv4 address, as ``str(ipaddress.IPv4Address(text))``
    gives it for a string; ValueError otherwise.

    Through the C library (``inet_pton`` is as strict: four decimal octets, no leading
    zeros): an agent reads several addresses per table event, and ``ipaddress`` costs
    tens of microseconds each on a busy machine.
    """
    if not isinstance(text, str):  # ints and the like: ipaddress's own rules
        return str(ipaddress.IPv4Address(text))
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text))
    except (OSError, TypeError, ValueError):
        raise ValueError(f"{text!r} does not appear to be an IPv4 address") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A container's endpoint: ``name`` (the table key), ``ip``, ``mac``, ``vtep``.

    Construction normalises and checks the fields: ``ip`` an IPv4 address, ``mac``
    six lowercase hex pairs, ``vtep`` non-empty.
    """

    name: str
    ip: str
    mac: str
    vtep: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "ip", canonical_ipv4(self.ip))
        mac = str(self.mac).lower()
        if not _MAC.match(mac):
            raise ValueError(f"bad MAC address {self.mac!r}")
        object.__setattr__(self, "mac", mac)
        if not isinstance(self.vtep, str) or not self.vtep:
            raise ValueError(f"bad VTEP {self.vtep!r}")

    def to_value(self) -> dict[str, str]:
        """The table entry value (a small str -> str map, in a fixed key order)."""
        return {"name": self.name, "ip": self.ip, "mac": self.mac, "vtep": self.vtep}

    @classmethod
    def from_value(
        cls, value: Mapping[str, str], *, key: str = "", vtep_ip: bool = False
    ) -> Endpoint:
        """Read an entry value; ``key`` names it when the value carries no ``name``.

        ``vtep_ip`` also requires ``vtep`` to be an IPv4 address (and normalises it).
        Raises :class:`ValueError` naming the value and the bad field.
        """
        try:
            vtep = value["vtep"]
            if vtep_ip:
                vtep = canonical_ipv4(vtep)
            return cls(
                name=str(value.get("name", key)), ip=value["ip"], mac=value["mac"], vtep=vtep
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            shown = dict(value) if isinstance(value, Mapping) else value
            raise ValueError(f"endpoint value {shown!r}: {exc}") from None

    @property
    def remote(self) -> tuple[str, str, str]:
        """``(ip, mac, vtep)``: what a data plane programs for a remote endpoint."""
        return self.ip, self.mac, self.vtep
