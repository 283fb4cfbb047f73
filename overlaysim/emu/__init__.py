"""The emulation: a Mininet underlay, impairments in the kernel, the agents' testbed, the
emulator's :class:`~overlaysim.world.backend.Backend`, the runner and cleaning.

The underlay: ``plan`` (every name and address of a run, pure), ``net`` (``Underlay``:
build, start, stop, commands in hosts), ``mininet_parts`` (veth links, bridges, STP),
``signals`` (Ctrl-C/SIGTERM around a session). Impairments: ``impair`` (loss, rate,
delay, partitions, crashed links as wanted state rendered to nft/tc), ``delay`` and
``delayline`` (the NFQUEUE delay line), which see the underlay only through
``underlay_view.UnderlayView``. Then ``testbed`` (agents), ``backend`` (also the one
crash/restart of a host), ``runner``, log collection (``collect``), probes, capability
checks and cleaning (``clean``).

May import ``core``, ``errors``, ``scenario``, ``metrics``, ``world`` and ``agent``.
Inside: ``net`` imports ``impair``, never the reverse.
"""
