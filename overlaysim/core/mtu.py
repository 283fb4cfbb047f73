"""The MTU rule of overlay networks: the underlay's MTU minus what VXLAN (and, for an
encrypted network, ESP) adds, or a smaller override.

One function, :func:`derive_mtu`, used by both runtimes and by the agent's data plane
(plain and encrypted sandboxes alike), so no second rule can drift from it.
"""

from __future__ import annotations

from overlaysim.core.cluster_errors import InvalidSpec, check_int

#: Bytes VXLAN over IPv4 adds around an inner IP packet: outer IPv4 20 + UDP 8 +
#: VXLAN 8 + inner Ethernet 14.
VXLAN_OVERHEAD = 50
#: Worst-case extra bytes of an encrypted network, budgeted as UDP-encapsulated ESP with
#: AES-GCM-128 around the VXLAN packet: UDP 8 + ESP header (SPI, sequence) 8 + IV 8 +
#: ICV 16 + trailer (pad length, next header) 2 + padding to 4 bytes, at most 3.
#: The user-space AEAD path (TAP frames sealed and sent over UDP) fits in the same budget.
ENCRYPTION_OVERHEAD = 45
#: Smallest IPv4 MTU (RFC 791).
MIN_MTU = 68
#: Largest MTU a spec may ask for before the underlay is known (IPv4 total length limit).
MAX_SPEC_MTU = 65535 - VXLAN_OVERHEAD


def derive_mtu(underlay_mtu: int, encrypted: bool, override: int | None = None) -> int:
    """MTU of a network's container interfaces on an underlay of ``underlay_mtu``.

    ``underlay - 50`` (VXLAN over IPv4), minus :data:`ENCRYPTION_OVERHEAD` (45) when
    encrypted: 1500 gives 1450 / 1405, 9000 gives 8950 / 8905. Docker fixes 1450 / 1424
    whatever the underlay, which breaks on smaller underlays. ``override`` wins but must
    lie in ``68 .. derived value``: anything larger would fragment or be dropped.
    """
    check_int("underlay_mtu", underlay_mtu)
    if not isinstance(encrypted, bool):
        raise InvalidSpec(f"encrypted={encrypted!r}: expected true or false")
    overhead = VXLAN_OVERHEAD + (ENCRYPTION_OVERHEAD if encrypted else 0)
    ceiling = underlay_mtu - overhead
    what = "VXLAN and encryption" if encrypted else "VXLAN"
    if ceiling < MIN_MTU:
        raise InvalidSpec(
            f"underlay_mtu={underlay_mtu}: too small for an overlay; expected at least "
            f"{MIN_MTU + overhead} ({MIN_MTU} plus {overhead} bytes of {what} overhead)"
        )
    if override is None:
        return ceiling
    check_int("mtu", override)
    if not MIN_MTU <= override <= ceiling:
        raise InvalidSpec(
            f"mtu={override}: expected {MIN_MTU}..{ceiling} (underlay MTU {underlay_mtu} "
            f"minus {overhead} bytes of {what} overhead)"
        )
    return override
