"""Removing what crashed runs left behind, exactly (``overlaysim clean``).

Runs journal what they create (:mod:`overlaysim.emu.record` for the underlay,
:mod:`overlaysim.agent.created` for each agent's data plane; both are
:class:`~overlaysim.agent.journal.Journal` files). A record whose owner process is
still alive belongs to a live run and is left alone. This module only cleans:
:func:`clean` removes, for dead runs, exactly what their records list, and sweeps
the root namespace for objects carrying the project's prefix (links, named namespaces,
nftables tables) that no live run claims. Processes are only ever killed from records,
matched by PID *and* start time so a reused PID is never hit; nothing without the
prefix or a record is touched.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path

from overlaysim.agent import names
from overlaysim.emu.bridgenf import release_bridge_nf
from overlaysim.emu.procs import _signal, netns_inode, pids_in_netns, proc_start, terminate_all
from overlaysim.emu.record import (
    BRIDGE,
    HOST,
    LINK,
    NFT,
    PROCESS,
    RECORD_FILE,
    STATE_DIR,
    RunRecord,
    load_records,
)
from overlaysim.emu.rootns import delete_link, delete_nft_table, list_nft_tables, nft_table_exists


def clean(
    dry_run: bool = False,
    *,
    state_dir: Path = STATE_DIR,
    prefix: str = names.PREFIX,
    echo: Callable[[str], None] | None = print,
) -> list[str]:
    """Remove what dead runs left behind; return (and ``echo``) one line per removal.

    1. For each run record whose owner is gone: its processes and host shells (PID and
       start time must match), every process still inside those hosts' namespaces,
       its root-namespace links, bridges and nftables tables, what the agents' data-plane
       records (``*created*.jsonl`` in the same folder) still list; then the records.
    2. When no run is live: anything in the root namespace named with ``prefix`` --
       links (veth ends first, bridges last), named network namespaces, and nftables
       tables called ``<prefix>_*``.
    3. The bridge-netfilter sysctls, once no live run holds them.

    With ``dry_run`` nothing is changed and the lines say what would be removed.
    """
    if not prefix:
        raise ValueError("clean needs a non-empty prefix")
    done: list[str] = []

    def note(line: str) -> None:
        text = f"would remove {line}" if dry_run else f"removed {line}"
        done.append(text)
        if echo is not None:
            echo(text)

    records = load_records(state_dir)
    live = [rec for rec in records if rec.is_live()]
    for rec in records:
        if rec not in live:
            _clean_record(rec, dry_run, note)
    if live:
        # A live run may own prefixed objects its underlay record does not list (the
        # data plane's namespaces, say): sweeping by name now could break it.
        runs = ", ".join(f"{r.run_id} (pid {r.owner_pid})" for r in live)
        line = f"skipped the prefix sweep: live run(s) {runs}; stop them first"
        done.append(line)
        if echo is not None:
            echo(line)
    else:
        _sweep_prefixed(prefix, dry_run, note)
        _sweep_name_files(prefix, dry_run, note)
        _sweep_orphan_folders(state_dir, dry_run, note)
    if not dry_run:
        for line in release_bridge_nf(None):
            done.append(line)
            if echo is not None:
                echo(line)
    return done


def _clean_record(rec: RunRecord, dry_run: bool, note: Callable[[str], None]) -> None:
    procs = [i for i in rec.outstanding(PROCESS) if i.pid and proc_start(i.pid) == i.start]
    hosts = rec.outstanding(HOST)
    if not dry_run:
        terminate_all([(i.pid or 0, i.start) for i in procs])
    for item in procs:
        note(f"{item.describe()} [run {rec.run_id}]")
    # Whatever else still runs inside a host shell's namespace is the run's too.
    inodes = {
        ino
        for h in hosts
        if h.pid is not None and proc_start(h.pid) == h.start
        for ino in [netns_inode(h.pid)]
        if ino is not None
    }
    shells = {h.pid for h in hosts}
    inside = [p for p in (pids_in_netns(inodes) if inodes else []) if p not in shells]
    if not dry_run:
        terminate_all([(p, proc_start(p)) for p in inside])
    for pid in inside:
        note(f"process {pid} (inside a host of run {rec.run_id})")
    live_shells = [h for h in hosts if h.pid and proc_start(h.pid) == h.start]
    if not dry_run:
        for h in live_shells:  # an interactive bash ignores SIGTERM but not SIGHUP
            _signal(h.pid or 0, signal.SIGHUP)
        terminate_all([(h.pid or 0, h.start) for h in live_shells])
    for item in live_shells:
        note(f"{item.describe()} [run {rec.run_id}]")
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        existing = {m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
        for kind in (LINK, BRIDGE):  # veth ends before the bridges they hang off
            for item in rec.outstanding(kind):
                if item.name in existing:
                    if not dry_run:
                        delete_link(item.name, ipr)
                    note(item.describe())
    for item in rec.outstanding(NFT):
        if item.family and nft_table_exists(item.family, item.name):
            if not dry_run:
                delete_nft_table(item.family, item.name)
            note(item.describe())
    _clean_data_plane(rec.path.parent, dry_run, note)
    _remove_agent_files(rec, dry_run, note)
    if not dry_run:
        rec.discard()


def _remove_agent_files(rec: RunRecord, dry_run: bool, note: Callable[[str], None]) -> None:
    """The dead run's agent logs, stderr files, sockets and key in its folder: nobody
    will read them there (a run copies the logs it keeps into its results folder). A
    data-plane record that still lists objects stays, for the next clean."""
    files = [
        p
        for p in rec.path.parent.iterdir()
        if p != rec.path and "created" not in p.name and (p.is_file() or p.is_socket())
    ]
    if not files:
        return
    if not dry_run:
        for path in files:
            path.unlink(missing_ok=True)
    note(f"{len(files)} agent file(s) in {rec.path.parent} [run {rec.run_id}]")


def _clean_data_plane(run_dir: Path, dry_run: bool, note: Callable[[str], None]) -> None:
    """The agents' data-plane records (``*created*.jsonl``) in a dead run's folder."""
    paths = sorted(run_dir.glob("*created*.jsonl"))
    if not paths:
        return
    from overlaysim.agent.created import clean_recorded, load_outstanding

    for path in paths:
        if dry_run:
            for obj in load_outstanding(path):
                note(f"{obj.kind} {obj.name} [{path.name}]")
            continue
        for obj in clean_recorded(path):
            note(f"{obj.kind} {obj.name} [{path.name}]")
        if not load_outstanding(path):
            path.unlink()


def _sweep_orphan_folders(state_dir: Path, dry_run: bool, note: Callable[[str], None]) -> None:
    """Run folders whose underlay is gone (no record) but whose agents left files.

    Their hosts' namespaces died with the underlay, and with them everything the agents
    created inside; what remains are logs and records. Root-namespace objects a record
    still lists are removed first (through the data-plane record), then the folder.
    """
    if not state_dir.is_dir():
        return
    for run_dir in sorted(p for p in state_dir.iterdir() if p.is_dir()):
        if (run_dir / RECORD_FILE).exists():
            continue  # a record: handled (or live) above
        try:
            if time.time() - run_dir.stat().st_mtime < 60:
                continue  # may be a run starting right now, before its record exists
        except OSError:
            continue
        _clean_data_plane(run_dir, dry_run, note)
        if dry_run:
            note(f"folder {run_dir}")
            continue
        for path in run_dir.iterdir():
            if path.is_file() or path.is_socket():
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run_dir.rmdir()
            note(f"folder {run_dir}")


def remove_name_files(prefix: str) -> None:
    """Delete the resolv.conf and UTS files of namespaces named ``<prefix>...`` (a killed
    agent's containers: the testbed calls it with ``<run prefix>-<host>-``)."""
    _sweep_name_files(prefix, False, lambda _line: None)


def _sweep_name_files(
    prefix: str,
    dry_run: bool,
    note: Callable[[str], None],
    *,
    etc_root: Path | None = None,
    uts_root: Path | None = None,
) -> None:
    """Containers' resolv.conf (``/etc/netns/<netns>``) and UTS files of dead agents.

    Only entries named like the project's namespaces (``<prefix>...``) are looked at;
    in ``/etc/netns`` only our ``resolv.conf`` goes, and its folder only once empty.
    """
    from overlaysim.agent.resolvconf import NETNS_ETC, remove_resolv_conf
    from overlaysim.agent.uts import UTS_DIR, remove_uts

    etc = etc_root or NETNS_ETC
    uts = uts_root or UTS_DIR
    if etc.is_dir():
        for d in sorted(etc.iterdir()):
            if d.name.startswith(prefix) and (d / "resolv.conf").exists():
                if not dry_run:
                    remove_resolv_conf(d.name, root=etc)
                note(f"file {d / 'resolv.conf'}")
    if uts.is_dir():
        for f in sorted(uts.iterdir()):
            if f.name.startswith(prefix):
                if not dry_run:
                    with contextlib.suppress(ValueError, OSError):
                        remove_uts(f.name, root=uts)
                note(f"uts namespace file {f}")


def _sweep_prefixed(prefix: str, dry_run: bool, note: Callable[[str], None]) -> None:
    from pyroute2 import IPRoute
    from pyroute2 import netns as pr_netns

    with IPRoute() as ipr:
        links = []
        for msg in ipr.get_links():
            name = msg.get_attr("IFLA_IFNAME") or ""
            info = msg.get_attr("IFLA_LINKINFO")
            kind = (info.get_attr("IFLA_INFO_KIND") if info else None) or ""
            if name.startswith(prefix):
                links.append((kind == "bridge", name))
    for _is_bridge, name in sorted(links):
        if not dry_run:
            delete_link(name)
        note(f"link {name}")
    for name in sorted(pr_netns.listnetns()):
        if name.startswith(prefix):
            if not dry_run:
                with contextlib.suppress(OSError):
                    pr_netns.remove(name)
            note(f"netns {name}")
    for family, name in list_nft_tables():
        if names.is_underlay_table(name, prefix):
            if not dry_run:
                delete_nft_table(family, name)
            note(f"nft table {family} {name}")
