"""The emulator's journal of what a run creates (``/run/overlaysim/<run_id>/underlay.jsonl``).

A :class:`RunRecord` is a :class:`~overlaysim.agent.journal.Journal` (the same rule
and format as the agents' data-plane journals: each object is journalled *before* it
is created; a process, whose PID only exists afterwards, right after it starts),
headed by the run line (owner PID and its start time) and closed by a ``stopped``
line. The items: root-namespace links and bridges, host shells, started processes
and nftables tables. A record whose owner process is still alive belongs to a live
run; :mod:`overlaysim.emu.clean` leaves those alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from overlaysim.agent.journal import Journal
from overlaysim.emu.procs import proc_start

log = logging.getLogger(__name__)

#: Where runs keep their records (tmpfs: a reboot clears it, as it clears what it lists).
STATE_DIR = Path("/run/overlaysim")
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

    def to_dict(self) -> dict[str, object]:
        """The journal line's fields (empty ones left out)."""
        d = asdict(self)
        d["argv"] = list(self.argv)
        return {k: v for k, v in d.items() if v not in (None, "", [])}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Item:
        return cls(**{**data, "argv": tuple(data.get("argv", ()))})

    def key(self) -> tuple[object, ...]:
        if self.kind in (PROCESS, HOST) and self.pid is not None:
            return (self.kind, self.pid, self.start)
        return (self.kind, self.name)


class RunRecord(Journal[Item]):
    """The journal of one run, with its header; :meth:`outstanding` is what may still exist."""

    def __init__(
        self,
        *,
        path: Path,
        run_id: str,
        tag: str,
        owner_pid: int,
        owner_start: int | None,
        stopped: bool = False,
    ) -> None:
        super().__init__(path)
        self.path: Path = path
        self.run_id = run_id
        self.tag = tag
        self.owner_pid = owner_pid
        self.owner_start = owner_start
        self.stopped = stopped
        self._headed = True  # False while :meth:`load` has not seen the run line

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
        rec = cls(path=path, run_id="", tag="", owner_pid=0, owner_start=None)
        rec._headed = False
        rec.replay_lines(path, Item.from_dict)
        if not rec._headed:
            raise ValueError(f"{path}: no run header")
        return rec

    def _header(self, op: str, data: dict[str, Any]) -> None:
        if op == "stopped":
            self.stopped = True
            return
        if op != "run":
            super()._header(op, data)
            return
        try:
            self.run_id = str(data["run_id"])
            self.tag = str(data["tag"])
            self.owner_pid = int(data["owner_pid"])
            self.owner_start = data.get("owner_start")
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: skipping unreadable run header (%s)", self.path, exc)
            return
        self._headed = True

    def outstanding(self, kind: str | None = None) -> list[Item]:  # type: ignore[override]
        """Recorded objects not yet removed, oldest first (optionally of one kind)."""
        return [i for i in super().outstanding() if kind is None or i.kind == kind]

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
