"""A lowered ESP sequence limit: the same refusal as the 32-bit one, reached in a few packets."""

from __future__ import annotations

import pytest

from overlaysim.core.esp import (
    MAX_SEQ,
    REKEY_MARGIN,
    SEQ_LIMIT,
    Key,
    Keyring,
    RekeyRequired,
    SecurityAssociation,
    derive_spi,
)

A, B = "10.99.0.1", "10.99.0.2"


def key(tag: int) -> Key:
    return Key(tag, bytes([tag]) * 20)


def test_default_limit_is_the_32_bit_space_minus_the_margin():
    assert MAX_SEQ == SEQ_LIMIT - REKEY_MARGIN - 1
    sa = SecurityAssociation(derive_spi(A, B, 1), key(1))
    assert sa.max_seq == MAX_SEQ
    sa.seal(b"x", MAX_SEQ)  # the last one sealed today
    with pytest.raises(RekeyRequired):
        sa.seal(b"y", MAX_SEQ + 1)


def test_lowered_limit_seals_exactly_that_many_then_refuses_whole_batches():
    a = Keyring(A, max_seq=5)
    b = Keyring(B, max_seq=5)
    for ring, peer in ((a, B), (b, A)):
        ring.install([key(1), key(2)], 1)
        ring.add_peer(peer)
    sealed = a.seal_many(B, [b"f1", b"f2", b"f3"])
    with pytest.raises(RekeyRequired):
        a.seal_many(B, [b"f4", b"f5", b"f6"])  # would pass 5: nothing sealed
    sealed += a.seal_many(B, [b"f4", b"f5"])
    assert [b.open(p) for p in sealed] == [b"f1", b"f2", b"f3", b"f4", b"f5"]
    with pytest.raises(RekeyRequired):
        a.seal(B, b"f6")
    # a rotation gives a fresh SA (new key), which seals again from 1
    a.rotate(key(3))
    b.rotate(key(3))
    assert b.open(a.seal(B, b"g1")) == b"g1"


@pytest.mark.parametrize("bad", [0, -1, MAX_SEQ + 1, 2.5, "7"])
def test_bad_limits_are_refused(bad):
    with pytest.raises(ValueError, match="max_seq"):
        Keyring(A, max_seq=bad)


def _pair(limit: int) -> tuple[Keyring, Keyring]:
    a, b = Keyring(A, max_seq=limit), Keyring(B, max_seq=limit)
    for ring, peer in ((a, B), (b, A)):
        ring.install([key(1), key(2), key(3)], 2)  # [retiring, primary, next]
        ring.add_peer(peer)
    return a, b


def test_spent_primary_seals_with_the_next_key_which_the_peer_already_receives():
    a, b = _pair(3)
    sent = a.seal_many(B, [b"p1", b"p2", b"p3"])
    with pytest.raises(RekeyRequired):
        a.seal(B, b"p4")
    spare = a.seal_many_next_key(B, [b"n1", b"n2"])
    assert {int.from_bytes(p[:4], "big") for p in spare} == {derive_spi(A, B, 3)}
    assert [b.open(p) for p in sent + spare] == [b"p1", b"p2", b"p3", b"n1", b"n2"]
    # the rotation makes key 3 primary: its SA continues at 3 (no nonce used twice) and the
    # peer, rotated too or not yet, still opens it
    a.rotate(key(4))
    after = a.seal(B, b"n3")
    assert int.from_bytes(after[4:8], "big") == 3
    assert b.open(after) == b"n3"
    with pytest.raises(RekeyRequired):  # key 3's SA, now primary, is spent too
        a.seal(B, b"y")
    b.rotate(key(4))  # the peer picked up the same rotation: it receives key 4
    assert b.open(a.seal_many_next_key(B, [b"k4"])[0]) == b"k4"


def test_no_next_key_or_spent_next_key_is_rekey_required():
    a = Keyring(A, max_seq=2)
    a.install([key(1), key(2)], 2)  # primary is the newest: nothing after it
    a.add_peer(B)
    with pytest.raises(RekeyRequired):
        a.seal_many_next_key(B, [b"x"])
    a2, _ = _pair(2)
    a2.seal_many_next_key(B, [b"1", b"2"])
    with pytest.raises(RekeyRequired):
        a2.seal_many_next_key(B, [b"3"])
