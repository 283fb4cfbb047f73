"""Figures (``plots``), the console summary (``summary``), the HTML page (``html``) and
run comparison (``compare``) on top of results folders.

May import ``core``, ``errors`` and ``metrics``.
"""
