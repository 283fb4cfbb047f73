"""The VIP balancer runs ``nft`` only when a container's table must change."""

from __future__ import annotations

import pytest

from overlaysim.agent import vip
from overlaysim.agent.vip import VipBalancer


@pytest.fixture
def nft_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(vip, "replace_rules", lambda ns, b, mode: calls.append((ns, dict(b))))
    return calls


def test_a_new_container_without_vips_costs_no_nft_process(nft_calls) -> None:
    bal = VipBalancer()
    assert not bal.sync("c1", "ns-c1", {})  # nothing to balance: no table, as an empty one
    assert not bal.sync("c1", "ns-c1", {})
    assert nft_calls == []
    assert bal.sync("c1", "ns-c1", {"10.0.0.2": ("10.0.0.11",)})  # the first VIP: a table
    assert nft_calls == [("ns-c1", {"10.0.0.2": ("10.0.0.11",)})]
    assert bal.sync("c1", "ns-c1", {})  # and its last task gone: the table emptied
    assert nft_calls[-1] == ("ns-c1", {})
    assert bal.replaced == 2
