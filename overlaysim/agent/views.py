"""The agent's read-only control views: what ``status``, ``members`` and ``tables`` return.

Pure functions of the node's state (and the agent's counters), kept apart from the
driver loop so the loop only drives; :class:`~overlaysim.agent.daemon.Agent` calls
them for the control API (:mod:`overlaysim.agent.control`).
"""

from __future__ import annotations

from typing import Any

from overlaysim.core.endpoint import ENDPOINTS
from overlaysim.core.membership import Membership
from overlaysim.core.node import Node
from overlaysim.core.tables import Tables


def status_view(
    node: Node,
    *,
    epoch: int,
    counters: dict[str, Any],
    containers: Any,
    services: Any,
) -> dict[str, Any]:
    """Name, epoch, members with states, counters, networks and local containers."""
    m = node.membership
    return {
        "name": node.name,
        "addr": node.addr,
        "epoch": epoch,
        "incarnation": m.incarnation,
        "left": m.has_left,
        "health": m.health_score,
        "members": members_view(m),
        "counters": counters,
        "networks": sorted(node.tables.networks()),
        "containers": containers,
        "services": services,
    }


def members_view(membership: Membership) -> dict[str, Any]:
    """Every known member (ourselves included): state, address, incarnation, epoch."""
    return {
        name: {
            "state": m.state.value,
            "addr": m.addr,
            "incarnation": m.incarnation,
            "epoch": m.epoch,
        }
        for name, m in sorted(membership.members().items())
    }


def tables_view(tables: Tables) -> dict[str, Any]:
    """Live endpoint entries per attached network."""
    return {
        network: {
            key: {
                "owner": e.owner,
                "owner_epoch": e.owner_epoch,
                "ltime": e.ltime,
                "value": e.value,
            }
            for (_, key), e in sorted(tables.entries(network, ENDPOINTS).items())
        }
        for network in sorted(tables.networks())
    }
