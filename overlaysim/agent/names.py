"""Every kernel name the project gives: namespaces, links, bridges, nftables tables.

One module builds them so that the prefix that marks the project's objects
(``overlaysim clean`` removes nothing without it) is spelled once, and so that the
IFNAMSIZ limit (15 characters) is checked in one place. Pure functions, no kernel
access.

Agent (per host, ``prefix`` from ``overlayd --prefix``, default :data:`PREFIX`):

* network sandbox namespace ``<prefix>-<host>-<vni>``, container namespace
  ``<prefix>-<host>-<container>`` (parts made safe by :func:`name_part`);
* the network's VXLAN device ``<prefix>-<vni>``, or its TAP ``<prefix>e<vni>`` when
  encrypted; container ports ``veth<hash>`` inside the sandbox;
* the nftables table :data:`ESP_TABLE` guarding encrypted VNIs.

Emulator (per run, ``tag`` two characters chosen free):

* underlay objects start ``<PREFIX><tag>`` (:func:`underlay_prefix`): bridges
  (:func:`switch_bridge`), switch ports (:func:`switch_port`, :func:`link_port`),
  Mininet host names (:func:`host_node`); its nftables table is :func:`underlay_table`.
"""

from __future__ import annotations

import hashlib
import re

#: The project's mark on every kernel object it names.
PREFIX = "osim"
#: Linux interface names hold at most 15 characters (IFNAMSIZ - 1).
IFNAME_MAX = 15
#: nftables table (inet family, per agent namespace) dropping cleartext VXLAN of encrypted VNIs.
ESP_TABLE = f"{PREFIX}_esp"
#: Name of the bridge inside every network sandbox.
SANDBOX_BRIDGE = "br0"
#: Scratch namespaces of ``overlaysim doctor``'s probes: ``<this><pid><suffix>``.
PROBE_NS_PREFIX = f"{PREFIX}-probe-"
#: Scratch objects of the capability probes (inside their own namespace).
PROBE_VXLAN = f"{PREFIX}pvx0"
PROBE_TABLE = f"{PREFIX}_probe"
PROBE_TAP = f"{PREFIX}probetap"
PROBE_NAT_TABLE = f"{PREFIX}_probe_nat"
#: nftables table (ip family, per container namespace) balancing service VIPs.
VIP_TABLE = f"{PREFIX}_vip"
# the veth pair inside two probe namespaces that measures the delay line's ceiling
DELAY_PROBE_A = f"{PREFIX}dla"
DELAY_PROBE_B = f"{PREFIX}dlb"
#: The delay line's calibration veth pair (inside two throwaway probe namespaces).
DELAY_CAL_A = f"{PREFIX}cla"
DELAY_CAL_B = f"{PREFIX}clb"

#: Names we may take as they are; everything else is hashed.
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,31}$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,5}$")


def check_prefix(prefix: str) -> str:
    """Validate a project prefix: short lowercase, so derived names fit IFNAMSIZ."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"prefix {prefix!r} must match {_PREFIX.pattern}")
    return prefix


def short_hash(text: str, n: int = 10) -> str:
    """Stable hex digest prefix of ``text`` (names, not security)."""
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def name_part(raw: str) -> str:
    """A namespace-name component for ``raw``.

    Kept verbatim when short and made of ``[A-Za-z0-9_.]``; otherwise (dashes,
    odd characters, too long, or all digits, which would collide with a VNI)
    replaced by ``x`` plus a hash. Dashes are excluded so that
    ``<prefix>-<host>-<thing>`` splits unambiguously.
    """
    if _SAFE_PART.match(raw) and not raw.isdigit():
        return raw
    return "x" + short_hash(raw)


# --- agent ------------------------------------------------------------------------------


def sandbox_netns(prefix: str, host: str, vni: int) -> str:
    """The namespace of network ``vni``'s sandbox on ``host``."""
    return f"{prefix}-{name_part(host)}-{vni}"


def container_netns(prefix: str, host: str, container: str) -> str:
    """The namespace of ``container`` on ``host``."""
    return f"{prefix}-{name_part(host)}-{name_part(container)}"


def network_device(prefix: str, vni: int, encrypted: bool = False) -> str:
    """The sandbox's uplink: VXLAN device, or the TAP of an encrypted network.

    At most 6 + 1 + 8 = 15 characters; ``e`` marks the TAP.
    """
    return f"{prefix}{'e' if encrypted else '-'}{vni}"


def port_name(container: str, salt: int) -> str:
    """Candidate name of ``container``'s veth end in a sandbox (``salt`` on a clash)."""
    return "veth" + short_hash(f"{container}/{salt}", 7)


# --- emulator ---------------------------------------------------------------------------


def underlay_prefix(tag: str) -> str:
    """The start of every root-namespace object of the run tagged ``tag``."""
    return f"{PREFIX}{tag}"


def switch_bridge(prefix: str, number: int) -> str:
    """The Linux bridge of the run's ``number``-th switch (from 1)."""
    return f"{prefix}s{number}"


def switch_port(bridge: str, number: int) -> str:
    """The root-namespace veth end of a switch's ``number``-th port (from 1)."""
    return f"{bridge}-{number}"


def link_port(prefix: str, link: int, side: str) -> str:
    """Per-link fallback name of a switch port (huge switches overflow IFNAMSIZ)."""
    return f"{prefix}p{_base36(link)}{side}"


def host_node(prefix: str, host: str) -> str:
    """The Mininet node name of topology host ``host``."""
    return f"{prefix}-{host}"


def underlay_table(tag: str) -> str:
    """The nftables table (inet, root namespace) of the run tagged ``tag``."""
    return f"{PREFIX}_{tag}"


def is_underlay_table(name: str, prefix: str = PREFIX) -> bool:
    """Whether an nftables table name is one an underlay run gave."""
    return name.startswith(f"{prefix}_")


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out
