"""Link latency and ``delay`` in emulation: which mechanism carries it, and what it can carry.

Two mechanisms give the same semantics as the simulator (``overlaysim.sim.underlay``: a
packet from host a to host b waits the sum of the one-way delays of the links on its
path, plus any end-to-end delay):

* ``netem``: where the kernel has ``sch_netem``, a netem qdisc on both ends' egress of
  each link (requests built by :mod:`overlaysim.emu.netem`).
* ``nfqueue``: otherwise, the user-space delay line (:mod:`overlaysim.emu.delayline`).
  Each receiving host holds arriving packets for the whole path's delay, looked up by
  source address, so switch-to-switch links (a WAN link between two bridges, where
  no netfilter hook runs) are delayed too.

:func:`choose` picks one at run time; the manifest's ``mechanisms`` and ``overlaysim
doctor`` say which was used. The delay line costs CPU per packet: :func:`ceiling`
measures how much it carries (packets/s and Mbit/s, aggregate over the whole underlay,
since one process serves every host) and caches it for the machine's uptime.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from overlaysim.agent import names
from overlaysim.emu import delaycal
from overlaysim.emu import record as runrec
from overlaysim.emu.delaycal import Calibration
from overlaysim.emu.delayline import Hold, restore_script

if TYPE_CHECKING:
    from overlaysim.emu.underlay_view import UnderlayView
    from overlaysim.scenario.topology import Topology

log = logging.getLogger(__name__)

NETEM = "netem"
DELAY_LINE = "nfqueue"
NONE = "none"

#: Without sch_netem, the topology's own latency goes through the user-space delay line
#: only when some link has at least this much: below it the line's cost (every packet
#: through user space, a throughput ceiling) buys less than its own timing noise
#: (~0.4 ms under load), and veth's tens of microseconds are left as they are.
LINE_MIN_LATENCY_MS = 1.0

CEILING_CACHE = runrec.STATE_DIR / "delayline-ceiling.json"
_REPLY_TIMEOUT_S = 10.0


class DelayLineError(RuntimeError):
    """The delay-line process is gone or refused a command."""


def choose(netem: bool, nfqueue: bool) -> str:
    """The delay mechanism for a kernel: netem first, the delay line second, else none."""
    if netem:
        return NETEM
    if nfqueue and binding_available():
        return DELAY_LINE
    return NONE


def binding_available() -> bool:
    """Whether the ``netfilterqueue`` binding is importable (pip: NetfilterQueue)."""
    return importlib.util.find_spec("netfilterqueue") is not None


def why_none(netem: bool, nfqueue: bool) -> str:
    """One line saying why no delay mechanism is available."""
    parts = [] if netem else ["sch_netem missing (CONFIG_NET_SCH_NETEM)"]
    if not nfqueue:
        parts.append("iptables NFQUEUE target unavailable")
    elif not binding_available():
        parts.append("python netfilterqueue missing (pip install NetfilterQueue)")
    return "; ".join(parts)


def doctor_lines(caps: Mapping[str, Any], *, remeasure: bool = False) -> list[str]:
    """What ``overlaysim doctor`` says about delay: the mechanism, and the delay line's
    measured ceiling when that is the one (measured now if not cached)."""
    ok = {name: bool(getattr(cap, "ok", False)) for name, cap in caps.items()}
    mech = choose(ok.get("netem", False), ok.get("nfqueue", False))
    if mech == NETEM:
        return ["delay mechanism: netem (tc qdisc on both ends of each delayed link)"]
    if mech == NONE:
        return [
            f"delay mechanism: none: {why_none(ok.get('netem', False), ok.get('nfqueue', False))}"
        ]
    lines = ["delay mechanism: nfqueue (user-space NFQUEUE delay line; no sch_netem here)"]
    try:
        c = ceiling(refresh=remeasure)
    except Exception as exc:  # a failed measurement is reported, doctor goes on
        return [*lines, f"delay line ceiling: not measured ({exc})"]
    if c is not None:
        lines.append(f"delay line ceiling: {c.describe()}")
    return lines


# --- what each host holds ----------------------------------------------------------------


def path_holds(
    topology: Topology,
    addresses: Mapping[str, str],
    link_delay: Mapping[frozenset[str], tuple[float, float]],
    end_to_end: tuple[float, float] = (0.0, 0.0),
) -> dict[str, dict[str, Hold]]:
    """For each receiving host, the hold for each source address (paths with delay only).

    ``link_delay`` maps a topology link (its two node names) to (one-way ms, jitter ms);
    ``end_to_end`` is added once per packet. Paths are the simulator's: lowest topology
    latency (``overlaysim.sim.underlay`` routes the same way; emu may not import sim).
    """
    import networkx as nx

    graph = topology.graph()
    holds: dict[str, dict[str, Hold]] = {}
    paths = {
        h: nx.single_source_dijkstra_path(graph, h, weight="latency_ms") for h in topology.hosts
    }
    for dst in topology.hosts:
        mine: dict[str, Hold] = {}
        for src in topology.hosts:
            nodes = paths[src].get(dst)
            if src == dst or nodes is None:
                continue
            ms, jit = end_to_end
            for x, y in zip(nodes, nodes[1:], strict=False):
                d, j = link_delay.get(frozenset((x, y)), (0.0, 0.0))
                ms += d
                jit += j
            if ms > 0 or jit > 0:
                mine[addresses[src]] = Hold(ms, jit)
        holds[dst] = mine
    return holds


# --- the delay-line process, driven from the runner --------------------------------------


class DelayLineProcess:
    """One delay-line process for an underlay, started on first use, stopped with it.

    It is started with ``Underlay.popen`` (so it is recorded, and stopped, or cleaned by
    ``overlaysim clean``, like every process in the hosts) and binds each host's queue in
    that host's namespace. The iptables rules are applied by the caller with
    :func:`rules_argv`, after the host's queue is attached.

    :meth:`start` measures the line's own overhead first (:mod:`overlaysim.emu.delaycal`);
    :meth:`set` then tells the line each hold minus that overhead (``calibrate=False``:
    the holds as asked).
    """

    def __init__(self, underlay: UnderlayView, seed: int = 0, *, calibrate: bool = True) -> None:
        """Store settings; nothing starts until :meth:`start` or :meth:`set`."""
        self._u = underlay
        self.seed = seed
        self.calibrate = calibrate
        self.calibration: Calibration | None = None
        self.calibration_error: str | None = None
        #: Per receiving host, the sources whose hold is below the overhead (model ms).
        self.below_overhead: dict[str, dict[str, float]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._attached: set[str] = set()
        self._err: IO[bytes] | None = None

    def start(self, holds: Mapping[str, Mapping[str, Hold]]) -> None:
        """Start the process and, unless disabled, calibrate at ``holds``' path delays.

        A failed calibration is recorded (``calibration_error``) and the run goes on with
        uncompensated holds: the manifest says so.
        """
        self._start()
        if not self.calibrate or self.calibration is not None:
            return
        points = delaycal.points_for(holds)
        if self.calibration_error is None and points:  # no points: jitter only, try later
            try:
                self.calibration = delaycal.measure(self._ask, points)
            except (delaycal.CalibrationError, DelayLineError, OSError) as exc:
                self.calibration_error = str(exc)
                log.warning("delay line: not calibrated (%s); holds are not compensated", exc)

    def report(self) -> dict[str, Any]:
        """The calibration for the manifest: what was measured, what it changed."""
        if not self.calibrate:
            return {"applied": False, "why": "disabled"}
        if self.calibration is None:
            why = self.calibration_error or "not measured"
            return {"applied": False, "why": why}
        below = sorted(
            (ms, host, src)
            for host, srcs in self.below_overhead.items()
            for src, ms in srcs.items()
        )
        out: dict[str, Any] = {"applied": True, **self.calibration.as_dict()}
        out["below_overhead"] = {
            "paths": len(below),
            "note": "holds shorter than the overhead are released at once"
            if below
            else "every hold is longer than the overhead",
            "examples": [{"to": h, "from": s, "hold_ms": ms} for ms, h, s in below[:5]],
        }
        return out

    @property
    def running(self) -> bool:
        """Whether the process has been started and is alive."""
        return self._proc is not None and self._proc.poll() is None

    def set(self, host: str, delays: Mapping[str, Hold]) -> None:
        """Give ``host`` its destination table (attaching its queue the first time)."""
        self._start()
        if host not in self._attached:
            netns = f"/proc/{self._u.pid(host)}/ns/net"
            self._ask({"op": "attach", "host": host, "netns": netns})
            self._attached.add(host)
        cal = self.calibration
        told = {ip: cal.effective(h) if cal else h for ip, h in delays.items()}
        if cal is not None:
            self.below_overhead[host] = {
                ip: h.ms for ip, h in delays.items() if h.ms > 0 and h.ms <= cal.overhead_ms(h.ms)
            }
        table = {ip: [h.ms, h.jitter_ms] for ip, h in told.items()}
        self._ask({"op": "set", "host": host, "delays": table})

    def stats(self) -> dict[str, dict[str, float]]:
        """Counters per host (held, released, max_depth, max_late_ms, ...)."""
        if not self.running:
            return {}
        return json.loads(self._ask({"op": "stats"}))

    def close(self) -> None:
        """Ask the process to release what it holds and exit (``Underlay.stop`` kills it
        anyway; this is the polite path)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
        if self._err is not None:
            self._err.close()
            self._err = None
            path = self._err_path()
            tail = self._tail()
            if tail != "no error output":  # say it before the run folder goes
                log.warning("delay line: %s", tail)
            path.unlink(missing_ok=True)
        self._attached.clear()

    def _err_path(self) -> Path:
        record = self._u.record
        return (record.path.parent if record else Path("/tmp")) / "delayline.err"

    def _start(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is not None:
                raise DelayLineError(
                    f"the delay line exited ({self._proc.returncode}): {self._tail()}"
                )
            return
        host = self._u.hosts[0]
        self._err = open(self._err_path(), "ab")  # noqa: SIM115 - closed in close()
        argv = [sys.executable, "-m", "overlaysim.emu.delayline", "--seed", str(self.seed)]
        self._proc = self._u.popen(
            host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err
        )
        line = self._read_line()
        if line != "ready":
            raise DelayLineError(f"the delay line did not start: {line or self._tail()}")

    def _ask(self, msg: dict[str, Any]) -> str:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(msg).encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            raise DelayLineError(f"the delay line is gone ({exc}): {self._tail()}") from exc
        answer = self._read_line()
        if answer.startswith("error") or not answer:
            raise DelayLineError(f"delay line {msg.get('op')}: {answer or self._tail()}")
        return answer

    def _read_line(self) -> str:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], _REPLY_TIMEOUT_S)
        if not ready:
            return ""
        return proc.stdout.readline().decode().strip()

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            text = self._err_path().read_text().strip()
            return text.splitlines()[-1] if text else "no error output"
        return "no error output"


def rules_argv(delays: Mapping[str, Hold], *, first: bool) -> tuple[list[str], str]:
    """The command (argv, stdin) that gives a host namespace its delay rules."""
    return ["iptables-restore", "-w", "--noflush"], restore_script(delays, first=first)


# --- the ceiling -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Ceiling:
    """What the delay line carried at most, measured on this machine."""

    pps: float
    mbps: float
    packet_bytes: int
    hold_ms: float
    seconds: float
    max_late_ms: float
    measured_at: str
    kernel: str
    cpus: int

    def describe(self) -> str:
        """One line for the manifest, doctor and docs."""
        return (
            f"{self.pps:,.0f} packets/s, {self.mbps:,.0f} Mbit/s "
            f"({self.packet_bytes}-byte UDP, {self.hold_ms:g} ms hold, aggregate over all "
            f"hosts; measured {self.measured_at} on {self.cpus} CPUs)"
        )


def ceiling(*, measure: bool = True, refresh: bool = False) -> Ceiling | None:
    """The delay line's ceiling: cached for this boot and kernel, measured when missing."""
    if not refresh:
        cached = _read_cache()
        if cached is not None:
            return cached
    if not measure:
        return None
    c = measure_ceiling()
    with contextlib.suppress(OSError):
        CEILING_CACHE.parent.mkdir(parents=True, exist_ok=True)
        CEILING_CACHE.write_text(json.dumps(asdict(c), sort_keys=True))
    return c


def _read_cache() -> Ceiling | None:
    try:
        data = json.loads(CEILING_CACHE.read_text())
        c = Ceiling(**data)
    except (OSError, ValueError, TypeError):
        return None
    if c.kernel != platform.release() or c.cpus != (os.cpu_count() or 1):
        return None
    return c


def measure_ceiling(seconds: float = 2.0, packet_bytes: int = 1400) -> Ceiling:
    """Blast UDP through a delay line between two throwaway namespaces; count what arrives.

    The sender (``iperf3 -u -b 0``) offers more than the line can take; what the receiver
    gets is the ceiling. Needs root, iperf3 and the netfilterqueue binding.
    """
    from overlaysim.emu.capabilities import probe_netns

    if shutil.which("iperf3") is None:
        raise DelayLineError("measuring the delay line needs iperf3 (apt-get install iperf3)")
    hold = 1.0
    with probe_netns("-dla") as a, probe_netns("-dlb") as b:
        da, db = names.DELAY_PROBE_A, names.DELAY_PROBE_B
        _ns(a, ["ip", "link", "add", da, "type", "veth", "peer", db, "netns", b])
        for ns, dev, ip in ((a, da, "192.0.2.1"), (b, db, "192.0.2.2")):
            _ns(ns, ["ip", "addr", "add", f"{ip}/24", "dev", dev])
            _ns(ns, ["ip", "link", "set", dev, "up"])
            _ns(ns, ["ip", "link", "set", "lo", "up"])
        line = subprocess.Popen(
            ["ip", "netns", "exec", b, sys.executable, "-m", "overlaysim.emu.delayline"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        server = None
        try:
            _expect(line, "ready")
            _tell(line, {"op": "attach", "host": "b", "netns": f"/run/netns/{b}"})
            _tell(line, {"op": "set", "host": "b", "delays": {"192.0.2.1": [hold, 0.0]}})
            argv, script = rules_argv({"192.0.2.1": Hold(hold)}, first=True)
            _ns(b, argv, script)
            server = subprocess.Popen(
                ["ip", "netns", "exec", b, "iperf3", "-s", "-1", "-B", "192.0.2.2"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)
            client = [
                "iperf3", "-c", "192.0.2.2", "-u", "-b", "0", "-l", str(packet_bytes),
                "-t", f"{seconds:g}", "-J",
            ]  # fmt: skip
            out = _ns(a, client, timeout=seconds + 20)
            stats = json.loads(_tell(line, {"op": "stats"}))["b"]
        finally:
            for proc in (server, line):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=3)
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
    end = json.loads(out)["end"]
    got = end.get("sum_received") or end["sum"]
    secs = float(got.get("seconds") or seconds)
    received = float(got.get("packets", 0)) - float(got.get("lost_packets", 0))
    if "sum_received" in end:
        received = float(got["bytes"]) / packet_bytes
    return Ceiling(
        pps=round(received / secs, 1),
        mbps=round(float(got["bits_per_second"]) / 1e6, 1),
        packet_bytes=packet_bytes,
        hold_ms=hold,
        seconds=seconds,
        max_late_ms=float(stats["max_late_ms"]),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        kernel=platform.release(),
        cpus=os.cpu_count() or 1,
    )


def _ns(ns: str, argv: list[str], stdin: str | None = None, timeout: float = 20.0) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise DelayLineError(f"{' '.join(argv[:3])}: {out.stderr.strip()}")
    return out.stdout


def _expect(proc: subprocess.Popen[bytes], want: str) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], _REPLY_TIMEOUT_S)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if line != want:
        err = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
        raise DelayLineError(f"delay line: expected {want!r}, got {line!r} {err.strip()}")


def _tell(proc: subprocess.Popen[bytes], msg: dict[str, Any]) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(msg).encode() + b"\n")
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], _REPLY_TIMEOUT_S)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line or line.startswith("error"):
        raise DelayLineError(f"delay line {msg['op']}: {line or 'no answer'}")
    return line


def exceeds(throughput_mbps: Iterable[float], c: Ceiling, margin: float = 0.8) -> list[float]:
    """The measured throughputs that reach ``margin`` of the ceiling (capped by it, likely)."""
    return [t for t in throughput_mbps if t >= margin * c.mbps]
