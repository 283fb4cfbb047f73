"""Network keys: the manager's ESP key ring, its rotation, and checks on received rings."""

from __future__ import annotations

import copy
import random

import msgpack
import pytest

from overlaysim.agent.netkeys import MATERIAL_LEN, RING_SIZE, NetworkKeys, keys_from_ring
from overlaysim.core.esp import Keyring, UnknownSpi

X, Y = "10.99.0.1", "10.99.0.2"


def seeded(seed: int = 7) -> NetworkKeys:
    return NetworkKeys(random.Random(seed).randbytes)


def tags(ring: dict) -> list[int]:
    return [k["tag"] for k in ring["keys"]]


def installed(local: str, peer: str, ring: dict) -> Keyring:
    kr = Keyring(local)
    kr.install(*keys_from_ring(ring))
    kr.add_peer(peer)
    return kr


def exchange(a: Keyring, a_ip: str, b: Keyring, b_ip: str, frame: bytes) -> None:
    """``frame`` sealed by each side opens on the other (raises otherwise)."""
    assert b.open(a.seal(b_ip, frame)) == frame
    assert a.open(b.seal(a_ip, frame)) == frame


def test_first_ring_is_three_fresh_keys_with_the_middle_one_primary() -> None:
    nk = seeded()
    assert not nk.exists and nk.generation == 0
    ring = nk.ring()
    assert nk.exists and ring["generation"] == 1
    assert len(ring["keys"]) == RING_SIZE
    assert len(set(tags(ring))) == RING_SIZE and all(0 < t < 2**32 for t in tags(ring))
    materials = [k["material"] for k in ring["keys"]]
    assert all(type(m) is bytes and len(m) == MATERIAL_LEN for m in materials)
    assert len(set(materials)) == RING_SIZE
    assert ring["primary"] == tags(ring)[1]
    assert nk.ring() == ring  # asking again draws no new keys


def test_rotate_appends_drops_the_oldest_and_promotes_next() -> None:
    nk = seeded()
    before = nk.ring()
    after = nk.rotate()
    assert after["generation"] == before["generation"] + 1
    assert after["keys"][:2] == before["keys"][1:]  # oldest dropped, the rest kept
    assert tags(after)[2] not in tags(before)  # a new key as next
    assert after["primary"] == tags(before)[2] == tags(after)[1]  # the former next
    assert nk.ring() == after


def test_rotate_before_any_ring_creates_it_first() -> None:
    nk = seeded()
    ring = nk.rotate()
    assert ring["generation"] == 2 and len(ring["keys"]) == RING_SIZE
    assert ring["primary"] == tags(ring)[1]


def test_returned_rings_are_copies() -> None:
    nk = seeded()
    ring = nk.ring()
    kept = copy.deepcopy(ring)
    ring["keys"].clear()
    ring["primary"] = 0
    assert nk.ring() == kept


def test_same_seed_same_ring_other_seed_other_ring() -> None:
    assert seeded(1).ring() == seeded(1).ring()
    assert seeded(1).ring()["keys"] != seeded(2).ring()["keys"]


def test_tags_are_never_zero_nor_repeated() -> None:
    # the generator first offers tag 0, then the same tag three times
    script = [bytes(4), b"\x00\x00\x00\x05", b"\x00\x00\x00\x05", b"\x00\x00\x00\x05"]
    fill = random.Random(3)

    def rng_bytes(n: int) -> bytes:
        if n == 4 and script:
            return script.pop(0)
        return fill.randbytes(n)

    ring = NetworkKeys(rng_bytes).ring()
    assert tags(ring)[0] == 5
    assert 0 not in tags(ring) and len(set(tags(ring))) == RING_SIZE


def test_repr_hides_key_material() -> None:
    nk = seeded()
    ring = nk.ring()
    text = repr(nk)
    assert "generation=1" in text
    for k in ring["keys"]:
        assert k["material"].hex() not in text and repr(k["material"]) not in text


def test_consecutive_generations_exchange_both_ways() -> None:
    nk = seeded()
    rings = [nk.ring()] + [nk.rotate() for _ in range(5)]
    for older, newer in zip(rings, rings[1:], strict=False):
        # one agent already installed the new ring, the other still has the previous one
        x = installed(X, Y, older)
        y = installed(Y, X, newer)
        for i in range(3):
            exchange(x, X, y, Y, f"frame {i} gen {older['generation']}".encode())


def test_two_generations_apart_lose_traffic() -> None:
    # the counterpart of the test above: the property is not vacuous
    nk = seeded()
    first = nk.ring()
    nk.rotate()
    third = nk.rotate()
    x = installed(X, Y, first)
    y = installed(Y, X, third)
    with pytest.raises(UnknownSpi):
        y.open(x.seal(Y, b"sent with a key the other side already retired"))


def test_installing_the_next_ring_equals_esp_keyring_rotate() -> None:
    nk = seeded()
    ring = nk.ring()
    rotated = nk.rotate()
    by_rotate = installed(X, Y, ring)
    new_keys, _ = keys_from_ring(rotated)
    retired = by_rotate.rotate(new_keys[-1])
    assert retired == tags(ring)[0]
    by_install = installed(X, Y, rotated)
    assert by_rotate.keys == by_install.keys
    assert by_rotate.primary == by_install.primary == rotated["primary"]


def test_ring_survives_msgpack_and_installs() -> None:
    ring = seeded().ring()
    wire = msgpack.unpackb(msgpack.packb(ring, use_bin_type=True), raw=False)
    keys, primary = keys_from_ring(wire)
    assert [k.tag for k in keys] == tags(ring) and primary == ring["primary"]
    assert [k.material for k in keys] == [k["material"] for k in ring["keys"]]


def _broken(change) -> dict:
    ring = seeded().ring()
    change(ring)
    return ring


@pytest.mark.parametrize(
    ("ring", "fragment"),
    [
        ([], "ring: expected a map"),
        (_broken(lambda r: r.pop("primary")), "ring.primary: missing"),
        (_broken(lambda r: r.pop("generation")), "ring.generation: missing"),
        (_broken(lambda r: r.update(generation=0)), "ring.generation=0"),
        (_broken(lambda r: r.update(generation=True)), "ring.generation: expected an integer"),
        (_broken(lambda r: r.update(keys="abc")), "ring.keys: expected a list"),
        (_broken(lambda r: r.update(keys=[])), "ring.keys: expected 1 to 3 keys, got 0"),
        (_broken(lambda r: r["keys"].append(r["keys"][0])), "expected 1 to 3 keys, got 4"),
        (_broken(lambda r: r["keys"].__setitem__(1, "k")), "ring.keys[1]: expected a map"),
        (_broken(lambda r: r["keys"][2].pop("material")), "ring.keys[2].material: missing"),
        (_broken(lambda r: r["keys"][0].pop("tag")), "ring.keys[0].tag: missing"),
        (
            _broken(lambda r: r["keys"][1].update(material=bytes(16))),
            "ring.keys[1].material: expected 20 bytes",
        ),
        (
            _broken(lambda r: r["keys"][1].update(material="x" * 20)),
            "ring.keys[1].material: expected bytes, got str",
        ),
        (_broken(lambda r: r["keys"][0].update(tag=-1)), "ring.keys[0].tag=-1"),
        (_broken(lambda r: r["keys"][0].update(tag=2**32)), "ring.keys[0].tag=4294967296"),
        (_broken(lambda r: r["keys"][0].update(tag="1")), "ring.keys[0].tag: expected an integer"),
        (
            _broken(lambda r: r["keys"][2].update(tag=r["keys"][0]["tag"])),
            "ring.keys[2].tag=.*repeats",
        ),
        (_broken(lambda r: r.update(primary=12345)), "ring.primary=12345: not among the tags"),
        (_broken(lambda r: r.update(primary=None)), "ring.primary: expected an integer"),
    ],
)
def test_malformed_rings_name_the_field(ring: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        keys_from_ring(ring)


def test_errors_never_show_material() -> None:
    ring = seeded().ring()
    ring["primary"] = 1
    with pytest.raises(ValueError) as info:
        keys_from_ring(ring)
    for k in ring["keys"]:
        assert k["material"].hex() not in str(info.value)
        assert repr(k["material"]) not in str(info.value)
