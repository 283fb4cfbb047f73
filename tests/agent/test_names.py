"""Every kernel name comes from agent/names.py: fits IFNAMSIZ, prefix spelled once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overlaysim.agent import names

PACKAGE = Path(names.__file__).resolve().parents[1]


def test_device_names_fit_ifnamsiz() -> None:
    longest = "abcdef"  # the longest prefix check_prefix accepts
    assert names.check_prefix(longest) == longest
    for encrypted in (False, True):
        assert len(names.network_device(longest, 0xFFFFFF, encrypted)) <= names.IFNAME_MAX
    assert len(names.port_name("a-container-with-a-long-name", 99)) <= names.IFNAME_MAX
    tag = names.underlay_prefix("zz")
    assert len(names.link_port(tag, 36**3 - 1, "b")) <= names.IFNAME_MAX
    with pytest.raises(ValueError, match="prefix"):
        names.check_prefix("Osim")


def test_namespace_names_split_unambiguously() -> None:
    assert names.sandbox_netns("osim", "h1", 4096) == "osim-h1-4096"
    assert names.container_netns("osim", "h1", "web.1") == "osim-h1-web.1"
    odd = names.container_netns("osim", "h-1", "4096")  # a dash, and digits like a VNI
    assert odd.count("-") == 2 and not odd.endswith("-4096")


def test_the_prefix_is_spelled_only_in_names_py() -> None:
    # byte strings like b"osim-gossip" are crypto labels, not kernel names
    spelled = re.compile(r"""(?<![b\w])["']osim""")
    found = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "names.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert found == []
