"""The sans-I/O protocol core: membership (SWIM + Lifeguard), endpoint tables, the wire
format, the manager's networks (``cluster``: the manager's state; ``network``: the
records and a spec's own checks; ``cluster_errors``: its refusals; ``mtu``: the MTU
rule) and IPAM, ESP and gossip sealing, the endpoint value, services.

Pure state machines: time comes in as ``now``, randomness as a seeded ``random.Random``,
outputs are pulled by the driver. May import nothing from the project (and no sockets,
clocks, threads, asyncio or SimPy); every other package may import it.
"""
