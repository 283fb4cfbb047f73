"""Workshop mode: ``overlaysim lab`` and the guided labs in ``docs/labs/``.

:mod:`overlaysim.lab.session` brings a testbed up (the same way as ``overlaysim up``),
:mod:`overlaysim.lab.commands` holds the overlay commands as plain functions over it
(crash and restart are the emulator's own, ``emu.backend``),
:mod:`overlaysim.lab.vxlan` decodes captured VXLAN packets, and
:mod:`overlaysim.lab.cli` wires the commands into a Mininet CLI.

May import ``core``, ``errors``, ``scenario``, ``metrics``, ``world``, ``agent`` and ``emu``.
"""
