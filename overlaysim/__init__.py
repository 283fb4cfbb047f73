"""overlaysim: a testbed for overlay networks (VXLAN + SWIM gossip), simulated and emulated."""

__version__ = "0.1.0"
