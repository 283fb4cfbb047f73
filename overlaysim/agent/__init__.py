"""The live runtime: ``overlayd``, one agent per (Mininet) host, and its kernel side.

Owns the asyncio driver of the core's node (``daemon``), its transport, control socket
and manager API, what the control views return (``views``), the host's containers
(``containers``; with their names and commands under one lock: ``workloads``) and
network keys (``keys``),
the programmer that turns endpoint-table events into data-plane calls, the kernel data
plane (the ``dataplane`` package; encrypted networks' path: ``esp_tunnel``, with
``udp_gso`` for UDP GSO/GRO and ``vxlan_guard`` for the cleartext-VXLAN drop rule) and
the helpers every kernel-touching part of the project shares: ``names`` (every kernel
name), ``journal``/``created`` (created objects, journalled before they exist) and
``netns`` (netlink and namespace operations).

May import only ``overlaysim.core`` (and itself). The emulator (``overlaysim.emu``)
builds on this package, never the other way round.
"""
