"""Encrypted networks: the user-space ESP path behind a TAP uplink.

An encrypted network's sandbox has no VXLAN device: its bridge gets a TAP port served
by :class:`~overlaysim.agent.esp_tunnel.EspTunnel`, and its remote endpoints become
that path's forwarding table instead of kernel FDB and neighbour entries. The tunnel
is built with the first key ring; without keys an encrypted network is refused rather
than run in clear.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute

from overlaysim.agent import netns as kns
from overlaysim.agent.dataplane.forwarding import Held, Maps
from overlaysim.agent.dataplane.handles import DataPlaneError, index
from overlaysim.agent.dataplane.sandbox import BRIDGE, Sandbox, bring_up
from overlaysim.agent.esp_tunnel import EspTunnel, TunnelError
from overlaysim.core import esp


class Encryption:
    """The host's ESP path (one :class:`EspTunnel`, created with the first key ring)."""

    def __init__(
        self,
        *,
        underlay_ip: str,
        port: int,
        vxlan_port: int,
        host_netns: str | None,
        max_seq: int = esp.MAX_SEQ,
        on_rekey: Callable[[], None] | None = None,
    ) -> None:
        self.underlay_ip = underlay_ip
        self.port = port
        self.vxlan_port = vxlan_port
        self.host_netns = host_netns
        #: Highest ESP sequence number per SA (lowered only to run out in seconds).
        self.max_seq = esp.check_max_seq(max_seq)
        #: Asked for a rotation when an SA runs out (None: drop until the timer).
        self.on_rekey = on_rekey
        #: The encrypted data path, built with the first key ring.
        self.tunnel: EspTunnel | None = None

    @property
    def has_keys(self) -> bool:
        return self.tunnel is not None and self.tunnel.has_keys

    def install_keys(self, keys: list[esp.Key], primary: int) -> None:
        """Install the cluster's network key ring (oldest first; ``primary`` sends)."""
        if self.tunnel is None:
            self.tunnel = EspTunnel(
                local=self.underlay_ip,
                port=self.port,
                vxlan_port=self.vxlan_port,
                netns=kns.ns_path(self.host_netns) if self.host_netns else None,
                max_seq=self.max_seq,
                on_rekey=self.on_rekey,
            )
        self.tunnel.install_keys(keys, primary)

    def reset_peer(self, vtep: str) -> None:
        """The agent at ``vtep`` restarted: let the encrypted path accept its new SAs."""
        if self.tunnel is not None:
            self.tunnel.reset_peer(str(ipaddress.IPv4Address(vtep)))

    def build_tap(self, inner: IPRoute, sb: Sandbox) -> None:
        """Create the TAP uplink of ``sb`` (its bridge exists) and bring the sandbox up."""
        tunnel = self._tunnel()
        try:
            tunnel.add_network(sb.net.vni, sb.uplink, sb.mtu, kns.ns_path(sb.ns))
        except TunnelError as exc:
            raise DataPlaneError(
                f"network {sb.net.name!r}: encryption cannot be set up: {exc}"
            ) from exc
        try:
            sb.uplink_index = index(inner, sb.uplink)
            inner.link("set", index=sb.uplink_index, mtu=sb.mtu)
            inner.link("set", index=sb.uplink_index, master=index(inner, BRIDGE), state="up")
            bring_up(inner, sb)
        except Exception:
            tunnel.remove_network(sb.net.vni)
            raise

    def remove(self, sb: Sandbox) -> None:
        """Stop serving ``sb``'s TAP (before its namespace goes)."""
        if self.tunnel is not None:
            self.tunnel.remove_network(sb.net.vni)

    def push(self, sb: Sandbox, maps: Maps) -> None:
        """Replace the network's forwarding table whole."""
        self._tunnel().set_remote(sb.net.vni, *maps)

    def held(self, sb: Sandbox) -> Held:
        """The forwarding table as the ESP path holds it."""
        return self._tunnel().entries(sb.net.vni)

    def state(self, sandboxes: list[Sandbox]) -> dict[str, Any]:
        """Counters, key tags and SAs of the encrypted data path (empty when unused)."""
        tun = self.tunnel
        if tun is None:
            return {}
        nets = {
            sb.net.name: {
                "vni": sb.net.vni,
                "tap": sb.uplink,
                "counters": tun.counters(sb.net.vni),
                "sas": tun.spis(sb.net.vni),
            }
            for sb in sandboxes
            if sb.net.encrypted
        }
        tags, primary = tun.ring
        return {
            "port": tun.port,
            "keys": tags,
            "primary": primary,
            "counters": tun.counters(),
            "clear_vxlan_dropped": {str(k): v for k, v in tun.guard.dropped().items()},
            "networks": nets,
        }

    def close(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()

    def _tunnel(self) -> EspTunnel:
        if self.tunnel is None:
            raise DataPlaneError("the encrypted data path has no keys yet")
        return self.tunnel
