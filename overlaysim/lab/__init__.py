"""Workshop mode: ``overlaysim lab`` and the guided labs in ``docs/labs/``.

:mod:`overlaysim.lab.session` brings a testbed up (the same way as ``overlaysim up``),
:mod:`overlaysim.lab.commands` holds the overlay commands as plain functions over it,
:mod:`overlaysim.lab.vxlan` decodes captured VXLAN packets, and
:mod:`overlaysim.lab.cli` wires the commands into a Mininet CLI.
"""
