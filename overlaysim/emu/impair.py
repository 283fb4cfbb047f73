"""Impairments on the emulated underlay: loss, rate, delay, partitions, crashed hosts.

The model is declarative: each call updates the wanted state, then the whole state is
rendered per network namespace and only what changed is applied. Every namespace's
nftables table is replaced atomically in one ``nft -j -f -`` transaction, so a partition
never exists half-applied inside a host.

Semantics match the simulator (``overlaysim.sim.underlay``):

* ``loss(p, link)`` drops each packet crossing that link, in either direction, with
  probability p, on top of the topology's own ``loss_pct``. It is an ingress rule at both
  ends of the link. ``loss(p)`` with no link is end to end: every packet is dropped once,
  with probability p, on arrival at its destination host.
* ``rate(mbps, link)`` limits both directions of a link (tbf on both ends' egress);
  ``rate(mbps)`` limits every link. The topology's ``bandwidth_mbps`` is the baseline.
* ``delay(ms, jitter, link)`` and the topology's ``latency_ms``: one-way delay per link
  (both directions) or end to end, carried by the mechanism :mod:`overlaysim.emu.delay`
  chooses: netem on both ends' egress, or the NFQUEUE delay line holding each packet at
  its destination host for its whole path's delay. With neither, :class:`UnsupportedImpairment`.
* ``partition(groups)``: hosts in different groups cannot exchange IPv4 on the underlay;
  hosts in no group are cut off from everyone. ``heal()`` undoes it.
* ``crash_links(host)``: everything into or out of the host's interfaces is dropped.
* ``clear(link=None, kind=None)`` removes loss, rate and delay impairments (or only
  ``kind``, leaving the others; not partitions or crashes, which have their own undo),
  returning to the topology's link properties.

Loss is judged per packet on the wire, so while an ingress loss rule is active the
sending end of that veth is limited to one segment per packet (``gso_max_segs 1``):
otherwise a 64 KB TSO super-packet would be dropped as one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from overlaysim.agent import names
from overlaysim.emu import delay as dl
from overlaysim.emu import nftrules, rootns
from overlaysim.emu import record as runrec
from overlaysim.emu.netem import EgressShape as _Shape
from overlaysim.emu.netem import qdisc_argv as _qdisc_argv
from overlaysim.errors import UserError
from overlaysim.scenario.topology import Link

if TYPE_CHECKING:
    from overlaysim.emu.plan import Plan, PlannedLink
    from overlaysim.emu.underlay_view import UnderlayView

LinkRef = tuple[str, str] | list[str] | Link | None
_NS = str | None  # a host name, or None for the root namespace
_WORKERS = 8


class UnsupportedImpairment(UserError):
    """This kernel cannot emulate the requested impairment (and we never skip silently)."""


class ImpairmentError(RuntimeError):
    """The kernel refused a change we expected it to accept."""


class Impairments:
    """Impairment state for one underlay, seen through its
    :class:`~overlaysim.emu.underlay_view.UnderlayView`.

    Use the underlay's own instance (``underlay.impairments``): two instances would
    overwrite each other's rules.
    """

    def __init__(self, underlay: UnderlayView) -> None:
        """Store the underlay; nothing touches the kernel until a method is called."""
        self._u = underlay
        self._shape_baseline = True
        self._global_loss = 0.0
        self._global_delay = (0.0, 0.0)
        self._extra_loss: dict[int, float] = {}
        self._extra_rate: dict[int, float] = {}
        self._extra_delay: dict[int, tuple[float, float]] = {}
        self._groups: dict[str, int] | None = None
        self._crashed: set[str] = set()
        self._netem: bool | None = None
        #: Seeds the delay line's jitter draws (the scenario's seed; set by the underlay).
        self.seed = 0
        #: Whether the delay line subtracts its own measured overhead from each hold.
        self.calibrate_delay_line = True
        self._delay_mech: str | None = None  # netem, nfqueue or none (chosen on first need)
        self._delay_why = ""
        self._baseline_why = "not probed yet"  # why the topology's latency is not emulated
        self._line: dl.DelayLineProcess | None = None
        self._holds_applied: dict[str, dict[str, dl.Hold]] = {}
        self._nft_applied: dict[_NS, str] = {}
        self._tc_applied: dict[tuple[_NS, str], _Shape] = {}
        self._gso_saved: dict[tuple[_NS, str], int] = {}  # original gso_max_segs
        self._root_table = False

    # -- public API -------------------------------------------------------------------

    def loss(self, percent: float, link: LinkRef = None) -> None:
        """Drop ``percent`` % of packets on ``link`` (both ways), or end to end everywhere."""
        p = _percent(percent)
        if link is None:
            self._global_loss = p
        else:
            for pl in self._resolve(link):
                self._extra_loss[pl.index] = p
        self._apply()

    def rate(self, mbps: float, link: LinkRef = None) -> None:
        """Limit ``link`` (both directions) or every link to ``mbps`` Mbit/s."""
        if not (mbps > 0 and math.isfinite(mbps)):
            raise UserError(f"rate must be a positive number of Mbit/s, not {mbps!r}")
        for pl in self._targets(link):
            self._extra_rate[pl.index] = float(mbps)
        self._apply()

    def delay(self, ms: float, jitter_ms: float = 0.0, link: LinkRef = None) -> None:
        """Add one-way delay to ``link`` (both directions) or end to end everywhere."""
        if ms < 0 or jitter_ms < 0:
            raise UserError(f"delay and jitter must be >= 0, not {ms!r}/{jitter_ms!r}")
        if (ms or jitter_ms) and self.delay_mechanism() == dl.NONE:
            raise UnsupportedImpairment(
                f"delay needs sch_netem or the NFQUEUE delay line: {self._delay_why}. Remove "
                "the delay events from the scenario, run it on the simulator, or fix the above."
            )
        if link is None:
            self._global_delay = (float(ms), float(jitter_ms))
        else:
            for pl in self._resolve(link):
                self._extra_delay[pl.index] = (float(ms), float(jitter_ms))
        self._apply()

    def partition(self, groups: Sequence[Iterable[str]]) -> None:
        """Split hosts into ``groups`` that cannot reach each other (replaces any earlier
        partition). Hosts named in no group are isolated from everyone."""
        assignment: dict[str, int] = {}
        for gi, group in enumerate(groups):
            for h in group:
                self._plan().host(h)  # validates the name
                if h in assignment:
                    raise UserError(f"host {h!r} is in more than one partition group")
                assignment[h] = gi
        self._groups = assignment
        self._apply()

    def heal(self) -> None:
        """End the partition."""
        self._groups = None
        self._apply()

    def crash_links(self, host: str) -> None:
        """Silence every underlay interface of ``host`` (in and out)."""
        self._plan().host(host)  # validates the name
        self._crashed.add(host)
        self._apply()

    def restore_links(self, host: str) -> None:
        """Undo :meth:`crash_links`."""
        self._plan().host(host)  # validates the name
        self._crashed.discard(host)
        self._apply()

    def clear(self, link: LinkRef = None, kind: str | None = None) -> None:
        """Remove ``kind`` (loss, rate or delay; None: all three) from ``link``.

        Without a link: ``kind`` None clears everything everywhere; loss or delay clears
        the end-to-end setting only (per-link ones stay); rate clears every link's.
        The other kinds are left as they are.
        """
        if kind not in (None, "loss", "rate", "delay"):
            raise UserError(f"clear: kind must be loss, rate or delay, not {kind!r}")
        tables = {"loss": self._extra_loss, "rate": self._extra_rate, "delay": self._extra_delay}
        if link is None and kind in ("loss", "delay"):
            targets: list[int] = []
        else:
            targets = [pl.index for pl in self._targets(link)]
        for name, table in tables.items():
            if kind is None or kind == name:
                for i in targets:
                    table.pop(i, None)
        if link is None and kind in (None, "loss"):
            self._global_loss = 0.0
        if link is None and kind in (None, "delay"):
            self._global_delay = (0.0, 0.0)
        self._apply()

    @property
    def mechanisms(self) -> dict[str, str]:
        """Which mechanism carries each impairment and link property (for the manifest)."""
        mech = self._delay_mech
        lat_links = sum(1 for pl in self._links() if pl.spec.latency_ms > 0)
        if mech == dl.NETEM:
            latency = "tc netem on both ends' egress (not calibrated: no user-space hop)"
            delay = "tc netem (one-way delay added at egress; not calibrated: no user-space hop)"
        elif mech == dl.DELAY_LINE:
            c = dl.ceiling(measure=False)
            cap = c.describe() if c is not None else "ceiling not measured"
            line = (
                "NFQUEUE delay line (user space): each receiving host holds arriving packets "
                f"for their path's one-way delay, jitter uniform ±j from the seed; ceiling {cap}"
                f"; {self._calibration_text()}"
            )
            latency = f"{line}; {lat_links} link(s) with latency_ms > 0"
            delay = line
        else:
            why = self._baseline_why if mech is None else self._delay_why
            latency = (
                f"not emulated ({why}): {lat_links} link(s) specify latency_ms > 0; "
                "veth adds only tens of microseconds"
            )
            delay = f"unsupported ({why}): delay() raises UnsupportedImpairment"
        return {
            "loss": "nftables netdev ingress rule 'numgen random mod 10000 < p*100 drop' "
            "(per link: both ends; everywhere: each host's ingress); sender GSO off while active",
            "rate": "tc tbf on both ends' egress (burst max(4 ms, 2 MTU), 50 ms queue)",
            "link_bandwidth": "tc tbf (topology bandwidth_mbps)"
            if self._shape_baseline
            else "not applied (shape=False)",
            "link_latency": latency,
            "delay": delay,
            "partition": "nftables netdev ingress+egress drop by underlay IPv4 set in each host",
            "crash": "nftables netdev drop-all on the host's underlay interfaces",
        }

    def _calibration_text(self) -> str:
        line = self._line
        if line is None:
            return "calibration: line not started"
        if line.calibration is not None:
            return line.calibration.describe()
        why = "disabled" if not line.calibrate else (line.calibration_error or "not measured")
        return f"holds not compensated for the line's own overhead ({why})"

    def delay_mechanism(self) -> str:
        """Which mechanism carries delay here: ``netem``, ``nfqueue`` or ``none`` (probed once)."""
        if self._delay_mech is None:
            netem = self.netem_available()
            nfq = False
            if not netem:
                from overlaysim.emu.capabilities import nfqueue_available

                nfq = nfqueue_available()
            self._delay_mech = dl.choose(netem, nfq)
            self._delay_why = dl.why_none(netem, nfq) if self._delay_mech == dl.NONE else ""
            if self._delay_mech == dl.DELAY_LINE:
                dl.ceiling()  # measured once per boot: the manifest records it
        return self._delay_mech

    def delay_report(self) -> dict[str, Any]:
        """For the manifest: the delay mechanism, the delay line's ceiling and counters."""
        mech = self._delay_mech or "not needed"
        out: dict[str, Any] = {"mechanism": mech}
        if mech == dl.DELAY_LINE:
            c = dl.ceiling(measure=False)
            out["ceiling"] = None if c is None else dataclasses.asdict(c)
            out["stats"] = self.delay_line_stats()
            if self._line is not None:
                out["calibration"] = self._line.report()
        return out

    def delay_line_stats(self) -> dict[str, dict[str, float]]:
        """The delay line's counters per host (empty when it is not used)."""
        return self._line.stats() if self._line is not None else {}

    def netem_available(self) -> bool:
        """Whether this kernel has ``sch_netem`` (probed once, in a throwaway namespace)."""
        if self._netem is None:
            from overlaysim.emu.capabilities import qdisc_available

            self._netem = qdisc_available("netem")
        return self._netem

    # -- used by the underlay -------------------------------------------------------

    def apply_baseline(self, shape: bool = True) -> None:
        """Apply the topology's own link properties (called by ``Underlay.start``)."""
        self._shape_baseline = shape
        latency = max((pl.spec.latency_ms for pl in self._links()), default=0.0)
        if latency >= dl.LINE_MIN_LATENCY_MS or (latency > 0 and self.netem_available()):
            self.delay_mechanism()  # decides how latency is applied (mechanisms says)
        elif latency > 0:
            self._baseline_why = (
                f"every link is below {dl.LINE_MIN_LATENCY_MS:g} ms and this kernel has no "
                "sch_netem; the user-space delay line is started only for links of "
                f"{dl.LINE_MIN_LATENCY_MS:g} ms or more, or for delay steps"
            )
        self._apply()

    def remove_root_state(self) -> None:
        """Delete the root-namespace table (host tables and delay rules go with their
        namespaces; the delay-line process is stopped with the underlay's processes)."""
        if self._line is not None:
            self._line.close()
            self._line = None
            self._holds_applied.clear()
        if not self._root_table:
            return
        table = self._table_name()
        rootns.delete_nft_table("netdev", table)
        if self._u.record is not None:
            self._u.record.drop(runrec.Item(kind=runrec.NFT, name=table, family="netdev"))
        self._root_table = False
        self._nft_applied.pop(None, None)

    # -- planning ---------------------------------------------------------------------

    def _plan(self) -> Plan:
        plan = self._u.plan
        if plan is None:
            raise UserError(f"impairments need a built underlay (it is {self._u.state})")
        return plan

    def _links(self) -> tuple[PlannedLink, ...]:
        plan = self._u.plan
        return plan.links if plan is not None else ()

    def _resolve(self, link: LinkRef) -> list[PlannedLink]:
        if isinstance(link, Link):
            return self._plan().links_between(link.a, link.b)
        if isinstance(link, tuple | list) and len(link) == 2:
            return self._plan().links_between(str(link[0]), str(link[1]))
        raise UserError(f"a link is [node, node] or a topology Link, not {link!r}")

    def _targets(self, link: LinkRef) -> list[PlannedLink]:
        return list(self._links()) if link is None else self._resolve(link)

    def _table_name(self) -> str:
        assert self._u.plan is not None
        return names.underlay_table(self._u.plan.tag)

    def _link_loss(self, pl: PlannedLink) -> list[float]:
        return [p for p in (pl.spec.loss_pct, self._extra_loss.get(pl.index, 0.0)) if p > 0]

    def _wanted_nft(self, blocked_by: dict[str, list[str]]) -> dict[_NS, list[dict[str, Any]]]:
        """Chains and rules per namespace: {ns: [chain specs with rules]}."""
        chains: dict[_NS, list[dict[str, Any]]] = {}

        def add(ns: _NS, ifname: str, hook: str, rules: list[list[dict[str, Any]]]) -> None:
            if rules:
                chains.setdefault(ns, []).append({"dev": ifname, "hook": hook, "rules": rules})

        for pl in self._links():
            for port in pl.ends:
                loss_rules = [nftrules.numgen_drop(p) for p in self._link_loss(pl)]
                if port.host is None:
                    add(None, port.ifname, "ingress", loss_rules)
                    continue
                host = port.host
                if host in self._crashed:
                    add(host, port.ifname, "ingress", [[{"drop": None}]])
                    add(host, port.ifname, "egress", [[{"drop": None}]])
                    continue
                ingress, egress = [], []
                if blocked_by.get(host):
                    ingress.append(nftrules.set_drop("saddr"))
                    egress.append(nftrules.set_drop("daddr"))
                ingress += loss_rules
                if self._global_loss > 0:
                    ingress.append(nftrules.numgen_drop(self._global_loss))
                add(host, port.ifname, "ingress", ingress)
                add(host, port.ifname, "egress", egress)
        return chains

    def _blocked_by_host(self) -> dict[str, list[str]]:
        """Underlay addresses each host must not exchange packets with (partition)."""
        plan = self._u.plan
        assert plan is not None
        groups = self._groups
        if groups is None:
            return {}
        ips = sorted((h.ip, h.name) for h in plan.hosts)
        blocked: dict[str, list[str]] = {}
        for h in plan.hosts:
            if h.name in self._crashed:
                continue  # drops everything anyway
            mine = groups.get(h.name)
            blocked[h.name] = [
                ip
                for ip, other in ips
                if other != h.name and (mine is None or groups.get(other) != mine)
            ]
        return blocked

    def _wanted_shapes(self) -> dict[tuple[_NS, str], _Shape]:
        shapes: dict[tuple[_NS, str], _Shape] = {}
        netem = self._delay_mech == dl.NETEM
        g_ms, g_jit = self._global_delay
        for pl in self._links():
            rates = [self._extra_rate.get(pl.index)]
            bw = pl.spec.bandwidth_mbps
            if self._shape_baseline and bw > 0 and math.isfinite(bw):
                rates.append(bw)
            rate = min((r for r in rates if r is not None), default=None)
            d_ms, d_jit = self._extra_delay.get(pl.index, (0.0, 0.0))
            if not netem:  # the delay line (or nothing) carries delay
                d_ms = d_jit = g_ms = g_jit = 0.0
            base = pl.spec.latency_ms if netem else 0.0
            for port in pl.ends:
                at_host = port.host is not None
                shapes[(port.host, port.ifname)] = _Shape(
                    rate_mbps=rate,
                    delay_ms=base + d_ms + (g_ms if at_host else 0.0),
                    jitter_ms=d_jit + (g_jit if at_host else 0.0),
                )
        return shapes

    def _wanted_gso(self, chains: dict[_NS, list[dict[str, Any]]]) -> set[tuple[_NS, str]]:
        """Senders into interfaces with an ingress loss rule: they must not send GSO."""
        lossy = {
            (ns, c["dev"])
            for ns, cs in chains.items()
            for c in cs
            if c["hook"] == "ingress" and any(nftrules.is_numgen(r) for r in c["rules"])
        }
        senders = set()
        for pl in self._links():
            for port in pl.ends:
                if (port.host, port.ifname) in lossy:
                    peer = pl.peer(port)
                    senders.add((peer.host, peer.ifname))
        return senders

    # -- applying ---------------------------------------------------------------------

    def _apply(self) -> None:
        if self._u.state not in ("built", "running"):
            raise UserError(f"impairments need a started underlay (it is {self._u.state})")
        blocked_by = self._blocked_by_host()
        chains = self._wanted_nft(blocked_by)
        # Senders stop sending GSO super-packets before loss rules start judging packets.
        self._run(self._gso_jobs(self._wanted_gso(chains)))
        jobs = self._nft_jobs(chains, blocked_by)
        for ns, cmds in self._tc_jobs(self._wanted_shapes()).items():
            jobs.setdefault(ns, []).extend(cmds)
        if self._delay_mech == dl.DELAY_LINE:
            for ns, cmds in self._delay_line_jobs().items():
                jobs.setdefault(ns, []).extend(cmds)
        self._run(jobs)

    def _wanted_holds(self) -> dict[str, dict[str, dl.Hold]]:
        """Per receiving host: how long packets from each source are held."""
        plan = self._u.plan
        assert plan is not None
        link_delay: dict[frozenset[str], tuple[float, float]] = {}
        for pl in self._links():
            d_ms, d_jit = self._extra_delay.get(pl.index, (0.0, 0.0))
            link_delay[frozenset((pl.a.node, pl.b.node))] = (pl.spec.latency_ms + d_ms, d_jit)
        ips = {h.name: h.ip for h in plan.hosts}
        return dl.path_holds(self._u.topology, ips, link_delay, self._global_delay)

    def _delay_line_jobs(self) -> dict[_NS, list[_Cmd]]:
        """Give the delay line each changed table, then the hosts their iptables rules.

        The queue is attached before its rules exist; until then (and if the process
        dies) ``--queue-bypass`` lets packets through undelayed rather than dropping them.
        """
        wanted = self._wanted_holds()
        if self._line is None:
            if not any(wanted.values()):
                return {}  # nothing to hold yet: no process
            self._line = dl.DelayLineProcess(
                self._u, seed=self.seed, calibrate=self.calibrate_delay_line
            )
        try:
            # Starts the process, and measures its own overhead before the first holds
            # (again later if the first holds were jitter only: nothing to calibrate).
            self._line.start(wanted)
        except dl.DelayLineError as exc:
            raise ImpairmentError(f"delay line: {exc}") from exc
        jobs: dict[_NS, list[_Cmd]] = {}
        for host, want in wanted.items():
            old = self._holds_applied.get(host)
            if old == want or (old is None and not want):
                continue
            try:
                self._line.set(host, want)
            except dl.DelayLineError as exc:
                raise ImpairmentError(f"in {host}: {exc}") from exc
            argv, script = dl.rules_argv(want, first=old is None)

            def done(_out: str, host: str = host, want: dict[str, dl.Hold] = want) -> None:
                self._holds_applied[host] = want

            jobs[host] = [_Cmd(argv, input=script, done=done)]
        return jobs

    def _run(self, jobs: dict[_NS, list[_Cmd]]) -> None:
        """Run each namespace's commands in order; namespaces in parallel."""

        def run(ns: _NS) -> str:
            for cmd in jobs[ns]:
                out = self._u.run_in(ns, cmd.argv, input=cmd.input)
                if out.returncode != 0:
                    return f"{' '.join(cmd.argv[:4])}: {out.stderr.strip()}"
                if cmd.done is not None:
                    cmd.done(out.stdout)
            return ""

        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            errors = [(ns, err) for ns, err in zip(jobs, pool.map(run, jobs), strict=True) if err]
        if errors:
            ns, err = errors[0]
            raise ImpairmentError(f"in {ns or 'the root namespace'}: {err}")

    def _nft_jobs(
        self, chains: dict[_NS, list[dict[str, Any]]], blocked_by: dict[str, list[str]]
    ) -> dict[_NS, list[_Cmd]]:
        plan = self._u.plan
        assert plan is not None
        table = self._table_name()
        jobs: dict[_NS, list[_Cmd]] = {}
        namespaces: list[_NS] = [h.name for h in plan.hosts] + [None]
        for ns in namespaces:
            wanted = chains.get(ns, [])
            if not wanted and ns not in self._nft_applied:
                continue  # never needed a table here: create none
            blocked = blocked_by.get(ns, []) if ns is not None else []
            payload = nftrules.render_table(table, wanted, blocked)
            if self._nft_applied.get(ns) == payload:
                continue
            if ns is None and not self._root_table:
                assert self._u.record is not None
                self._u.record.add(runrec.Item(kind=runrec.NFT, name=table, family="netdev"))
                self._root_table = True

            def done(_out: str, ns: _NS = ns, payload: str = payload) -> None:
                self._nft_applied[ns] = payload

            jobs[ns] = [_Cmd(["nft", "-j", "-f", "-"], input=payload, done=done)]
        return jobs

    def _gso_jobs(self, wanted: set[tuple[_NS, str]]) -> dict[_NS, list[_Cmd]]:
        jobs: dict[_NS, list[_Cmd]] = {}
        for ns, ifname in wanted - set(self._gso_saved):

            def save(out: str, key: tuple[_NS, str] = (ns, ifname)) -> None:
                self._gso_saved[key] = int(json.loads(out)[0].get("gso_max_segs", 65535))

            jobs.setdefault(ns, []).extend(
                [
                    _Cmd(["ip", "-j", "-d", "link", "show", "dev", ifname], done=save),
                    _Cmd(["ip", "link", "set", "dev", ifname, "gso_max_segs", "1"]),
                ]
            )
        for ns, ifname in set(self._gso_saved) - wanted:
            segs = self._gso_saved.pop((ns, ifname))
            jobs.setdefault(ns, []).append(
                _Cmd(["ip", "link", "set", "dev", ifname, "gso_max_segs", str(segs)])
            )
        return jobs

    def _tc_jobs(self, wanted: dict[tuple[_NS, str], _Shape]) -> dict[_NS, list[_Cmd]]:
        jobs: dict[_NS, list[_Cmd]] = {}
        for (ns, ifname), shape in wanted.items():
            old = self._tc_applied.get((ns, ifname), _Shape())
            if old == shape:
                continue
            cmds = [] if old.empty() else [_Cmd(["tc", "qdisc", "del", "dev", ifname, "root"])]
            cmds += [_Cmd(argv) for argv in _qdisc_argv(ifname, shape, self._u.mtu)]

            def done(_out: str, key: tuple[_NS, str] = (ns, ifname), shape: _Shape = shape) -> None:
                self._tc_applied[key] = shape

            cmds[-1] = _Cmd(cmds[-1].argv, done=done)
            jobs.setdefault(ns, []).extend(cmds)
        return jobs


@dataclass(frozen=True, slots=True)
class _Cmd:
    """One command for a namespace; ``done`` gets its stdout when it succeeds."""

    argv: list[str]
    input: str | None = None
    done: Callable[[str], None] | None = None


# --- checks ----------------------------------------------------------------------------


def _percent(value: float) -> float:
    if not (0 <= value <= 100):
        raise UserError(f"loss must be a percentage in [0, 100], not {value!r}")
    return float(value)
