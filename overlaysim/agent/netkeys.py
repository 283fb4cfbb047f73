"""The manager's ring of ESP keys for encrypted overlay networks (pure, no I/O).

Like Docker's swarm managers, one manager holds the cluster-wide keys of the encrypted
data path and hands them to agents; agents install them with
:meth:`overlaysim.core.esp.Keyring.install`. The ring always holds three keys, oldest
first, and the middle one is the primary: ``[retiring, primary, next]``.

:meth:`NetworkKeys.rotate` moves the ring exactly as :meth:`~overlaysim.core.esp.Keyring.rotate`
moves an installed keyring: append a new key, drop the oldest, the former ``next`` becomes
the primary. So an agent that installed generation *n* and one that installed *n + 1*
still exchange packets both ways (the first sends with a key the second still receives,
the second with the key the first installed as ``next``).

The ring travels as plain data (msgpack/JSON-safe apart from ``bytes``)::

    {"generation": 4, "primary": 2210344577,
     "keys": [{"tag": 93120, "material": b"<20 bytes>"}, ...]}   # oldest first

:func:`keys_from_ring` checks such a map before anything is installed. Key material never
appears in ``repr`` or error messages.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from overlaysim.core.esp import KEY_LEN, SALT_LEN, Key

#: Keys in a ring: retiring, primary, next (the most :class:`esp.Keyring` installs).
RING_SIZE = 3
#: Bytes of one key's material: AES-128 key + salt.
MATERIAL_LEN = KEY_LEN + SALT_LEN
_TAG_LIMIT = 2**32


class NetworkKeys:
    """The cluster's ESP key ring, created on first use and rotated on demand.

    ``rng_bytes(n)`` supplies key material and tags; the default is ``os.urandom``, tests
    pass a seeded generator.
    """

    __slots__ = ("_rng_bytes", "_keys", "_generation")

    def __init__(self, rng_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self._rng_bytes = rng_bytes
        self._keys: list[Key] = []
        self._generation = 0

    def __repr__(self) -> str:
        return f"NetworkKeys(generation={self._generation}, tags={[k.tag for k in self._keys]})"

    @property
    def exists(self) -> bool:
        """Whether the ring has been created (by :meth:`ring` or :meth:`rotate`)."""
        return bool(self._keys)

    @property
    def generation(self) -> int:
        """1 for the first ring, +1 per rotation; 0 before the ring exists."""
        return self._generation

    def ring(self) -> dict[str, Any]:
        """The current ring as plain data, creating it (three new keys) on first call."""
        if not self._keys:
            for _ in range(RING_SIZE):
                self._keys.append(self._new_key())
            self._generation = 1
        return {
            "generation": self._generation,
            "primary": self._keys[1].tag,
            "keys": [{"tag": k.tag, "material": k.material} for k in self._keys],
        }

    def rotate(self) -> dict[str, Any]:
        """Append a new key, drop the oldest, make the former ``next`` the primary.

        Creates the ring first if it does not exist yet. Returns the new ring.
        """
        self.ring()
        self._keys = [*self._keys[1:], self._new_key()]
        self._generation += 1
        return self.ring()

    def _new_key(self) -> Key:
        # Random tags (not 1, 2, 3...) so a restarted manager never reuses a tag that
        # agents still hold with other material.
        taken = {k.tag for k in self._keys}
        while True:
            tag = int.from_bytes(self._rng_bytes(4), "big")
            if tag and tag not in taken:
                break
        material = bytes(self._rng_bytes(MATERIAL_LEN))
        if len(material) != MATERIAL_LEN:
            raise ValueError(f"rng_bytes({MATERIAL_LEN}) returned {len(material)} bytes")
        return Key(tag, material)


def _int_field(value: object, name: str, low: int, high: int) -> int:
    if type(value) is not int:
        raise ValueError(f"{name}: expected an integer, got {type(value).__name__}")
    if not low <= value < high:
        raise ValueError(f"{name}={value}: expected {low} <= {name} < {high}")
    return value


def keys_from_ring(ring: object) -> tuple[list[Key], int]:
    """``(keys oldest first, primary tag)`` of a ring map, for ``esp.Keyring.install``.

    Raises ``ValueError`` naming the offending field: a missing or mistyped field, material
    that is not :data:`MATERIAL_LEN` bytes, a tag outside 32 bits or repeated, no keys or
    more than three, a primary that is not among the tags.
    """
    if not isinstance(ring, dict):
        raise ValueError(f"ring: expected a map, got {type(ring).__name__}")
    for name in ("generation", "primary", "keys"):
        if name not in ring:
            raise ValueError(f"ring.{name}: missing")
    _int_field(ring["generation"], "ring.generation", 1, 2**63)
    entries = ring["keys"]
    if not isinstance(entries, list | tuple):
        raise ValueError(f"ring.keys: expected a list, got {type(entries).__name__}")
    if not 1 <= len(entries) <= RING_SIZE:
        raise ValueError(f"ring.keys: expected 1 to {RING_SIZE} keys, got {len(entries)}")
    keys: list[Key] = []
    for i, entry in enumerate(entries):
        where = f"ring.keys[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a map, got {type(entry).__name__}")
        if "tag" not in entry or "material" not in entry:
            missing = "tag" if "tag" not in entry else "material"
            raise ValueError(f"{where}.{missing}: missing")
        tag = _int_field(entry["tag"], f"{where}.tag", 0, _TAG_LIMIT)
        material = entry["material"]
        if not isinstance(material, bytes):
            raise ValueError(f"{where}.material: expected bytes, got {type(material).__name__}")
        if len(material) != MATERIAL_LEN:
            raise ValueError(
                f"{where}.material: expected {MATERIAL_LEN} bytes "
                f"({KEY_LEN}-byte AES key + {SALT_LEN}-byte salt), got {len(material)}"
            )
        if any(k.tag == tag for k in keys):
            raise ValueError(f"{where}.tag={tag}: repeats an earlier key's tag")
        keys.append(Key(tag, material))
    primary = _int_field(ring["primary"], "ring.primary", 0, _TAG_LIMIT)
    if primary not in {k.tag for k in keys}:
        raise ValueError(f"ring.primary={primary}: not among the tags {[k.tag for k in keys]}")
    return keys, primary
