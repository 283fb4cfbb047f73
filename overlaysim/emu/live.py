"""The running testbed's address book: which agents run where, and how to reach them.

``overlaysim up`` writes ``/run/overlaysim/live.json`` when its testbed is ready and
removes it on teardown; the Docker-style commands (``overlaysim network create``,
``overlaysim run``, ...) read it and talk to the agents over their control sockets
(unix sockets on the shared filesystem, so no traffic crosses the underlay).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlaysim.agent import names
from overlaysim.agent.control import ControlClient, ControlError
from overlaysim.errors import UserError

if TYPE_CHECKING:
    from overlaysim.emu.testbed import Testbed

LIVE_FILE = Path("/run/overlaysim/live.json")


class NoTestbed(UserError):
    """No running testbed (or its owner died)."""


@dataclass(frozen=True, slots=True)
class LiveTestbed:
    run_id: str
    owner_pid: int
    manager: str
    #: host -> {"control": socket path, "underlay_ip": address}
    hosts: dict[str, dict[str, str]]
    topology: str = ""
    #: Namespace prefix of this run's agents (container netns: <prefix>-<host>-<name>).
    prefix: str = names.PREFIX

    @classmethod
    def of(cls, tb: Testbed, hosts: Iterable[str], run_id: str, topology: str = "") -> LiveTestbed:
        """The address book of running testbed ``tb`` (agents on ``hosts``), owned by
        this process."""
        u = tb.underlay
        return cls(
            run_id=run_id,
            owner_pid=os.getpid(),
            manager=tb.manager_host,
            hosts={
                h: {
                    "control": str(tb.sock(h)),
                    "underlay_ip": u.underlay_ip(h),
                    "pid": str(u.pid(h)),
                }
                for h in hosts
            },
            topology=topology,
            prefix=tb.prefix,
        )

    def control(self, host: str) -> str:
        try:
            return self.hosts[host]["control"]
        except KeyError:
            raise UserError(
                f"host {host!r} is not in the running testbed (hosts: {', '.join(sorted(self.hosts))})"
            ) from None

    def call(self, host: str, op: str, **args: Any) -> Any:
        """Run ``op`` on ``host``'s agent; its refusal, or an agent out of reach, is a
        :class:`UserError` naming the host (one line for the user, no traceback)."""
        path = self.control(host)
        try:
            return ControlClient(path).call(op, **args)
        except ControlError as exc:
            raise UserError(f"{host}: {exc.message}") from None
        except OSError as exc:  # refused, missing socket, reset: the agent is not there
            raise UserError(f"cannot reach the agent of {host} at {path}: {exc}") from None

    def call_manager(self, op: str, **args: Any) -> Any:
        """Run the manager's operation ``op`` (network and service records) on its host."""
        return self.call(self.manager, "manager", call=op, args=args)


def write_live(tb: LiveTestbed, path: Path = LIVE_FILE) -> None:
    """Publish the testbed atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "run_id": tb.run_id,
                "owner_pid": tb.owner_pid,
                "manager": tb.manager,
                "hosts": tb.hosts,
                "topology": tb.topology,
                "prefix": tb.prefix,
            },
            indent=2,
            sort_keys=True,
        )
    )
    os.replace(tmp, path)


def remove_live(run_id: str, path: Path = LIVE_FILE) -> None:
    """Withdraw the testbed, if the file is still ours."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if data.get("run_id") == run_id:
        path.unlink(missing_ok=True)


def read_live(path: Path = LIVE_FILE) -> LiveTestbed:
    """The running testbed, or :class:`NoTestbed` explaining how to start one."""
    hint = "start one with: sudo overlaysim up topologies/star.yaml (it runs until Ctrl-C)"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoTestbed(f"no running testbed ({path} does not exist); {hint}") from None
    except (OSError, ValueError) as exc:
        raise NoTestbed(f"{path}: unreadable ({exc}); {hint}") from None
    pid = int(data.get("owner_pid", 0))
    if pid <= 0 or not Path(f"/proc/{pid}").exists():
        raise NoTestbed(
            f"the testbed in {path} is gone (its owner, pid {pid}, is not running); "
            f"run 'sudo overlaysim clean', then {hint}"
        )
    return LiveTestbed(
        run_id=str(data["run_id"]),
        owner_pid=pid,
        manager=str(data["manager"]),
        hosts={str(k): dict(v) for k, v in data["hosts"].items()},
        topology=str(data.get("topology", "")),
        prefix=str(data.get("prefix", names.PREFIX)),
    )
