"""The emulation: a Mininet underlay (``net``), impairments in the kernel (``impair``),
the agents' testbed (``testbed``), the emulator's :class:`~overlaysim.world.backend.Backend`
(``backend``: also the one crash/restart of a host), the runner, log collection
(``collect``), probes, capability checks and cleaning (``clean``).

May import ``core``, ``errors``, ``scenario``, ``metrics``, ``world`` and ``agent``.
"""
