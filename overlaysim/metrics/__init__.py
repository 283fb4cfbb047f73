"""Records, the truth fold, metrics and the results folder, shared by every backend.

``records`` (table schemas, EventLog), ``truth`` (the one fold of hosts up and hosts per
network: commit targets), ``convergence`` (ConvergenceTracker), ``traffic``
(TrafficCounter), ``groundtruth`` (liveness and partitions from events.csv), ``results``
(ResultsWriter, load_run), ``compute`` (metrics.json) and ``finalize`` (the one results
writer: an Outcome becomes a folder; ``metrics_for(folder)`` recomputes metrics.json).
Reference: ``docs/results.md``.

May import ``overlaysim.core`` and ``overlaysim.errors``; never plots (``report`` does).
"""
