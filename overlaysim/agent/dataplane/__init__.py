"""The live agent's data plane: overlay networks in the kernel, programmed through pyroute2.

Owns the kernel objects of one host's overlay networks, one module per concern:

* :mod:`.sandbox` -- a namespace per network with a bridge and an uplink (VXLAN
  device, or TAP when encrypted); the MTU comes from the core's derivation;
* :mod:`.ports` -- a namespace per container and a veth pair per network it joins;
* :mod:`.forwarding` -- remote endpoints as FDB and neighbour entries, and reconcile;
* :mod:`.encrypted` -- the user-space ESP path of encrypted networks;
* :mod:`.plane` -- :class:`DataPlane`, which keeps what exists and journals every
  namespace before creating it; :mod:`.handles` -- netlink handles and the error type.

May import: ``overlaysim.core``, and from the agent only the kernel helpers
(``netns``, ``names``, ``created``/``journal``, ``esp_tunnel``). Nothing here knows
about gossip, the manager or the daemon.
"""

from overlaysim.agent.dataplane.handles import DataPlaneError
from overlaysim.agent.dataplane.plane import DataPlane
from overlaysim.agent.dataplane.ports import docker_mac
from overlaysim.agent.dataplane.sandbox import DEFAULT_VXLAN_PORT, NetInfo, sandbox_mtu

__all__ = [
    "DEFAULT_VXLAN_PORT",
    "DataPlane",
    "DataPlaneError",
    "NetInfo",
    "docker_mac",
    "sandbox_mtu",
]
