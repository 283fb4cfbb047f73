"""Scenarios as plain data: the schema and loader (one-line problems), topology
generators, container expansion, cross-field checks, the typed steps (``steps``) and the
planner that turns a scenario and a seed into them (``timeline``).

May import ``overlaysim.core`` and ``overlaysim.errors``; nothing that runs anything.
"""
