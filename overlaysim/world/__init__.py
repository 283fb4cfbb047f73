"""The world of a run: the ground truth and the one place a planned step is applied.

Owns :class:`~overlaysim.world.world.World` (hosts up, containers and where they live,
attachments, partitions and impairments as wanted state; one ``match`` over the typed
steps), the :class:`~overlaysim.world.backend.Backend` protocol whose verbs the
simulator (``sim``) and the emulator (``emu``) implement, the container value
(``container``), services (``services``, which see the world through their
``ServiceWorld`` protocol), the
manifest part both backends write alike (``manifest``) and the dry run over IPAM alone
that ``validate`` uses (``dryrun``).

May import ``core``, ``errors``, ``scenario`` and ``metrics``. Never ``sim``, ``emu``,
``agent`` or the CLI (they import it).
"""
