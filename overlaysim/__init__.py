"""overlaysim: a testbed for overlay networks (VXLAN + SWIM gossip), simulated and emulated.

The top-level modules are the command line: ``cli`` (root parser, ``main``) and the
modules registering its commands by concept (``run_cli``, ``results_cli``, ``host_cli``,
``testbed_cli``, ``service_cli``); ``errors``, ``known_issues`` and ``listing`` (the testbed
commands' tables) sit beside them, and ``corebuild``, which picks the Python sources or the
optional compiled build of the table layer and queue (``make compiled``) for a simulator run.
"""

__version__ = "0.1.0"
