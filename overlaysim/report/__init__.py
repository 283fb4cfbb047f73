"""Figures (``plots``), animations (``animate``, ``story``), the console summary
(``summary``), the HTML page (``html``) and run comparison (``compare``, written out by
``compare_output``) on top of results folders.

May import ``core``, ``errors``, ``scenario`` (topologies to draw) and ``metrics``.
"""
