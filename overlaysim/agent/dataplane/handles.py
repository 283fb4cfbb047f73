"""Netlink handles of one data plane, kept per thread and namespace."""

from __future__ import annotations

import threading

from pyroute2 import IPRoute

from overlaysim.agent import netns as kns


class DataPlaneError(RuntimeError):
    """Misuse of the data plane or a kernel failure it cannot repair."""


class Handles:
    """One rtnetlink handle per (thread, namespace), opened on first use.

    pyroute2 handles are not thread-safe; the data plane runs on one worker thread in
    the agent, but tests and benches call it from others.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[int, str | None], IPRoute] = {}

    def ipr(self, ns: str | None) -> IPRoute:
        """The handle for namespace ``ns`` (None: the calling process's)."""
        key = (threading.get_ident(), ns)
        handle = self._open.get(key)
        if handle is None:
            handle = self._open[key] = kns.open_ipr(ns)
        return handle

    def close(self, ns: str | None, *, everything: bool = False) -> None:
        """Close the handles of ``ns`` (before it is removed), or all of them."""
        for key in [k for k in self._open if everything or k[1] == ns]:
            kns.close_ipr(self._open.pop(key))


def index(ipr: IPRoute, ifname: str) -> int:
    """Index of ``ifname`` in the handle's namespace; DataPlaneError if it is missing."""
    found = kns.link_index(ipr, ifname)
    if found is None:
        raise DataPlaneError(f"interface {ifname!r} not found")
    return found
