"""Scenarios as plain data: the schema (``schema`` for the document, ``topologies``,
``events``, the shared base in ``fields``), problems and ``ScenarioError`` (``problems``,
one line each), the loader, topology generators, container expansion, cross-field checks,
the typed steps (``steps``) and the planner that turns a scenario and a seed into them
(``timeline``).

May import ``overlaysim.core`` and ``overlaysim.errors``; nothing that runs anything.
"""
