"""Authenticated encryption of control-plane packets with a rotating keyring.

Modelled on memberlist's gossip encryption: every node holds a keyring of AES keys
(16, 24 or 32 bytes); packets are sealed with the *primary* key and opened by trying
every installed key, primary first, so a cluster can rotate keys without a flag day.

Sealed packet layout (``OVERHEAD`` = 29 bytes more than the plaintext)::

    +---------+------------------+---------------------------+------------+
    | version |   nonce (12 B)   |  ciphertext (len(plain))  |  tag (16 B) |
    |  1 byte |                  |        AES-GCM            |            |
    +---------+------------------+---------------------------+------------+

The version byte is authenticated too (it is prepended to the caller's associated
data), so a packet cannot be relabelled. Every way a peer's packet can fail — wrong
version, too short, no key authenticates it — raises :class:`GossipAuthError`, a
:class:`~overlaysim.core.wire.WireError`, so a driver's existing count-and-drop path
handles it.

The module is pure: the nonce is an argument. Drivers pass ``os.urandom(NONCE_SIZE)``;
the simulator and tests may pass :func:`nonce_from` a seeded ``random.Random``. A nonce
must never repeat under one key (AES-GCM then leaks the XOR of plaintexts and allows
forgeries): random 96-bit nonces are safe for about 2**32 packets per key, one more
reason to rotate.

Rotation, as in memberlist, is three cluster-wide steps, each finished on every node
before the next starts: :meth:`GossipKeyring.add` the new key, :meth:`~GossipKeyring.use`
it, :meth:`~GossipKeyring.remove` the old one. Any two nodes at most one step apart can
always read each other.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from overlaysim.core.wire import MAX_DATAGRAM, Message, WireError, decode, encode

#: Version byte of the sealed format (memberlist's "no padding" AES-GCM version).
SEAL_VERSION = 1
#: AES-GCM nonce length.
NONCE_SIZE = 12
#: AES-GCM authentication tag length.
TAG_SIZE = 16
#: Bytes a sealed packet adds to its plaintext: version + nonce + tag.
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
#: Accepted AES key lengths (AES-128, AES-192, AES-256).
KEY_SIZES = (16, 24, 32)
#: Largest plaintext that still fits :data:`~overlaysim.core.wire.MAX_DATAGRAM` sealed.
MAX_SEALED_PLAINTEXT = MAX_DATAGRAM - OVERHEAD

_HEADER = bytes([SEAL_VERSION])


class GossipAuthError(WireError):
    """A packet is not a sealed packet any installed key authenticates. Count and drop."""


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise ValueError(f"key must be bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) not in KEY_SIZES:
        raise ValueError(f"key must be 16, 24 or 32 bytes (AES-128/192/256), got {len(key)}")
    return key


class GossipKeyring:
    """The AES keys a node accepts, one of which (the primary) it seals with.

    Keys are kept in order with the primary first, which is also the order
    :func:`open_` tries them in. The keyring is local, mutable state of one node; it
    never appears in ``repr`` so key material does not end up in logs.
    """

    __slots__ = ("_keys", "_ciphers")

    def __init__(self, keys: Sequence[bytes], primary: bytes | None = None) -> None:
        """Install ``keys``; ``primary`` (installed if missing) defaults to ``keys[0]``.

        Raises ``ValueError`` for a key of the wrong type or size, or no key at all.
        """
        self._keys: list[bytes] = []
        self._ciphers: dict[bytes, AESGCM] = {}
        for key in keys:
            self.add(key)
        if primary is not None:
            self.add(primary)
            self.use(primary)
        if not self._keys:
            raise ValueError("a keyring needs at least one key")

    def __repr__(self) -> str:
        return f"GossipKeyring({len(self._keys)} keys)"

    @property
    def keys(self) -> tuple[bytes, ...]:
        """All installed keys, primary first."""
        return tuple(self._keys)

    @property
    def primary(self) -> bytes:
        """The key new packets are sealed with."""
        return self._keys[0]

    def add(self, key: bytes) -> None:
        """Install ``key`` for opening (rotation step 1). Adding a present key does nothing."""
        key = _check_key(key)
        if key in self._ciphers:
            return
        self._keys.append(key)
        self._ciphers[key] = AESGCM(key)

    def use(self, key: bytes) -> None:
        """Make an installed ``key`` the primary (rotation step 2)."""
        key = _check_key(key)
        if key not in self._ciphers:
            raise ValueError("cannot use a key that is not installed; add it first")
        self._keys.remove(key)
        self._keys.insert(0, key)

    def remove(self, key: bytes) -> None:
        """Uninstall a non-primary ``key`` (rotation step 3)."""
        key = _check_key(key)
        if key not in self._ciphers:
            raise ValueError("cannot remove a key that is not installed")
        if key == self._keys[0]:
            raise ValueError("cannot remove the primary key; use another key first")
        self._keys.remove(key)
        del self._ciphers[key]

    def _cipher_list(self) -> list[AESGCM]:
        return [self._ciphers[k] for k in self._keys]


def nonce_from(rng: random.Random) -> bytes:
    """A nonce drawn from a seeded generator: for the simulator and tests only.

    ``random.Random`` is predictable, so live drivers use ``os.urandom(NONCE_SIZE)``.
    """
    return rng.randbytes(NONCE_SIZE)


def seal(keyring: GossipKeyring, plaintext: bytes, *, nonce: bytes, aad: bytes = b"") -> bytes:
    """Encrypt and authenticate ``plaintext`` with the primary key.

    ``nonce`` must be :data:`NONCE_SIZE` fresh random bytes (never reused under one
    key); ``aad`` is authenticated but not sent, and must match on :func:`open_`.
    Raises ``ValueError`` for a nonce of the wrong size (a local bug, not a peer's).
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    nonce = bytes(nonce)
    cipher = keyring._ciphers[keyring.primary]
    return _HEADER + nonce + cipher.encrypt(nonce, bytes(plaintext), _HEADER + aad)


def open_(keyring: GossipKeyring, packet: bytes, aad: bytes = b"") -> bytes:
    """Authenticate and decrypt a sealed ``packet``, trying every key, primary first.

    Raises :class:`GossipAuthError` if the packet is too short, has an unknown version,
    or no installed key authenticates it (wrong key, tampering, wrong ``aad``).
    """
    packet = bytes(packet)
    if len(packet) < OVERHEAD:
        raise GossipAuthError(f"sealed packet of {len(packet)} bytes is shorter than {OVERHEAD}")
    if packet[0] != SEAL_VERSION:
        raise GossipAuthError(f"unsupported seal version {packet[0]} (expected {SEAL_VERSION})")
    nonce = packet[1 : 1 + NONCE_SIZE]
    body = packet[1 + NONCE_SIZE :]
    header_aad = _HEADER + aad
    for cipher in keyring._cipher_list():
        try:
            return cipher.decrypt(nonce, body, header_aad)
        except InvalidTag:
            continue  # sealed with another key, or forged: try the next one
    raise GossipAuthError("no installed key authenticates the packet")


def encode_sealed(msg: Message, keyring: GossipKeyring, nonce: bytes, aad: bytes = b"") -> bytes:
    """``wire.encode`` then :func:`seal`; the result is ``OVERHEAD`` bytes longer.

    Like ``wire.encode`` it does not enforce a size: the caller compares the sealed
    length against its limit (see :data:`MAX_SEALED_PLAINTEXT`).
    """
    return seal(keyring, encode(msg), nonce=nonce, aad=aad)


def decode_sealed(
    data: bytes, keyring: GossipKeyring, max_size: int = MAX_DATAGRAM, aad: bytes = b""
) -> Message:
    """:func:`open_` then ``wire.decode``; ``max_size`` bounds the *sealed* packet.

    Raises :class:`~overlaysim.core.wire.WireError` for an oversized packet (checked
    before any decryption) or a bad message, and :class:`GossipAuthError` (a
    ``WireError``) for a packet that does not authenticate.
    """
    if len(data) > max_size:
        raise WireError(f"sealed packet of {len(data)} bytes exceeds limit of {max_size}")
    plaintext = open_(keyring, data, aad)
    return decode(plaintext, max(max_size - OVERHEAD, 0))
