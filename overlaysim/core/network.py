"""A network as the manager defines it: what a user asks for (:class:`NetworkSpec`),
what was created with every default resolved (:class:`Network`), an address held by an
endpoint (:class:`Allocation`), and the checks a spec must pass on its own.

Checks that need the other networks (overlaps, free VNIs, free addresses) are the
manager's, in :mod:`overlaysim.core.cluster`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from overlaysim.core.cluster_errors import InvalidSpec, check_bool, check_int, check_str_map
from overlaysim.core.ipam import AddressError, Addressing, field_subnet, plan_addressing
from overlaysim.core.mtu import MAX_SPEC_MTU, MIN_MTU

#: How containers hang off a network on each host: a veth pair into the network's bridge
#: (Docker's way) or a macvlan of its VXLAN device (one hop fewer; plain networks only).
#: The scenario schema's field type is this ``Literal``, so both name the same values.
Attachment = Literal["veth", "macvlan"]
ATTACHMENTS: tuple[str, ...] = get_args(Attachment)
DEFAULT_ATTACHMENT: Attachment = "veth"

#: Docker's rule for network names.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkSpec:
    """What a user asks for, like ``docker network create -d overlay``.

    Plain data: :meth:`Cluster.create_network` validates it, with the existing networks
    in view. ``subnet``, ``gateway``, ``ip_range`` are CIDR / address strings;
    ``aux_addresses`` maps a name to an address kept out of allocation; ``mtu`` None
    means "derive from the underlay" (:func:`derive_mtu`). ``attachment`` is one of
    :data:`ATTACHMENTS`; it changes how hosts plug containers in, not the protocol.
    """

    name: str
    subnet: str | None = None
    gateway: str | None = None
    ip_range: str | None = None
    aux_addresses: dict[str, str] = field(default_factory=dict)
    attachable: bool = False
    encrypted: bool = False
    mtu: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    attachment: str = DEFAULT_ATTACHMENT


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    """A network the manager created, with every default resolved.

    ``id`` is 25 hex characters derived from the name and a creation counter, so a
    network re-created under the same name gets a new id. ``ip_range`` is the dynamic
    range (the subnet when none was asked for). ``mtu`` is the override or None.
    """

    name: str
    id: str
    vni: int
    subnet: str
    gateway: str
    ip_range: str
    aux_addresses: dict[str, str] = field(default_factory=dict)
    attachable: bool = False
    encrypted: bool = False
    mtu: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    attachment: str = DEFAULT_ATTACHMENT


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """An address held by one endpoint on one network."""

    network: str
    endpoint: str
    ip: str
    mac: str
    prefixlen: int
    gateway: str


def validate_spec(spec: NetworkSpec) -> Addressing | None:
    """Check everything about ``spec`` that does not depend on other networks.

    Returns the resolved addressing, or None when the subnet is left to the pool.
    """
    if not isinstance(spec, NetworkSpec):
        raise InvalidSpec(f"spec={spec!r}: expected a NetworkSpec")
    if not isinstance(spec.name, str) or not _NAME_RE.fullmatch(spec.name):
        raise InvalidSpec(
            f"name={spec.name!r}: expected letters, digits, '_', '.', '-', starting with a "
            "letter or digit"
        )
    check_bool("attachable", spec.attachable)
    check_bool("encrypted", spec.encrypted)
    check_attachment(spec.attachment, spec.encrypted)
    if spec.mtu is not None:
        check_int("mtu", spec.mtu)
        if not MIN_MTU <= spec.mtu <= MAX_SPEC_MTU:
            raise InvalidSpec(f"mtu={spec.mtu}: expected {MIN_MTU}..{MAX_SPEC_MTU}")
    check_str_map("labels", spec.labels)
    aux = check_str_map("aux_addresses", spec.aux_addresses)
    if spec.subnet is None:
        for fname, value in (("gateway", spec.gateway), ("ip_range", spec.ip_range)):
            if value is not None:
                raise InvalidSpec(f"{fname}={value!r}: needs an explicit subnet; expected one")
        if aux:
            raise InvalidSpec(f"aux_addresses={aux!r}: needs an explicit subnet; expected one")
        return None
    try:
        subnet = field_subnet("subnet", spec.subnet)
        return plan_addressing(subnet, gateway=spec.gateway, ip_range=spec.ip_range, aux=aux)
    except AddressError as err:
        raise InvalidSpec(str(err)) from None


def check_attachment(attachment: object, encrypted: bool) -> None:
    """Raise :class:`InvalidSpec` unless ``attachment`` is known and fits the network."""
    if attachment not in ATTACHMENTS:
        raise InvalidSpec(f"attachment={attachment!r}: expected one of {', '.join(ATTACHMENTS)}")
    if attachment == "macvlan" and encrypted:
        raise InvalidSpec(
            "attachment='macvlan': expected a plain network; an encrypted network's "
            "containers attach through its bridge (attachment 'veth')"
        )


def attachment_record(attachment: str) -> dict[str, str]:
    """A network's attachment for a results manifest: nothing for the default, so that
    results folders of veth networks read as they did before the option existed."""
    return {} if attachment == DEFAULT_ATTACHMENT else {"attachment": attachment}


def network_id(name: str, counter: int) -> str:
    return hashlib.sha256(f"{name}\x00{counter}".encode()).hexdigest()[:25]


def build_network(spec: NetworkSpec, net_id: str, vni: int, addressing: Addressing) -> Network:
    return Network(
        name=spec.name,
        id=net_id,
        vni=vni,
        subnet=str(addressing.subnet),
        gateway=str(addressing.gateway),
        ip_range=str(addressing.ip_range),
        aux_addresses={k: str(v) for k, v in addressing.aux.items()},
        attachable=spec.attachable,
        encrypted=spec.encrypted,
        mtu=spec.mtu,
        labels=dict(spec.labels),
        attachment=spec.attachment,
    )
