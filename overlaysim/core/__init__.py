"""The sans-I/O protocol core: membership (SWIM + Lifeguard), endpoint tables, the wire
format, the manager's networks and IPAM, ESP and gossip sealing, the endpoint value.

Pure state machines: time comes in as ``now``, randomness as a seeded ``random.Random``,
outputs are pulled by the driver. May import nothing from the project (and no sockets,
clocks, threads, asyncio or SimPy); every other package may import it.
"""
