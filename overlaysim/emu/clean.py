"""What an emulation run created, and removing exactly that (``overlaysim clean``).

Every run of the underlay writes an append-only record, ``/run/overlaysim/<run_id>/
underlay.jsonl``, *before* it creates each object: the run header (owner PID and its
start time), root-namespace links and bridges, host shells, started processes and
nftables tables. Replaying the record gives what may still exist. A record whose owner
process is still alive belongs to a live run and is left alone.

:func:`clean` then removes, for dead runs, exactly what their records list, and sweeps
the root namespace for objects carrying the project's prefix (links, named namespaces,
nftables tables) that no live run claims. Processes are only ever killed from records,
matched by PID *and* start time so a reused PID is never hit; nothing without the
prefix or a record is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Where runs keep their records (tmpfs: a reboot clears it, as it clears what it lists).
STATE_DIR = Path("/run/overlaysim")
#: Every object the project names in the root namespace starts with this.
PREFIX = "osim"
RECORD_FILE = "underlay.jsonl"
_LOCK = ".lock"

# Kinds of recorded objects.
HOST = "host"  # a Mininet host shell (its network namespace lives as long as it does)
PROCESS = "process"  # a process started inside a host
LINK = "link"  # an interface in the root namespace (veth end)
BRIDGE = "bridge"  # a Linux bridge in the root namespace (a switch)
NFT = "nft"  # an nftables table in the root namespace
_KINDS = (HOST, PROCESS, LINK, BRIDGE, NFT)


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One recorded object. ``name`` identifies links, bridges, tables and hosts;
    ``pid`` + ``start`` (clock ticks since boot) identify processes and host shells."""

    kind: str
    name: str = ""
    pid: int | None = None
    start: int | None = None
    host: str | None = None
    family: str | None = None
    argv: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown record kind {self.kind!r}")

    def describe(self) -> str:
        """Short human description, used in clean's output."""
        if self.kind in (PROCESS, HOST):
            what = " ".join(self.argv[:3]) if self.argv else self.name
            where = f" in {self.host}" if self.host else ""
            return f"{self.kind} {self.pid} ({what}{where})"
        if self.kind == NFT:
            return f"nft table {self.family} {self.name}"
        return f"{self.kind} {self.name}"

    def key(self) -> tuple[object, ...]:
        if self.kind in (PROCESS, HOST) and self.pid is not None:
            return (self.kind, self.pid, self.start)
        return (self.kind, self.name)


@dataclass(slots=True)
class RunRecord:
    """Append-only record of one run; :meth:`outstanding` replays what may still exist."""

    path: Path
    run_id: str
    tag: str
    owner_pid: int
    owner_start: int | None
    stopped: bool = False
    _live: dict[tuple[object, ...], Item] = field(default_factory=dict)

    @classmethod
    def create(cls, state_dir: Path, run_id: str, tag: str) -> RunRecord:
        """Start a new record for this process; fails if ``run_id`` is already taken."""
        run_dir = state_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / RECORD_FILE
        if path.exists():
            raise FileExistsError(f"run record {path} already exists")
        pid = os.getpid()
        rec = cls(path=path, run_id=run_id, tag=tag, owner_pid=pid, owner_start=proc_start(pid))
        rec._append(
            {
                "op": "run",
                "run_id": run_id,
                "tag": tag,
                "owner_pid": pid,
                "owner_start": rec.owner_start,
            }
        )
        return rec

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        """Replay a record file. Unreadable lines (a crash mid-write) are skipped."""
        rec: RunRecord | None = None
        live: dict[tuple[object, ...], Item] = {}
        stopped = False
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            try:
                data = json.loads(line)
                op = data.pop("op")
                if op == "run":
                    rec = cls(
                        path=path,
                        run_id=str(data["run_id"]),
                        tag=str(data["tag"]),
                        owner_pid=int(data["owner_pid"]),
                        owner_start=data.get("owner_start"),
                    )
                    continue
                if op == "stopped":
                    stopped = True
                    continue
                data["argv"] = tuple(data.get("argv", ()))
                item = Item(**data)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("%s:%d: skipping unreadable record line (%s)", path, lineno, exc)
                continue
            if op == "add":
                live[item.key()] = item
            elif op == "del":
                live.pop(item.key(), None)
        if rec is None:
            raise ValueError(f"{path}: no run header")
        rec.stopped = stopped
        rec._live = live
        return rec

    def add(self, item: Item) -> None:
        """Record ``item`` (call just before creating it, or right after for PIDs)."""
        self._live[item.key()] = item
        self._append({"op": "add", **_item_dict(item)})

    def drop(self, item: Item) -> None:
        """Record that ``item`` is gone."""
        self._live.pop(item.key(), None)
        self._append({"op": "del", **_item_dict(item)})

    def outstanding(self, kind: str | None = None) -> list[Item]:
        """Recorded objects not yet removed, oldest first (optionally of one kind)."""
        return [i for i in self._live.values() if kind is None or i.kind == kind]

    def mark_stopped(self) -> None:
        """Record that the owner finished its teardown."""
        self.stopped = True
        self._append({"op": "stopped"})

    def is_live(self) -> bool:
        """Whether the owning process is still running (so the run may be in use)."""
        return not self.stopped and proc_start(self.owner_pid) == self.owner_start

    def discard(self) -> None:
        """Delete the record file, and its run folder if nothing else is in it."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()

    def _append(self, data: dict[str, object]) -> None:
        # One short append per line: a crash loses at most the line in flight.
        with self.path.open("a") as f:
            f.write(json.dumps(data, sort_keys=True) + "\n")


def _item_dict(item: Item) -> dict[str, object]:
    d = asdict(item)
    d["argv"] = list(item.argv)
    return {k: v for k, v in d.items() if v not in (None, "", [])}


# --- processes -----------------------------------------------------------------------


def proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def netns_inode(pid: int) -> int | None:
    """Inode of the network namespace of ``pid`` (None if it is gone)."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def pids_in_netns(inodes: set[int]) -> list[int]:
    """PIDs whose network namespace is one of ``inodes``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            ino = netns_inode(int(entry.name))
            if ino is not None and ino in inodes:
                found.append(int(entry.name))
    return found


def terminate(pid: int, start: int | None, grace_s: float = 1.0) -> bool:
    """SIGTERM (then SIGKILL) ``pid`` if it is still the process started at ``start``.

    Returns whether a matching process was found. See :func:`terminate_all`.
    """
    return terminate_all([(pid, start)], grace_s) == 1


def terminate_all(targets: list[tuple[int, int | None]], grace_s: float = 1.0) -> int:
    """SIGTERM every (pid, start) still alive with that start time; SIGKILL survivors.

    All are signalled first and then waited for together, so stopping many processes
    costs one grace period, not one each. A process that leads its own process group
    has the whole group signalled, so its children go too. Returns how many matched.
    """
    alive = []
    for pid, start in targets:
        if start is None or proc_start(pid) != start:
            continue
        group = -pid if _is_group_leader(pid) else pid
        _signal(group, signal.SIGTERM)
        alive.append((pid, start, group))
    matched = len(alive)
    deadline = time.monotonic() + grace_s
    while alive:
        alive = [a for a in alive if proc_start(a[0]) == a[1] and not _is_zombie(a[0])]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    for _pid, _start, group in alive:
        _signal(group, signal.SIGKILL)
    return matched


def _signal(target: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if target < 0:
            os.killpg(-target, sig)
        else:
            os.kill(target, sig)


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].startswith("Z")


# --- shared root-namespace setting: bridge netfilter ----------------------------------

BRIDGE_NF_SYSCTLS = tuple(
    Path(f"/proc/sys/net/bridge/bridge-nf-call-{t}tables") for t in ("arp", "ip", "ip6")
)


#: Machine-wide: who holds the bridge-nf sysctls at 0, and their original values.
BRIDGE_NF_STATE = STATE_DIR / "bridge-nf.json"


@contextlib.contextmanager
def state_lock(state_dir: Path = STATE_DIR) -> Iterator[None]:
    """Serialise changes to shared state (run tags, the bridge-nf holders) across processes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / _LOCK).open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def hold_bridge_nf(record: Path) -> bool:
    """Turn off bridge netfilter calls while the run recorded at ``record`` lives.

    With ``br_netfilter`` active, frames crossing the underlay's bridges pass through
    the root namespace's iptables/nftables, whose rules (a Docker host's FORWARD drop,
    say) are not ours to reason about. The sysctls are global, so the holders are kept
    in one machine-wide file (:data:`BRIDGE_NF_STATE`) whatever folder a run records
    into: the first holder saves the original values, the last to go restores them.
    Returns False when there is nothing to turn off (or it cannot be).
    """
    present = [p for p in BRIDGE_NF_SYSCTLS if p.exists()]
    if not present:
        return False
    with state_lock(BRIDGE_NF_STATE.parent):
        state = _read_json(BRIDGE_NF_STATE) or {
            "original": {str(p): p.read_text().strip() for p in present},
            "holders": [],
        }
        try:
            for p in present:
                p.write_text("0")
        except OSError as exc:  # read-only /proc/sys (some containers): bridges still work
            log.warning("cannot turn off bridge netfilter (%s); root firewall rules apply", exc)
            return False
        if str(record) not in state["holders"]:
            state["holders"].append(str(record))
        _write_json(BRIDGE_NF_STATE, state)
    return True


def release_bridge_nf(record: Path | None) -> list[str]:
    """Drop ``record``'s hold (None: only prune dead holders); restore when none remain."""
    with state_lock(BRIDGE_NF_STATE.parent):
        state = _read_json(BRIDGE_NF_STATE)
        if state is None:
            return []
        mine = str(record) if record is not None else None
        holders = [h for h in state["holders"] if h != mine and _record_is_live(Path(h))]
        if holders:
            state["holders"] = holders
            _write_json(BRIDGE_NF_STATE, state)
            return []
        restored = []
        for name, value in state["original"].items():
            p = Path(name)
            if p.exists():
                p.write_text(value)
                restored.append(f"sysctl {p.name}={value} restored")
        BRIDGE_NF_STATE.unlink()
        return restored


def _record_is_live(path: Path) -> bool:
    try:
        return RunRecord.load(path).is_live()
    except (OSError, ValueError):
        return False


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(path)


# --- clean ---------------------------------------------------------------------------


def load_records(state_dir: Path = STATE_DIR) -> list[RunRecord]:
    """Every readable run record under ``state_dir``."""
    records = []
    if not state_dir.is_dir():
        return records
    for path in sorted(state_dir.glob(f"*/{RECORD_FILE}")):
        try:
            records.append(RunRecord.load(path))
        except (OSError, ValueError) as exc:
            log.warning("unreadable run record %s: %s", path, exc)
    return records


def clean(
    dry_run: bool = False,
    *,
    state_dir: Path = STATE_DIR,
    prefix: str = PREFIX,
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
    if not dry_run:
        rec.discard()


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
        if name.startswith(f"{prefix}_"):
            if not dry_run:
                delete_nft_table(family, name)
            note(f"nft table {family} {name}")


# --- root-namespace helpers (pyroute2 for links, the nft tool for tables) ------------


def delete_link(name: str, ipr: Any = None) -> bool:
    """Delete root-namespace link ``name`` if present (a veth takes its peer along).

    ``ipr`` is an open root-namespace IPRoute to reuse (one is opened otherwise).
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    if ipr is None:
        with IPRoute() as own:
            return delete_link(name, own)
    found = ipr.link_lookup(ifname=name)
    if not found:
        return False
    try:
        ipr.link("del", index=found[0])
    except NetlinkError as exc:
        if exc.code == 19:  # ENODEV: went away meanwhile
            return False
        raise
    return True


def list_nft_tables() -> list[tuple[str, str]]:
    """(family, name) of every nftables table in the root namespace."""
    out = subprocess.run(
        ["nft", "-j", "list", "tables"], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        return []
    tables = []
    for obj in json.loads(out.stdout or "{}").get("nftables", []):
        t = obj.get("table")
        if t:
            tables.append((t["family"], t["name"]))
    return tables


def nft_table_exists(family: str, name: str) -> bool:
    return (family, name) in list_nft_tables()


def delete_nft_table(family: str, name: str) -> None:
    """Delete a root-namespace nftables table (quietly if it is already gone)."""
    cmd = {"nftables": [{"delete": {"table": {"family": family, "name": name}}}]}
    subprocess.run(
        ["nft", "-j", "-f", "-"], input=json.dumps(cmd), capture_output=True, text=True, check=False
    )
