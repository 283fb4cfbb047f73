"""The world of a run: the ground truth and the one place a planned step is applied.

Owns: :class:`~overlaysim.world.world.World` (hosts up, containers and where they live,
attachments, partitions and impairments as wanted state; one ``match`` over the typed
steps) and the :class:`~overlaysim.world.backend.Backend` protocol whose verbs the
simulator (``sim``) and the emulator (``emu``) implement.

May import: ``overlaysim.core`` (types only), ``overlaysim.scenario``, ``overlaysim.metrics``,
``overlaysim.errors``. Never ``sim``, ``emu``, ``agent``, ``cli`` (they import it).
"""
