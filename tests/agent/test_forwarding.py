"""Remote endpoints per network: the indexed lookup a table event uses agrees with the
whole-network maps a reconcile builds, whatever the order of adds and removes."""

from __future__ import annotations

import random

import pytest

from overlaysim.agent.dataplane.forwarding import Remotes, norm_remote
from overlaysim.core.endpoint import canonical_ipv4

ME = "172.30.0.1"


def _remote(rng: random.Random) -> tuple[str, str, str]:
    # few IPs, MACs and VTEPs, so claims collide (IP reuse, a MAC moving host)
    return (
        f"10.0.0.{rng.randint(1, 5)}",
        f"02:42:0a:00:00:0{rng.randint(1, 5)}",
        f"172.30.0.{rng.randint(1, 4)}",
    )


@pytest.mark.parametrize("seed", range(20))
def test_holders_agree_with_maps_after_any_sequence(seed: int) -> None:
    rng = random.Random(seed)
    remotes = Remotes(ME)
    for _ in range(200):
        r = _remote(rng)
        roll = rng.random()
        if roll < 0.55:
            assert remotes.add("web", r) == (r[2] != ME)
        elif roll < 0.95:
            remotes.remove("web", r)
        else:
            remotes.replace("web", {_remote(rng) for _ in range(rng.randint(0, 6))})
        fdb, neigh = remotes.maps("web")
        for i in range(1, 6):
            ip, mac = f"10.0.0.{i}", f"02:42:0a:00:00:0{i}"
            assert remotes.holders("web", ip, mac) == (fdb.get(mac), neigh.get(ip))
    assert remotes.holders("other", "10.0.0.1", "02:42:0a:00:00:01") == (None, None)


def test_the_newest_claim_wins_and_an_older_one_comes_back() -> None:
    remotes = Remotes(ME)
    old, new = (
        ("10.0.0.9", "02:42:0a:00:00:09", "172.30.0.2"),
        ("10.0.0.9", "02:42:0a:00:00:10", "172.30.0.3"),
    )
    remotes.add("web", old)
    remotes.add("web", new)
    assert remotes.holders("web", "10.0.0.9", "02:42:0a:00:00:10") == (
        "172.30.0.3",
        "02:42:0a:00:00:10",
    )
    remotes.remove("web", new)  # the IP falls back to the older claim
    assert remotes.holders("web", "10.0.0.9", "02:42:0a:00:00:10") == (None, "02:42:0a:00:00:09")
    assert not remotes.add("web", ("10.0.0.7", "02:42:0a:00:00:07", ME))  # local: never


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4 ",
        "256.0.0.1",
        "",
        "::1",
        "1.2.3.4\0",
    ],
)
def test_canonical_ipv4_is_what_ipaddress_says(text: str) -> None:
    import ipaddress

    try:
        want = str(ipaddress.IPv4Address(text))
    except ValueError:
        with pytest.raises(ValueError):
            canonical_ipv4(text)
    else:
        assert canonical_ipv4(text) == want


def test_norm_remote_refuses_junk() -> None:
    assert norm_remote("10.0.0.1", "02:42:0A:00:00:01", "172.30.0.2") == (
        "10.0.0.1",
        "02:42:0a:00:00:01",
        "172.30.0.2",
    )
    for bad in (
        ("10.0.0", "02:42:0a:00:00:01", "172.30.0.2"),
        ("10.0.0.1", "zz", "172.30.0.2"),
        ("10.0.0.1", "02:42:0a:00:00:01", "h2"),
    ):
        with pytest.raises(ValueError):
            norm_remote(*bad)
