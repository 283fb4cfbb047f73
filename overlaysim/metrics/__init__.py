"""Records, metrics and the results folder, shared by the simulator and the emulation.

``records`` (table schemas, EventLog), ``convergence`` (ConvergenceTracker), ``traffic``
(TrafficCounter), ``results`` (ResultsWriter, load_run), ``compute`` (metrics.json),
``finalize`` (one call to complete a folder). Reference: ``docs/results.md``.
"""
