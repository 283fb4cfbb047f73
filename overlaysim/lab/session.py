"""A workshop testbed: built, started and torn down exactly like ``overlaysim up``.

:func:`lab_session` builds the underlay (:func:`~overlaysim.emu.net.underlay_session`),
starts one agent per host through :class:`~overlaysim.emu.testbed.Testbed` with the
manager on the first host, waits until membership has formed, and yields a
:class:`~overlaysim.lab.commands.Lab`. Leaving the block, whatever the reason (``exit``,
Ctrl-D, an exception, SIGTERM), stops every agent and removes the underlay.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from overlaysim.lab.commands import Lab


@contextlib.contextmanager
def lab_session(
    topology: str | Path,
    *,
    profile: str = "lan",
    publish: bool = False,
    say: bool = True,
    managers: list[str] | None = None,
) -> Iterator[Lab]:
    """A running testbed for the topology YAML file ``topology``.

    ``publish`` also writes the address book ``overlaysim up`` writes, so the
    Docker-style commands (``overlaysim inspect h2``...) work from another terminal;
    it is skipped when another testbed already owns it. ``say`` prints progress.
    ``managers`` defaults to the first host.
    """
    from overlaysim.emu.live import LiveTestbed, NoTestbed, read_live, remove_live, write_live
    from overlaysim.emu.net import underlay_session
    from overlaysim.emu.setup import require_emulation
    from overlaysim.emu.testbed import Testbed
    from overlaysim.scenario.loader import load_topology

    require_emulation()
    topo = load_topology(topology)
    hosts = list(topo.hosts)
    managers = list(managers or hosts[:1])
    with underlay_session(topo) as u:
        # interactive testbeds may get encrypted networks at any time: their keys need
        # the sealed manager channel, so the control plane is always keyed here
        tb = Testbed(u, managers=managers, profile=profile, cluster_key=os.urandom(32))
        run_id = u.record.path.parent.name if u.record is not None else ""
        published = False
        try:
            t0 = time.monotonic()
            for h in hosts:
                tb.start_agent(h, managers)
            tb.wait_ready(hosts)
            tb.wait_formed(hosts)
            if publish:
                try:
                    read_live()
                except NoTestbed:
                    write_live(LiveTestbed.of(tb, hosts, run_id, topology=str(topology)))
                    published = True
            if say:
                print(
                    f"testbed {run_id} up: {len(hosts)} hosts with agents ({profile} timing), "
                    f"manager on {tb.manager_host}, formed in {time.monotonic() - t0:.1f} s"
                )
            yield Lab(testbed=tb, underlay=u)
        finally:
            if published:
                remove_live(run_id)
            for host in tb.stop():
                print(f"teardown: the agent on {host} had to be killed", file=sys.stderr)
            for problem in tb.errors:
                print(f"teardown: {problem}", file=sys.stderr)
            tb.remove_files()
            with contextlib.suppress(OSError):
                tb.run_dir.rmdir()  # kept only if a record lists leftovers for 'clean'
