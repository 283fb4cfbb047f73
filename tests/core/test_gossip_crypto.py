"""Tests for the gossip keyring and sealed packets (pure, no network)."""

from __future__ import annotations

import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from overlaysim.core.gossip_crypto import (
    MAX_SEALED_PLAINTEXT,
    NONCE_SIZE,
    OVERHEAD,
    GossipAuthError,
    GossipKeyring,
    decode_sealed,
    encode_sealed,
    nonce_from,
    open_,
    seal,
)
from overlaysim.core.wire import (
    MAX_DATAGRAM,
    Gossip,
    MemberUpdate,
    UpdateKind,
    WireError,
    encode,
)

K1 = bytes(range(16))
K2 = bytes(range(100, 124))
K3 = bytes(range(200, 232))
NONCE = bytes(range(1, 13))

keys_st = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


def _gossip(source: str, n_updates: int = 1, name_len: int = 8) -> Gossip:
    updates = tuple(
        MemberUpdate(kind=UpdateKind.ALIVE, node=f"n{i}".ljust(name_len, "x"), incarnation=i)
        for i in range(n_updates)
    )
    return Gossip(source=source, updates=updates)


# --- keyring ----------------------------------------------------------------------


def test_keyring_primary_defaults_to_first_and_keys_list_primary_first() -> None:
    ring = GossipKeyring([K1, K2, K3])
    assert ring.primary == K1
    assert ring.keys == (K1, K2, K3)
    ring.use(K3)
    assert ring.primary == K3
    assert ring.keys == (K3, K1, K2)


def test_keyring_explicit_primary_is_installed_and_first() -> None:
    ring = GossipKeyring([K1], primary=K2)
    assert ring.primary == K2
    assert set(ring.keys) == {K1, K2}
    assert GossipKeyring([], primary=K3).keys == (K3,)


def test_keyring_add_is_idempotent() -> None:
    ring = GossipKeyring([K1])
    ring.add(K2)
    ring.add(K2)
    ring.add(bytearray(K1))
    assert ring.keys == (K1, K2)


@pytest.mark.parametrize("size", [0, 1, 15, 17, 23, 31, 33, 64])
def test_keyring_rejects_bad_key_sizes(size: int) -> None:
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        GossipKeyring([b"k" * size])
    ring = GossipKeyring([K1])
    with pytest.raises(ValueError, match="16, 24 or 32 bytes"):
        ring.add(b"k" * size)
    assert ring.keys == (K1,)


def test_keyring_rejects_non_bytes_and_empty() -> None:
    with pytest.raises(ValueError, match="must be bytes"):
        GossipKeyring(["0123456789abcdef"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one key"):
        GossipKeyring([])


def test_keyring_use_and_remove_unknown_key() -> None:
    ring = GossipKeyring([K1])
    with pytest.raises(ValueError, match="not installed"):
        ring.use(K2)
    with pytest.raises(ValueError, match="not installed"):
        ring.remove(K2)
    assert ring.keys == (K1,)


def test_keyring_refuses_to_remove_primary() -> None:
    ring = GossipKeyring([K1, K2])
    with pytest.raises(ValueError, match="primary"):
        ring.remove(K1)
    assert ring.keys == (K1, K2)
    ring.remove(K2)
    assert ring.keys == (K1,)


def test_keyring_repr_hides_key_material() -> None:
    text = repr(GossipKeyring([K1, K2]))
    assert K1.hex() not in text and str(K1) not in text
    assert "2 keys" in text


# --- seal / open ------------------------------------------------------------------


@pytest.mark.parametrize("key", [K1, K2, K3])
def test_round_trip_and_layout(key: bytes) -> None:
    ring = GossipKeyring([key])
    packet = seal(ring, b"hello gossip", nonce=NONCE)
    assert len(packet) == len(b"hello gossip") + OVERHEAD
    assert packet[0] == 1
    assert packet[1 : 1 + NONCE_SIZE] == NONCE
    assert b"hello gossip" not in packet
    assert open_(ring, packet) == b"hello gossip"


def test_round_trip_empty_plaintext_and_aad() -> None:
    ring = GossipKeyring([K1])
    packet = seal(ring, b"", nonce=NONCE, aad=b"label")
    assert len(packet) == OVERHEAD
    assert open_(ring, packet, b"label") == b""
    with pytest.raises(GossipAuthError):
        open_(ring, packet)  # aad must match
    with pytest.raises(GossipAuthError):
        open_(ring, packet, b"other")


def test_same_plaintext_different_nonce_differs() -> None:
    ring = GossipKeyring([K1])
    rng = random.Random(7)
    a = seal(ring, b"x" * 40, nonce=nonce_from(rng))
    b = seal(ring, b"x" * 40, nonce=nonce_from(rng))
    assert a != b
    assert open_(ring, a) == open_(ring, b) == b"x" * 40


def test_seal_rejects_bad_nonce_as_local_error() -> None:
    ring = GossipKeyring([K1])
    for bad in (b"", b"\x00" * 11, b"\x00" * 13):
        with pytest.raises(ValueError, match="nonce") as info:
            seal(ring, b"x", nonce=bad)
        assert not isinstance(info.value, WireError)


def test_wrong_key_rejected() -> None:
    packet = seal(GossipKeyring([K1]), b"secret", nonce=NONCE)
    with pytest.raises(GossipAuthError, match="no installed key"):
        open_(GossipKeyring([K2, K3]), packet)


def test_open_tries_every_installed_key() -> None:
    packet = seal(GossipKeyring([K3]), b"secret", nonce=NONCE)
    assert open_(GossipKeyring([K1, K2, K3]), packet) == b"secret"


def test_tampering_any_byte_is_rejected() -> None:
    ring = GossipKeyring([K1, K2])
    packet = seal(ring, b"membership update", nonce=NONCE)
    for i in range(len(packet)):
        for flip in (0x01, 0x80):
            bad = bytearray(packet)
            bad[i] ^= flip
            with pytest.raises(GossipAuthError):
                open_(ring, bytes(bad))


def test_wrong_version_and_short_packets() -> None:
    ring = GossipKeyring([K1])
    packet = seal(ring, b"abc", nonce=NONCE)
    with pytest.raises(GossipAuthError, match="version"):
        open_(ring, b"\x00" + packet[1:])
    with pytest.raises(GossipAuthError, match="version"):
        open_(ring, b"\x02" + packet[1:])
    for n in range(OVERHEAD):
        with pytest.raises(GossipAuthError, match="shorter"):
            open_(ring, packet[:n])
    # Long enough but cut: the tag no longer matches.
    with pytest.raises(GossipAuthError):
        open_(ring, packet[:-1])


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_only_raises_auth_error(data: bytes) -> None:
    ring = GossipKeyring([K1, K2])
    with pytest.raises(GossipAuthError):
        open_(ring, data)


@settings(max_examples=200, deadline=None)
@given(plain=st.binary(max_size=100), cut=st.integers(min_value=0), extra=st.binary(max_size=8))
def test_truncated_or_extended_packets_only_raise_auth_error(
    plain: bytes, cut: int, extra: bytes
) -> None:
    ring = GossipKeyring([K1])
    packet = seal(ring, plain, nonce=NONCE)
    cut = cut % len(packet)  # strictly shorter than the real packet
    with pytest.raises(GossipAuthError):
        open_(ring, packet[:cut])
    if extra:
        with pytest.raises(GossipAuthError):
            open_(ring, packet + extra)


@settings(max_examples=200, deadline=None)
@given(
    forger_key=keys_st,
    plain=st.binary(max_size=64),
    nonce=st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE),
)
def test_forgery_with_unknown_key_rejected(forger_key: bytes, plain: bytes, nonce: bytes) -> None:
    victim = GossipKeyring([K1, K2, K3])
    assume(forger_key not in victim.keys)
    forged = seal(GossipKeyring([forger_key]), plain, nonce=nonce)
    with pytest.raises(GossipAuthError):
        open_(victim, forged)
    # Also as a whole wire message: the forger cannot get anything past decode_sealed.
    msg = encode_sealed(_gossip("mallory"), GossipKeyring([forger_key]), nonce)
    with pytest.raises(GossipAuthError):
        decode_sealed(msg, victim)


# --- wire helpers -----------------------------------------------------------------


def test_encode_decode_sealed_round_trip() -> None:
    ring = GossipKeyring([K1])
    msg = _gossip("node-a", n_updates=3)
    data = encode_sealed(msg, ring, NONCE)
    assert len(data) == len(encode(msg)) + OVERHEAD
    assert decode_sealed(data, ring) == msg
    assert decode_sealed(encode_sealed(msg, ring, NONCE, b"lbl"), ring, aad=b"lbl") == msg


def test_decode_sealed_enforces_limit_on_sealed_packet() -> None:
    ring = GossipKeyring([K1])
    # Exactly at the budget: fits; one byte over: refused before decryption.
    fitting = _fit_exactly(MAX_SEALED_PLAINTEXT)
    data = encode_sealed(fitting, ring, NONCE)
    assert len(data) == MAX_DATAGRAM
    assert decode_sealed(data, ring) == fitting
    over = _fit_exactly(MAX_SEALED_PLAINTEXT + 1)
    data = encode_sealed(over, ring, NONCE)
    assert len(data) == MAX_DATAGRAM + 1
    with pytest.raises(WireError, match="exceeds limit") as info:
        decode_sealed(data, ring)
    assert not isinstance(info.value, GossipAuthError)
    assert decode_sealed(data, ring, max_size=MAX_DATAGRAM + 1) == over
    # The limit is checked before any key is tried: oversized junk is a size error.
    with pytest.raises(WireError, match="exceeds limit") as info:
        decode_sealed(b"\x01" * (MAX_DATAGRAM + 1), ring)
    assert not isinstance(info.value, GossipAuthError)


def _fit_exactly(size: int) -> Gossip:
    """A Gossip whose plain wire encoding is exactly ``size`` bytes (padding the source)."""
    base = len(encode(Gossip(source="", updates=())))
    # str header grows from 1 to 2 bytes at 32 chars and to 3 at 256; search the length.
    for n in range(size):
        msg = Gossip(source="s" * n, updates=())
        if len(encode(msg)) == size:
            return msg
    raise AssertionError(f"no padding gives {size} bytes (base {base})")


def test_decode_sealed_rejects_authentic_non_message() -> None:
    ring = GossipKeyring([K1])
    data = seal(ring, b"\xc1 not msgpack", nonce=NONCE)
    with pytest.raises(WireError) as info:
        decode_sealed(data, ring)
    assert not isinstance(info.value, GossipAuthError)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=MAX_DATAGRAM + 50))
def test_decode_sealed_garbage_only_raises_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_sealed(data, GossipKeyring([K1]))


# --- rotation ---------------------------------------------------------------------

OLD, NEW = K1, K3


def _at_step(step: int) -> GossipKeyring:
    """A node's keyring after the first ``step`` rotation steps (add, use, remove)."""
    ring = GossipKeyring([OLD])
    if step >= 1:
        ring.add(NEW)
    if step >= 2:
        ring.use(NEW)
    if step >= 3:
        ring.remove(OLD)
    return ring


def _delivered(sender: GossipKeyring, receiver: GossipKeyring, msg: Gossip, nonce: bytes) -> bool:
    try:
        return decode_sealed(encode_sealed(msg, sender, nonce), receiver) == msg
    except GossipAuthError:
        return False


def test_rotation_steps_applied_in_place_keep_one_ring_consistent() -> None:
    ring = GossipKeyring([OLD])
    ring.add(NEW)
    assert ring.primary == OLD and ring.keys == (OLD, NEW)
    ring.use(NEW)
    assert ring.primary == NEW and ring.keys == (NEW, OLD)
    ring.remove(OLD)
    assert ring.keys == (NEW,)


def test_rotation_never_loses_gossip_between_nodes_one_step_apart() -> None:
    rng = random.Random(1)
    # Node a leads, node b lags; both walk the steps, b always at most one behind.
    a, b = GossipKeyring([OLD]), GossipKeyring([OLD])
    steps = [
        lambda r: r.add(NEW),
        lambda r: r.use(NEW),
        lambda r: r.remove(OLD),
    ]
    seq = 0
    for step in steps:
        for ring in (a, b):  # a moves first, then b catches up
            step(ring)
            for src, dst in ((a, b), (b, a)):
                seq += 1
                msg = _gossip(f"s{seq}")
                assert _delivered(src, dst, msg, nonce_from(rng)), (seq, src.keys, dst.keys)
    assert a.keys == b.keys == (NEW,)


@pytest.mark.parametrize(("i", "j"), [(i, j) for i in range(4) for j in range(i, 4)])
def test_rotation_compatibility_matrix(i: int, j: int) -> None:
    rng = random.Random(i * 4 + j)
    forward = _delivered(_at_step(i), _at_step(j), _gossip("x"), nonce_from(rng))
    backward = _delivered(_at_step(j), _at_step(i), _gossip("y"), nonce_from(rng))
    if j - i <= 1:
        assert forward and backward
    else:
        # Two steps apart breaks one direction: a sender seals with a key the other lacks.
        assert not (forward and backward)


def test_nonce_from_is_deterministic_per_seed() -> None:
    assert nonce_from(random.Random(5)) == nonce_from(random.Random(5))
    assert len(nonce_from(random.Random(5))) == NONCE_SIZE
