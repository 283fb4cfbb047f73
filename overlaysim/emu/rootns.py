"""Root-namespace helpers: links through pyroute2, nftables tables through the nft tool."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def delete_link(name: str, ipr: Any = None) -> bool:
    """Delete root-namespace link ``name`` if present (a veth takes its peer along).

    ``ipr`` is an open root-namespace IPRoute to reuse (one is opened otherwise).
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    if ipr is None:
        with IPRoute() as own:
            return delete_link(name, own)
    found = ipr.link_lookup(ifname=name)
    if not found:
        return False
    try:
        ipr.link("del", index=found[0])
    except NetlinkError as exc:
        if exc.code == 19:  # ENODEV: went away meanwhile
            return False
        raise
    return True


def list_nft_tables() -> list[tuple[str, str]]:
    """(family, name) of every nftables table in the root namespace."""
    out = subprocess.run(
        ["nft", "-j", "list", "tables"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return []
    tables = []
    for obj in json.loads(out.stdout or "{}").get("nftables", []):
        t = obj.get("table")
        if t:
            tables.append((t["family"], t["name"]))
    return tables


def nft_table_exists(family: str, name: str) -> bool:
    return (family, name) in list_nft_tables()


def delete_nft_table(family: str, name: str) -> None:
    """Delete a root-namespace nftables table (quietly if it is already gone)."""
    cmd = {"nftables": [{"delete": {"table": {"family": family, "name": name}}}]}
    subprocess.run(
        ["nft", "-j", "-f", "-"], input=json.dumps(cmd), capture_output=True, text=True, check=False
    )
