"""ESP-in-UDP with AES-GCM-128 (RFC 4303, RFC 4106, RFC 3948) for encrypted overlays.

Pure codec: no sockets, no clocks. The driver passes sequence numbers in, carries the
sealed bytes over UDP (a dedicated port, so no non-ESP marker) and counts and drops
every :class:`EspError` raised on receive. Local misuse (reusing a sequence number,
running out of sequence space, an unknown peer) raises :class:`EspUsageError` instead:
those are bugs or a missed rotation, never the peer's fault.

Packet layout (the UDP payload)::

    SPI (4) | seq (4) | IV (8) | ciphertext(frame | pad | pad_len (1) | next_hdr (1)) | ICV (16)

* key material = 16-byte AES key + 4-byte salt; nonce = salt || IV; IV = a 32-bit
  per-boot prefix || the 32-bit sequence number (sequence numbers never repeat within a
  boot, prefixes differ between boots, so no nonce is reused under one key).
* AAD = SPI || seq (32-bit sequence numbers, no ESN; rekey before 2**32).
* next header = 143 (IANA "Ethernet"): the payload is a whole Ethernet frame.
* padding = 1, 2, 3, ... up to 4-byte alignment of the encrypted part (RFC 4303 §2.4).

SPIs are derived like Docker's: FNV-1a 32 over src VTEP IPv4 (4 bytes) || dst VTEP IPv4
(4 bytes) || key tag (4 bytes, big endian), lifted to >= 256 (0..255 are reserved).

The :class:`Keyring` keeps three keys (retiring, primary, next) and sends only with the
primary; see :meth:`Keyring.rotate` and docs/encryption.md for the rotation order.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NEXT_HEADER_ETHERNET = 143
HEADER_LEN = 8  # SPI + 32-bit sequence number
IV_LEN = 8
ICV_LEN = 16
KEY_LEN = 16
SALT_LEN = 4
OVERHEAD_MAX = HEADER_LEN + IV_LEN + ICV_LEN + 3 + 2  # worst-case padding + trailer
MIN_PACKET = HEADER_LEN + IV_LEN + 4 + ICV_LEN  # smallest aligned encrypted part is 4
SEQ_LIMIT = 2**32  # 32-bit sequence numbers (no ESN)
REKEY_MARGIN = 2**20  # refuse to seal this close to wrap-around: rotation must happen first
#: Highest sequence number an SA seals by default (then :class:`RekeyRequired`).
MAX_SEQ = SEQ_LIMIT - REKEY_MARGIN - 1
DEFAULT_WINDOW = 64
MIN_SPI = 256

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


class EspError(Exception):
    """A received packet is dropped. Raised for the peer's (or the network's) faults."""


class BadPacket(EspError):
    """Malformed: too short, misaligned, bad padding, wrong next header, sequence 0."""


class AuthFailed(EspError):
    """The ICV did not verify: tampered, corrupted, or sealed under another key."""


class Replay(EspError):
    """Duplicate, or older than the anti-replay window."""


class UnknownSpi(EspError):
    """No installed security association has this SPI (e.g. a retired key)."""


class EspUsageError(Exception):
    """Local misuse: a bug in the caller, not a bad packet."""


class RekeyRequired(EspUsageError):
    """The sequence space of this key is (nearly) spent: rotate before sending more."""


def check_max_seq(max_seq: int) -> int:
    """Return ``max_seq`` if it is a usable highest sequence number (1..:data:`MAX_SEQ`);
    ``ValueError`` naming the range otherwise."""
    if type(max_seq) is not int or not 1 <= max_seq <= MAX_SEQ:
        raise ValueError(f"max_seq={max_seq!r}: expected an integer in 1..{MAX_SEQ}")
    return max_seq


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a hash of ``data``."""
    h = _FNV_OFFSET
    for byte in data:
        h ^= byte
        h = (h * _FNV_PRIME) & 0xFFFFFFFF
    return h


def derive_spi(src: str, dst: str, tag: int, scope: int = 0) -> int:
    """SPI for traffic from VTEP ``src`` to VTEP ``dst`` under key ``tag``.

    FNV-1a over the packed IPv4 addresses and the big-endian 32-bit tag, as Docker does;
    values below 256 are reserved by RFC 4303, so those are moved up by 256.
    A non-zero ``scope`` (the network's VNI) is hashed in as four more bytes, so each
    network between the same two VTEPs has its own SAs and the receiver finds the
    network from the SPI alone (Docker needs no scope: its ESP carries VXLAN, VNI inside).
    """
    data = (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!I", tag & 0xFFFFFFFF)
    )
    if scope:
        data += struct.pack("!I", scope & 0xFFFFFFFF)
    spi = fnv1a_32(data)
    return spi + MIN_SPI if spi < MIN_SPI else spi


@dataclass(frozen=True, slots=True)
class Key:
    """One key of the ring: ``tag`` names it (cluster-wide, unique), ``material`` is
    the 16-byte AES key followed by the 4-byte salt (RFC 4106 §8.1)."""

    tag: int
    material: bytes

    def __post_init__(self) -> None:
        if len(self.material) != KEY_LEN + SALT_LEN:
            raise ValueError(f"key material must be {KEY_LEN + SALT_LEN} bytes")
        if not 0 <= self.tag < 2**32:
            raise ValueError("key tag must fit in 32 bits")

    def __repr__(self) -> str:  # keep key bytes out of logs
        return f"Key(tag={self.tag})"


class ReplayWindow:
    """RFC 4303 §3.4.3 sliding window over 32-bit sequence numbers.

    ``check`` before verifying the ICV (cheap early drop); ``accept`` only after it
    verified, so forged packets cannot move the window.
    """

    __slots__ = ("size", "top", "_bits", "_mask")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self.top = 0  # highest accepted sequence number (0: none yet)
        self._bits = 0  # bit i set: sequence number top - i was accepted
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> None:
        """Raise :class:`Replay` if ``seq`` is a duplicate or too old."""
        if seq > self.top:
            return
        offset = self.top - seq
        if offset >= self.size:
            raise Replay(f"sequence {seq} is older than the window (top {self.top})")
        if self._bits >> offset & 1:
            raise Replay(f"sequence {seq} already received")

    def accept(self, seq: int) -> None:
        """Record ``seq`` as received (after :meth:`check` and authentication)."""
        self.check(seq)
        if seq > self.top:
            self._bits = (self._bits << (seq - self.top) | 1) & self._mask
            self.top = seq
        else:
            self._bits |= 1 << (self.top - seq)


def _pad(length: int) -> bytes:
    # Encrypted part = frame + pad + 2 trailer bytes, aligned to 4 (RFC 4303 §2.4).
    n = -(length + 2) % 4
    return bytes(range(1, n + 1))


#: Padding by length (0..3) and the two trailer bytes after it (pad length, next header).
_PADS = tuple(bytes(range(1, n + 1)) for n in range(4))
_TRAILERS = tuple(bytes((n, NEXT_HEADER_ETHERNET)) for n in range(4))


class SecurityAssociation:
    """One direction of one key between two VTEPs.

    Outbound use: :meth:`seal` with strictly increasing sequence numbers starting at 1,
    up to ``max_seq`` (default :data:`MAX_SEQ`, just below the rekey margin of the 32-bit
    space; tests and the known-issues library lower it to run out in seconds).
    Inbound use: :meth:`open`, which enforces the anti-replay window.
    """

    __slots__ = (
        "spi", "key", "_aead", "_salt", "_last_sealed", "window", "_iv_prefix", "max_seq",
    )  # fmt: skip

    def __init__(
        self,
        spi: int,
        key: Key,
        window: int = DEFAULT_WINDOW,
        iv_prefix: int = 0,
        max_seq: int = MAX_SEQ,
    ) -> None:
        if not MIN_SPI <= spi < 2**32:
            raise ValueError("SPI must be in [256, 2**32)")
        check_max_seq(max_seq)
        self.max_seq = max_seq
        self.spi = spi
        self.key = key
        self._aead = AESGCM(key.material[:KEY_LEN])
        self._salt = key.material[KEY_LEN:]
        self._last_sealed = 0
        # High 32 bits of the explicit IV. A sender picks a fresh random prefix per boot,
        # so sequence numbers restarting at 1 after a crash never repeat a nonce.
        self._iv_prefix = struct.pack("!I", iv_prefix & 0xFFFFFFFF)
        self.window = ReplayWindow(window)

    def __repr__(self) -> str:
        return f"SecurityAssociation(spi={self.spi:#010x}, tag={self.tag})"

    @property
    def tag(self) -> int:
        """Tag of the key this SA uses."""
        return self.key.tag

    @property
    def last_sealed(self) -> int:
        """Highest sequence number sealed so far (0 before the first packet)."""
        return self._last_sealed

    def seal(self, frame: bytes, seq: int) -> bytes:
        """Encrypt ``frame`` as packet number ``seq`` (> every earlier one, >= 1).

        Raises :class:`RekeyRequired` beyond ``max_seq`` (near the end of the 32-bit
        sequence space by default) and
        :class:`EspUsageError` if ``seq`` does not increase (nonce reuse breaks GCM).
        """
        if seq > self.max_seq:
            raise RekeyRequired(f"SA {self.spi:#010x}: sequence {seq} needs a new key")
        if seq <= self._last_sealed:
            raise EspUsageError(f"sequence {seq} not above {self._last_sealed}")
        self._last_sealed = seq
        header = struct.pack("!II", self.spi, seq)
        iv = self._iv_prefix + struct.pack("!I", seq)
        pad = _pad(len(frame))
        plain = frame + pad + bytes((len(pad), NEXT_HEADER_ETHERNET))
        return header + iv + self._aead.encrypt(self._salt + iv, plain, header)

    def seal_next(self, frame: bytes) -> bytes:
        """:meth:`seal` with the next sequence number."""
        return self.seal(frame, self._last_sealed + 1)

    def seal_many(self, frames: list[bytes]) -> list[bytes]:
        """:meth:`seal_next` for each of ``frames``, in order: the same packets, with
        the per-call work (limit check, key lookups) done once for the batch.

        Raises :class:`RekeyRequired` before sealing any if the batch would reach the
        rekey margin, so a batch is sealed whole or not at all.
        """
        first = self._last_sealed + 1
        if first + len(frames) - 1 > self.max_seq:
            raise RekeyRequired(f"SA {self.spi:#010x}: sequence {first} needs a new key")
        encrypt, salt, prefix, spi = self._aead.encrypt, self._salt, self._iv_prefix, self.spi
        pack, join, pads, trailers = struct.pack, b"".join, _PADS, _TRAILERS
        out = []
        seq = first
        for frame in frames:
            header = pack("!II", spi, seq)
            iv = prefix + header[4:]
            n = -(len(frame) + 2) % 4
            plain = join((frame, pads[n], trailers[n]))
            out.append(join((header, iv, encrypt(salt + iv, plain, header))))
            seq += 1
        self._last_sealed = seq - 1
        return out

    def open(self, packet: bytes) -> bytes:
        """Verify and decrypt ``packet``; return the inner Ethernet frame.

        Raises an :class:`EspError` subclass for anything the driver should drop.
        """
        spi, seq = parse_header(packet)
        if spi != self.spi:
            raise UnknownSpi(f"SPI {spi:#010x} is not {self.spi:#010x}")
        if seq == 0:
            raise BadPacket("sequence number 0 is never sent")
        self.window.check(seq)
        view = memoryview(packet)  # slices below share the packet's bytes, no copies
        nonce = self._salt + view[HEADER_LEN : HEADER_LEN + IV_LEN]
        try:
            plain = self._aead.decrypt(nonce, view[HEADER_LEN + IV_LEN :], view[:HEADER_LEN])
        except InvalidTag:
            raise AuthFailed(f"ICV mismatch on SPI {spi:#010x} seq {seq}") from None
        pad_len, next_header = plain[-2], plain[-1]
        if next_header != NEXT_HEADER_ETHERNET:
            raise BadPacket(f"next header {next_header}, expected {NEXT_HEADER_ETHERNET}")
        end = len(plain) - 2 - pad_len
        pad = _PADS[pad_len] if pad_len < 4 else bytes(range(1, pad_len + 1))
        if end < 0 or plain[end:-2] != pad:
            raise BadPacket("bad padding")
        # Authentic and well formed: only now may it move the window.
        self.window.accept(seq)
        return plain[:end]


def parse_header(packet: bytes) -> tuple[int, int]:
    """Return ``(spi, seq)`` of a packet after checking its length; :class:`BadPacket`."""
    if len(packet) < MIN_PACKET:
        raise BadPacket(f"{len(packet)} bytes is shorter than {MIN_PACKET}")
    if (len(packet) - HEADER_LEN - IV_LEN - ICV_LEN) % 4:
        raise BadPacket("encrypted part is not 4-byte aligned")
    spi, seq = struct.unpack_from("!II", packet)
    if spi < MIN_SPI:
        raise BadPacket(f"reserved SPI {spi}")
    return spi, seq


class Keyring:
    """Up to three keys shared by the cluster and the SAs to each peer VTEP.

    Keys are held in install order: ``[retiring, primary, next]``. Every key receives;
    only the primary sends. A packet under a key no longer in the ring has an SPI the
    ring does not know and is rejected with :class:`UnknownSpi`.
    """

    MAX_KEYS = 3

    def __init__(
        self,
        local: str,
        window: int = DEFAULT_WINDOW,
        scope: int = 0,
        iv_prefix: int = 0,
        max_seq: int = MAX_SEQ,
    ) -> None:
        self.local = str(ipaddress.IPv4Address(local))
        self.window = window
        #: Highest sequence number each outbound SA seals (see :class:`SecurityAssociation`).
        self.max_seq = check_max_seq(max_seq)
        #: Hashed into every SPI (see :func:`derive_spi`): the network's VNI, or 0.
        self.scope = scope
        #: High half of every outbound IV: pass a fresh random value per boot.
        self.iv_prefix = iv_prefix
        # Every SA of an installed key by (direction, peer, tag), including those of
        # removed peers: a peer coming back continues its sequence numbers (starting at
        # 1 again would reuse nonces) and its replay window.
        self._sas: dict[tuple[str, str, int], SecurityAssociation] = {}
        self._keys: list[Key] = []
        self._primary: int | None = None
        self._peers: set[str] = set()
        self._outbound: dict[tuple[str, int], SecurityAssociation] = {}
        self._inbound: dict[int, SecurityAssociation] = {}

    @property
    def keys(self) -> tuple[Key, ...]:
        """Installed keys, oldest first."""
        return tuple(self._keys)

    @property
    def primary(self) -> int:
        """Tag of the key used for sending."""
        if self._primary is None:
            raise EspUsageError("no key installed")
        return self._primary

    def install(self, keys: list[Key] | tuple[Key, ...], primary_tag: int) -> None:
        """Replace the ring with ``keys`` (oldest first, at most three) and send with
        ``primary_tag``. SAs of keys kept keep their counters and windows."""
        tags = [k.tag for k in keys]
        if not keys or len(keys) > self.MAX_KEYS or len(set(tags)) != len(tags):
            raise EspUsageError("install needs 1 to 3 keys with distinct tags")
        if primary_tag not in tags:
            raise EspUsageError(f"primary tag {primary_tag} is not among {tags}")
        self._keys = list(keys)
        self._primary = primary_tag
        self._rebuild()

    def rotate(self, new_key: Key) -> int | None:
        """Advance one step: the ``next`` key becomes primary, ``new_key`` becomes
        ``next`` (receive only) and the oldest key is retired. Returns the retired tag.

        No packet is lost if every node finishes rotation *n* before any node starts
        rotation *n+1*: a node sends with a key every peer already receives (installed
        one rotation earlier as ``next``), and still receives the previous primary that
        slower peers keep sending with.
        """
        if new_key.tag in (k.tag for k in self._keys):
            raise EspUsageError(f"key tag {new_key.tag} is already installed")
        if len(self._keys) < 2:
            raise EspUsageError("rotate needs a primary and a next key installed")
        keys = self._keys + [new_key]
        retired = keys.pop(0) if len(keys) > self.MAX_KEYS else None
        primary = keys[keys.index(self._key(self.primary)) + 1].tag
        self._keys = keys
        self._primary = primary
        self._rebuild()
        return retired.tag if retired else None

    def add_peer(self, peer: str) -> None:
        """Start exchanging encrypted traffic with VTEP ``peer``."""
        self._peers.add(str(ipaddress.IPv4Address(peer)))
        self._rebuild()

    def remove_peer(self, peer: str) -> None:
        """Stop exchanging traffic with ``peer``. Its SAs are parked, not forgotten: if it
        comes back under the same keys, sequence numbers and replay windows continue."""
        self._peers.discard(str(ipaddress.IPv4Address(peer)))
        self._rebuild()

    def reset_peer(self, peer: str) -> None:
        """``peer`` restarted: its sequence numbers start again at 1, so open fresh
        replay windows for it. Our outbound SAs to it keep counting (nonces stay unique)."""
        peer = str(ipaddress.IPv4Address(peer))
        for key in self._keys:
            self._sas.pop(("in", peer, key.tag), None)
        self._rebuild()

    def outbound(self, peer: str) -> SecurityAssociation:
        """The SA to seal traffic for ``peer`` with (primary key)."""
        peer = str(ipaddress.IPv4Address(peer))
        try:
            return self._outbound[(peer, self.primary)]
        except KeyError:
            raise EspUsageError(f"unknown peer {peer}") from None

    @property
    def peers(self) -> frozenset[str]:
        """VTEPs with SAs."""
        return frozenset(self._peers)

    def inbound_spis(self) -> frozenset[int]:
        """SPIs this ring receives on (every key, every peer)."""
        return frozenset(self._inbound)

    def inbound(self, spi: int) -> SecurityAssociation:
        """The SA that receives packets with ``spi``; :class:`UnknownSpi` otherwise."""
        try:
            return self._inbound[spi]
        except KeyError:
            raise UnknownSpi(f"no SA for SPI {spi:#010x}") from None

    def seal(self, peer: str, frame: bytes) -> bytes:
        """Seal ``frame`` for ``peer`` with the primary key's next sequence number."""
        # fast path for the packet loop: peers are stored normalised, so a hit needs no
        # address parsing; a miss goes through outbound() for the checks and the error
        sa = self._outbound.get((peer, self._primary))  # type: ignore[arg-type]
        return (sa or self.outbound(peer)).seal_next(frame)

    def seal_many(self, peer: str, frames: list[bytes]) -> list[bytes]:
        """:meth:`seal` each of ``frames`` for ``peer``, in order (see
        :meth:`SecurityAssociation.seal_many`)."""
        sa = self._outbound.get((peer, self._primary))  # type: ignore[arg-type]
        return (sa or self.outbound(peer)).seal_many(frames)

    def seal_many_next_key(self, peer: str, frames: list[bytes]) -> list[bytes]:
        """:meth:`seal_many` with the ``next`` key (the one installed after the primary)
        instead of the primary, for when the primary's SA has run out of sequence numbers.

        Every peer on the same ring (or one rotation ahead) already receives with that key,
        so nothing changes on the wire but the SPI; its SA keeps its counter when the key
        becomes primary, so no nonce is reused. Raises :class:`RekeyRequired` when the ring
        has no key after the primary or that SA is spent too.
        """
        tags = [k.tag for k in self._keys]
        at = tags.index(self.primary)
        if at + 1 >= len(tags):
            raise RekeyRequired("no next key installed after the primary")
        peer = str(ipaddress.IPv4Address(peer))
        sa = self._outbound.get((peer, tags[at + 1]))
        if sa is None:
            raise EspUsageError(f"unknown peer {peer}")
        return sa.seal_many(frames)

    def open(self, packet: bytes) -> bytes:
        """Find the SA by the packet's SPI and open it (any :class:`EspError` = drop)."""
        spi, _ = parse_header(packet)
        return self.inbound(spi).open(packet)

    def _key(self, tag: int) -> Key:
        return next(k for k in self._keys if k.tag == tag)

    def _rebuild(self) -> None:
        # SAs are created once per (direction, peer, key) and kept while their key is
        # installed, so counters and windows survive reinstalls and peers coming back.
        tags = {k.tag for k in self._keys}
        self._sas = {k: sa for k, sa in self._sas.items() if k[2] in tags}
        outbound: dict[tuple[str, int], SecurityAssociation] = {}
        inbound: dict[int, SecurityAssociation] = {}
        for peer in sorted(self._peers):
            for key in self._keys:
                out = self._sa("out", peer, key, derive_spi(self.local, peer, key.tag, self.scope))
                outbound[(peer, key.tag)] = out
                in_spi = derive_spi(peer, self.local, key.tag, self.scope)
                if in_spi in inbound:
                    raise EspUsageError(f"SPI collision {in_spi:#010x}: choose another key tag")
                inbound[in_spi] = self._sa("in", peer, key, in_spi)
        self._outbound = outbound
        self._inbound = inbound

    def _sa(self, direction: str, peer: str, key: Key, spi: int) -> SecurityAssociation:
        sa = self._sas.get((direction, peer, key.tag))
        if sa is None or sa.key != key:  # new, or the tag now names other material
            prefix = self.iv_prefix if direction == "out" else 0
            sa = self._sas[(direction, peer, key.tag)] = SecurityAssociation(
                spi, key, self.window, prefix, self.max_seq
            )
        return sa
