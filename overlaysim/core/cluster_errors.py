"""The manager's refusals: :class:`ClusterError` and its kinds, and the small field
checks that raise :class:`InvalidSpec`.

Every message names the field and value at fault and what was expected. The manager's
wire protocol (``agent/manager.py``) sends the class name and rebuilds the same class on
the other side, so these names are part of that protocol.
"""

from __future__ import annotations


class ClusterError(ValueError):
    """A request the manager refuses. The message names the field, value and rule."""


class InvalidSpec(ClusterError):
    """A field has a malformed or out-of-range value."""


class NetworkExists(ClusterError):
    """A network with that name already exists."""


class NetworkNotFound(ClusterError):
    """No network has that name or id."""


class NetworkInUse(ClusterError):
    """The network still has allocated endpoints."""


class SubnetOverlap(ClusterError):
    """The subnet overlaps the subnet of an existing network."""


class AddressExhausted(ClusterError):
    """No free address (or no free subnet in the default pool) is left."""


class VniExhausted(ClusterError):
    """Every VNI in the configured range is held by a network."""


class NotAttachable(ClusterError):
    """A standalone container asked to join a network that is not attachable."""


class AddressInUse(ClusterError):
    """The requested address is allocated or reserved (gateway, aux address)."""


class EndpointExists(ClusterError):
    """The endpoint already holds an address on the network."""


class EndpointNotFound(ClusterError):
    """The endpoint holds no address on the network."""


def check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(f"{name}={value!r}: expected an integer")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidSpec(f"{name}={value!r}: expected true or false")
    return value


def check_str_map(name: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidSpec(f"{name}={value!r}: expected a mapping of strings to strings")
    return dict(value)
