"""The emulated testbed: a running underlay with one overlayd agent per host.

:class:`Testbed` owns the agent processes of one run. Every agent runs inside its
Mininet host (``Underlay.popen``) and keeps its files in the run folder
``/run/overlaysim/<run_id>/`` next to the underlay's own record:

=====================  ==============================================================
``<host>.sock``        the agent's control socket (the runner talks to it from the root
                       namespace: a unix socket on the shared filesystem, no network)
``<host>.jsonl``       its JSON-lines event log (every boot appends)
``<host>-created.jsonl``  its record of created kernel objects (``overlaysim clean`` reads it)
``<host>.err``         its standard error
=====================  ==============================================================

The manager role runs in the agent of the first manager host (``--serve-manager``);
every agent joins through the managers' underlay addresses. :meth:`Testbed.stop` shuts
every agent down (control ``shutdown``, then SIGKILL for stragglers) and removes what
any killed boot left in the kernel, from its record.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlaysim.agent.control import ControlClient
from overlaysim.agent.created import load_outstanding
from overlaysim.agent.logging import read_log
from overlaysim.agent.manager import MANAGER_PORT
from overlaysim.agent.names import name_part
from overlaysim.emu.clean import remove_name_files
from overlaysim.emu.net import Underlay
from overlaysim.errors import UserError

_CLEAN = "from overlaysim.agent.created import clean_recorded; clean_recorded"
_NAMES = "from overlaysim.emu.clean import remove_name_files; remove_name_files"

#: Cluster port of every agent (UDP and TCP).
AGENT_PORT = 7946


class TestbedError(UserError):
    """Agents did not start, answer or converge; the message names which and why."""

    __test__ = False


@dataclass(slots=True)
class AgentProcess:
    """One boot of the agent on one host."""

    host: str
    #: A :class:`subprocess.Popen` or a fork server's :class:`~overlaysim.emu.forkserver.Forked`.
    proc: Any
    boot: int
    #: Time the process was spawned (``time.monotonic()``).
    spawned: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None


class Testbed:
    """Agents on an underlay; see the module docstring.

    ``agent_args`` are extra ``overlayd`` options (e.g. ``["--reconcile-interval", "5"]``).
    ``fork_agents`` chooses how agents start (see :attr:`fork_agents`).
    Nothing starts until :meth:`start_agent`.
    """

    __test__ = False  # not a pytest class, whatever its name

    def __init__(
        self,
        underlay: Underlay,
        *,
        managers: Sequence[str],
        profile: str = "lan",
        seed: int = 0,
        agent_args: Sequence[str] = (),
        cluster_key: bytes | None = None,
        fork_agents: bool | None = None,
    ) -> None:
        if underlay.record is None or underlay.plan is None:
            raise TestbedError("the underlay must be built before agents can start")
        if not managers:
            raise TestbedError("at least one manager host is needed")
        self.underlay = underlay
        self.managers = tuple(managers)
        self.profile = profile
        self.seed = seed
        self.agent_args = tuple(agent_args)
        #: Fork agents from a warm interpreter (default) rather than exec a fresh
        #: ``python -m`` per host; ``OVERLAYSIM_AGENT_EXEC=1`` turns it off.
        self.fork_agents = (
            os.environ.get("OVERLAYSIM_AGENT_EXEC", "") != "1"
            if fork_agents is None
            else fork_agents
        )
        self.run_dir: Path = underlay.record.path.parent
        #: Gossip/manager key of this run (None: cleartext control plane). Agents read
        #: it from a root-only file, so it never shows in ``ps``.
        self.cluster_key = cluster_key
        if cluster_key is not None:
            path = self.keyfile
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(base64.b64encode(cluster_key).decode() + "\n")
        #: Namespace prefix the agents use (the underlay's ``osim<tag>``), so the
        #: container namespaces of concurrent runs never collide.
        self.prefix: str = underlay.plan.prefix
        self.agents: dict[str, AgentProcess] = {}
        #: Hosts an agent was ever forked or started for, even one interrupted before
        #: it was entered in :attr:`agents`: its files are still to be removed.
        self._tried: set[str] = set()
        self._boots: dict[str, int] = {}
        self._retired: list[AgentProcess] = []
        #: Clean-up problems met by :meth:`stop` (it does not raise).
        self.errors: list[str] = []
        #: Kernel clean-ups of killed boots still running (see ``kill_agent(clean_later=)``).
        self._cleaning: dict[str, Future[None]] = {}
        self._cleaner: ThreadPoolExecutor | None = None
        #: Agents may be started from a worker thread (a scenario's restart) while
        #: :meth:`stop` runs: spawning and stopping take turns, and once stopping no
        #: agent starts, so none is left behind.
        self._spawn_lock = threading.Lock()
        self._stopping = False

    # -- paths and clients ------------------------------------------------------------

    def sock(self, host: str) -> Path:
        return self.run_dir / f"{host}.sock"

    def log_path(self, host: str) -> Path:
        return self.run_dir / f"{host}.jsonl"

    def record_path(self, host: str) -> Path:
        return self.run_dir / f"{host}-created.jsonl"

    @property
    def keyfile(self) -> Path:
        """Where the run's gossip key is kept (when it has one)."""
        return self.run_dir / "cluster.key"

    def err_path(self, host: str) -> Path:
        return self.run_dir / f"{host}.err"

    def client(self, host: str, timeout: float = 60.0) -> ControlClient:
        """Control client of ``host``'s agent."""
        return ControlClient(self.sock(host), timeout=timeout)

    def call(self, host: str, op: str, **args: Any) -> Any:
        """One control operation on ``host``'s agent."""
        return self.client(host).call(op, **args)

    @property
    def manager_host(self) -> str:
        """The host whose agent serves the manager API."""
        return self.managers[0]

    def manager_call(self, call: str, **args: Any) -> Any:
        """A manager request through the manager host's agent."""
        return self.call(self.manager_host, "manager", call=call, args=args)

    def rotate_keys(self, hosts: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Rotate the network keys at the manager, then have the agents on ``hosts``
        fetch the new ring at once, so the rotation finishes everywhere before the next.

        Returns the manager's new ring and each host's answer to ``keys``
        (``generation``, ``primary``, ``tags``).
        """
        ring = self.manager_call("rotate_keys")
        hosts = list(hosts)
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda h: self.call(h, "keys"), hosts))
        return ring, dict(zip(hosts, answers, strict=True))

    def running(self) -> list[str]:
        """Hosts whose current agent process is alive."""
        return [h for h, a in list(self.agents.items()) if a.running()]

    # -- agent lifecycle ----------------------------------------------------------------

    def argv(self, host: str, seeds: Iterable[str], *, keyed: bool = True) -> list[str]:
        """The ``overlayd`` command line for ``host`` (``keyed=False``: without the
        run's gossip key, e.g. to show that such a node cannot join)."""
        u = self.underlay
        ip = u.underlay_ip(host)
        boot = self._boots.get(host, 0)
        hosts = list(u.hosts)
        argv = [
            sys.executable,
            "-m",
            "overlaysim.agent.daemon",
            "--name",
            host,
            "--bind",
            ip,
            "--port",
            str(AGENT_PORT),
            "--seeds",
            ",".join(f"{u.underlay_ip(s)}:{AGENT_PORT}" for s in seeds if s != host),
            "--control",
            str(self.sock(host)),
            "--log",
            str(self.log_path(host)),
            "--record",
            str(self.record_path(host)),
            "--profile",
            self.profile,
            "--prefix",
            self.prefix,
            "--underlay-mtu",
            str(u.mtu),
            # reproducible protocol randomness per host and boot
            "--seed",
            str(self.seed * 1_000_003 + hosts.index(host) * 1009 + boot),
        ]
        if keyed and self.cluster_key is not None:
            argv += ["--gossip-keyfile", str(self.keyfile)]
        if host == self.manager_host:
            argv.append("--serve-manager")
        else:
            argv += ["--manager", f"{u.underlay_ip(self.manager_host)}:{MANAGER_PORT}"]
        return argv + list(self.agent_args)

    def start_agent(self, host: str, seeds: Iterable[str], *, keyed: bool = True) -> AgentProcess:
        """Spawn ``host``'s agent (it must not be running); returns at once.
        ``keyed=False`` leaves out the run's gossip key (see :meth:`argv`)."""
        self._settled(host)  # a restart must not race the clean-up of the crashed boot
        with self._spawn_lock:
            if self._stopping:
                raise TestbedError(f"the testbed is stopping: the agent on {host} was not started")
            return self._spawn(host, seeds, keyed=keyed)

    def _spawn(self, host: str, seeds: Iterable[str], *, keyed: bool) -> AgentProcess:
        old = self.agents.get(host)
        if old is not None:
            if old.running():
                raise TestbedError(f"the agent on {host} is already running (pid {old.pid})")
            self._retired.append(old)
        boot = self._boots.get(host, 0) + 1
        argv = self.argv(host, seeds, keyed=keyed)
        self._boots[host] = boot
        self._tried.add(host)
        proc: Any
        if self.fork_agents:
            # One warm interpreter forks every agent: no per-host interpreter start
            # and import, which is most of a host's set-up on a small machine.
            proc = self.underlay.spawn_agent(host, argv, self.err_path(host))
        else:
            with self.err_path(host).open("ab") as err:
                proc = self.underlay.popen(
                    host,
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
        agent = AgentProcess(host=host, proc=proc, boot=boot, spawned=time.monotonic())
        self.agents[host] = agent
        return agent

    def wait_ready(self, hosts: Iterable[str], timeout: float = 60.0) -> dict[str, float]:
        """Wait until each agent's control socket answers ``status``.

        Returns each host's node start time (the ``start`` line of its current boot,
        monotonic seconds). Raises :class:`TestbedError` naming agents that exited or
        did not answer in time.
        """
        pending = list(hosts)
        deadline = time.monotonic() + timeout
        started: dict[str, float] = {}
        while pending:
            still = []
            for host in pending:
                agent = self.agents[host]
                if not agent.running():
                    raise TestbedError(
                        f"the agent on {host} exited with status {agent.proc.returncode}: "
                        f"{self._stderr_tail(host)}"
                    )
                try:
                    self.client(host, timeout=5.0).call("status")
                except (OSError, ValueError):
                    still.append(host)
                    continue
                started[host] = self._start_time(host)
            pending = still
            if pending and time.monotonic() > deadline:
                raise TestbedError(
                    f"agents on {', '.join(pending)} did not answer on their control socket "
                    f"within {timeout:.0f} s"
                )
            if pending:
                time.sleep(0.05)
        return started

    def wait_formed(self, hosts: Sequence[str], timeout: float = 60.0) -> float:
        """Wait until every agent in ``hosts`` sees every other one alive.

        Returns the seconds waited; raises :class:`TestbedError` naming, for each agent
        that had not converged, the members it did not see alive.
        """
        t0 = time.monotonic()
        want = set(hosts)
        missing: dict[str, list[str]] = {}
        # Ask only the agents that still miss someone (a hundred `members` calls every
        # round would load the very agents we wait for); when none does, one full round
        # confirms, since an agent that saw everyone may since have suspected someone.
        pending = list(hosts)
        confirming = False
        while True:
            missing = {}
            for host in pending:
                members = self.client(host, timeout=5.0).call("members")
                alive = {m for m, info in members.items() if info.get("state") == "alive"}
                lacking = sorted(want - alive - {host})
                if lacking:
                    missing[host] = lacking
            if not missing:
                if confirming:
                    return time.monotonic() - t0
                pending, confirming = list(hosts), True
                continue
            pending, confirming = [h for h in hosts if h in missing], False
            if time.monotonic() - t0 > timeout:
                detail = "; ".join(
                    f"{h} misses {', '.join(m[:5])}{' ...' if len(m) > 5 else ''}"
                    for h, m in sorted(missing.items())[:10]
                )
                raise TestbedError(
                    f"{len(missing)} of {len(hosts)} agents did not see every other agent alive "
                    f"within {timeout:.0f} s: {detail}"
                )
            time.sleep(0.2)

    def kill_agent(self, host: str, *, clean_later: bool = False) -> None:
        """SIGKILL ``host``'s agent (a crash) and remove what that boot left in the kernel.

        The crashed host's containers go with it, as on a real machine; a restart
        re-creates them. ``clean_later`` returns once the process is dead and removes
        the kernel objects on a worker thread: the removal (an interpreter started in
        the host) takes seconds on a busy machine, and a scenario's next steps should
        not wait for housekeeping the crash itself does not need. Starting, killing or
        stopping that host again first waits for it (and raises its error).
        """
        self._settled(host)
        agent = self.agents.get(host)
        if agent is not None and agent.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGKILL)
            agent.proc.wait(timeout=10)
        if not clean_later:
            self._clean_kernel(host)
            return
        if self._cleaner is None:
            self._cleaner = ThreadPoolExecutor(max_workers=2, thread_name_prefix="clean")
        self._cleaning[host] = self._cleaner.submit(self._clean_kernel, host)

    def _settled(self, host: str) -> None:
        """Wait for a deferred clean-up of ``host``'s killed boot; its error surfaces here."""
        pending = self._cleaning.pop(host, None)
        if pending is not None:
            pending.result()

    def wait_exit(self, host: str, timeout: float = 10.0) -> bool:
        """Wait for ``host``'s agent to exit by itself (after ``leave``); SIGKILL it if late.

        Returns whether it exited on its own.
        """
        self._settled(host)
        agent = self.agents.get(host)
        if agent is None:
            return True
        try:
            agent.proc.wait(timeout=timeout)
            clean = True
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.pid, signal.SIGKILL)
            agent.proc.wait(timeout=10)
            clean = False
        self._clean_kernel(host)
        return clean

    def stop(self, timeout: float = 15.0) -> list[str]:
        """Shut every agent down and remove what they left; returns hosts that needed SIGKILL.

        Never raises: clean-up problems are appended to :attr:`errors`.

        Agents are asked to ``shutdown`` without a leave (the run is over: a wave of
        leaves would only add noise to the logs), in parallel, the manager hosts last:
        a stopping agent gives its containers' addresses back to the manager, which must
        still be there to take them. From here on no agent starts (a restart still under
        way on a worker thread fails with an error).
        """
        with self._spawn_lock:
            self._stopping = True
        running = self.running()

        def ask(host: str) -> None:
            with contextlib.suppress(Exception):  # a hung agent gets SIGKILL below
                self.client(host, timeout=5.0).call("shutdown", leave=False)

        killed = []
        managers = [h for h in running if h in self.managers]
        for group in ([h for h in running if h not in managers], managers):
            if group:
                with ThreadPoolExecutor(max_workers=min(16, len(group))) as pool:
                    list(pool.map(ask, group))
            deadline = time.monotonic() + timeout
            for host in group:
                proc = self.agents[host].proc
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
                    killed.append(host)
        for agent in self._retired:
            if agent.running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(agent.pid, signal.SIGKILL)
                agent.proc.wait(timeout=10)
        for host in list(self.agents):
            try:
                self._settled(host)
                self._clean_kernel(host)
            except TestbedError as exc:  # keep going: the other hosts still need it
                self.errors.append(str(exc))
        if self._cleaner is not None:
            self._cleaner.shutdown(wait=True)
            self._cleaner = None
        return killed

    def remove_files(self, keep_logs_in: Path | None = None) -> None:
        """Delete the agents' files from the run folder (copying logs first, if asked).

        A data-plane record that still lists objects is kept for ``overlaysim clean``.
        """
        if keep_logs_in is not None:
            keep_logs_in.mkdir(parents=True, exist_ok=True)
        for host in sorted(self._tried):  # every host in agents is in it too
            log = self.log_path(host)
            if keep_logs_in is not None and log.exists():
                shutil.copyfile(log, keep_logs_in / log.name)
            paths = [log, self.sock(host), self.err_path(host)]
            record = self.record_path(host)
            if record.exists() and not load_outstanding(record):
                paths.append(record)
            for path in paths:
                path.unlink(missing_ok=True)
        self.keyfile.unlink(missing_ok=True)

    # -- logs and resources -----------------------------------------------------------

    def logs(self) -> dict[str, list[dict[str, Any]]]:
        """Every agent's log lines, by host."""
        return {h: read_log(self.log_path(h)) for h in self.agents if self.log_path(h).exists()}

    def rss_kib(self) -> dict[str, int]:
        """Resident memory of each running agent (``VmRSS`` in KiB)."""
        out = {}
        for host in self.running():
            try:
                status = Path(f"/proc/{self.agents[host].pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    out[host] = int(line.split()[1])
        return out

    def _start_time(self, host: str) -> float:
        """Monotonic time of the last ``start`` line in ``host``'s log (its current boot)."""
        for line in reversed(read_log(self.log_path(host))):
            if line.get("kind") == "start":
                return float(line["t"])
        return self.agents[host].spawned

    def _stderr_tail(self, host: str, n: int = 600) -> str:
        try:
            text = self.err_path(host).read_text(errors="replace").strip()
        except OSError:
            return "(no stderr)"
        return text[-n:] or "(empty stderr)"

    def _clean_kernel(self, host: str) -> None:
        """Remove what ``host``'s killed boot recorded, from inside the host.

        The agent's named namespaces are bound in its host's private mount namespace
        (``mnexec -n``), so the clean-up must run there to see them.
        """
        record = self.record_path(host)
        # its containers' resolv.conf and UTS files (named after their namespaces)
        names = f"{self.prefix}-{name_part(host)}-"
        if not record.exists() or not load_outstanding(record):
            # The namespaces went, but a file can outlive them (a boot killed between
            # writing one and its namespace record); both folders are shared with this
            # process, so no trip into the host is needed.
            try:
                remove_name_files(names)
            except OSError as exc:
                raise TestbedError(f"could not remove {names}* name files: {exc}") from None
            return
        code = f"from pathlib import Path; {_CLEAN}(Path({str(record)!r})); {_NAMES}({names!r})"
        out = self.underlay.cmd(host, [sys.executable, "-c", code], timeout=60)
        if out.returncode != 0 or load_outstanding(record):
            raise TestbedError(
                f"could not remove what the agent on {host} left in the kernel "
                f"(kept in {record} for `overlaysim clean`): {out.stderr.strip()[-400:]}"
            )
