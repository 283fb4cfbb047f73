"""The SimPy runtime: one core node per host over a graph underlay in virtual time.

``engine`` drives the cores (timers, messages in flight), ``underlay`` owns latency,
bandwidth, loss and partitions (the same verbs as the emulator's ``Impairments``), and
``runner`` is the simulator's :class:`~overlaysim.world.backend.Backend` plus
``run_simulation``, which returns its outcome to ``metrics.finalize``.

May import ``core``, ``errors``, ``scenario``, ``metrics`` and ``world``.
"""
