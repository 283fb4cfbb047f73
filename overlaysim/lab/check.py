"""``check N``: does the live testbed show that guided lab N (docs/labs/) was done?

Each lab has a list of steps; a step's check looks at the testbed as it is now (the
manager's networks, the containers, reachability by ping, every agent's membership view,
endpoint tables and kernel FDB/neighbour entries) and, for steps that leave no lasting
state (a crash, a partition), at the agents' own logs: a host declared dead, a host that
booted twice. Each result says the step's goal, passed or not, and a hint naming the
commands of the lab that reach it.

The checks read the testbed through a :class:`Probe`: :class:`LabProbe` inside the lab
CLI (``check 2``), :class:`LiveProbe` from another terminal through the address book
the lab publishes (``overlaysim lab check 2``). Both see the same things.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from overlaysim.agent.logging import read_log
from overlaysim.errors import UserError

LABS = (1, 2, 3, 4, 5, 6)
#: Pings per reachability check; lab 3's "loss is off" needs all of them back.
PINGS = 3
LOSS_PINGS = 10


@dataclass(frozen=True, slots=True)
class StepResult:
    """One step of a lab: its goal, whether the testbed shows it, and what to do if not."""

    lab: int
    step: int
    goal: str
    passed: bool
    hint: str
    detail: str = ""


class Probe(Protocol):
    """Read-only access to a running testbed."""

    hosts: tuple[str, ...]

    def answering(self, host: str) -> bool: ...
    def call(self, host: str, op: str) -> Any: ...
    def networks(self) -> list[dict[str, Any]]: ...
    def services(self) -> list[dict[str, Any]]: ...
    def containers(self) -> dict[str, tuple[str, dict[str, str]]]: ...
    def ping(self, src: str, dst: str, count: int) -> int: ...
    def log(self, host: str) -> list[dict[str, Any]]: ...


class LabProbe:
    """The testbed of the lab CLI running in this process."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.hosts = tuple(lab.hosts)

    def answering(self, host: str) -> bool:
        return host not in self.lab.crashed

    def call(self, host: str, op: str) -> Any:
        return self.lab.testbed.call(host, op)

    def networks(self) -> list[dict[str, Any]]:
        return list(self.lab.testbed.manager_call("network_ls"))

    def services(self) -> list[dict[str, Any]]:
        return list(self.lab.testbed.manager_call("service_ls"))

    def containers(self) -> dict[str, tuple[str, dict[str, str]]]:
        return {n: (c.host, dict(c.ips)) for n, c in self.lab.containers.items()}

    def ping(self, src: str, dst: str, count: int) -> int:
        from overlaysim.lab import commands as cmds

        return cmds.ping_received(cmds.ping(self.lab, src, dst, count))

    def log(self, host: str) -> list[dict[str, Any]]:
        path = self.lab.testbed.log_path(host)
        return read_log(path) if path.exists() else []


class LiveProbe:
    """The testbed published by ``overlaysim lab`` or ``overlaysim up``, from outside."""

    def __init__(self, live: Any | None = None) -> None:
        from overlaysim.emu.live import read_live

        self.live = live or read_live()
        self.hosts = tuple(sorted(self.live.hosts, key=_host_order))

    def answering(self, host: str) -> bool:
        try:
            self.call(host, "status")
        except (OSError, ConnectionError, UserError):
            return False
        return True

    def call(self, host: str, op: str) -> Any:
        from overlaysim.agent.control import ControlClient

        return ControlClient(self.live.control(host), timeout=10.0).call(op)

    def networks(self) -> list[dict[str, Any]]:
        from overlaysim.agent.control import ControlClient

        sock = self.live.control(self.live.manager)
        return list(ControlClient(sock, timeout=10.0).call("manager", call="network_ls", args={}))

    def services(self) -> list[dict[str, Any]]:
        from overlaysim.agent.control import ControlClient

        sock = self.live.control(self.live.manager)
        return list(ControlClient(sock, timeout=10.0).call("manager", call="service_ls", args={}))

    def containers(self) -> dict[str, tuple[str, dict[str, str]]]:
        out: dict[str, tuple[str, dict[str, str]]] = {}
        for h in self.hosts:
            if not self.answering(h):
                continue
            names = self.call(h, "status").get("containers", {})
            tables = self.call(h, "tables")
            for name, nets in names.items():
                ips = {}
                for net in nets:
                    value = (tables.get(net, {}).get(name) or {}).get("value") or {}
                    if value.get("ip"):
                        ips[net] = value["ip"]
                out[name] = (h, ips)
        return out

    def ping(self, src: str, dst: str, count: int) -> int:
        from overlaysim.agent import names
        from overlaysim.lab.commands import ping_received

        cs = self.containers()
        if src not in cs or dst not in cs:
            return 0
        (host, ips), (_, dst_ips) = cs[src], cs[dst]
        shared = sorted(set(ips) & set(dst_ips))
        if not shared:
            return 0
        ns = names.container_netns(self.live.prefix, host, src)
        pid = self.live.hosts[host].get("pid")
        argv = ["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1"]
        argv = (["mnexec", "-a", str(pid)] if pid else []) + [*argv, dst_ips[shared[0]]]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=count + 10)
        return ping_received(res.stdout)

    def log(self, host: str) -> list[dict[str, Any]]:
        path = Path(self.live.control(host)).with_name(f"{host}.jsonl")
        return read_log(path) if path.exists() else []


def _host_order(h: str) -> tuple[int, str]:
    digits = "".join(ch for ch in h if ch.isdigit())
    return (int(digits) if digits else 0, h)


# --- building blocks ---------------------------------------------------------------------


class _Ctx:
    """Memoised reads of one probe during one check (each agent is asked once)."""

    def __init__(self, probe: Probe) -> None:
        self.p = probe
        self._cache: dict[tuple[str, str], Any] = {}
        self._cs: dict[str, tuple[str, dict[str, str]]] | None = None
        self._nets: list[dict[str, Any]] | None = None

    def up(self) -> list[str]:
        return [h for h in self.p.hosts if self.p.answering(h)]

    def ask(self, host: str, op: str) -> Any:
        key = (host, op)
        if key not in self._cache:
            self._cache[key] = self.p.call(host, op)
        return self._cache[key]

    def containers(self) -> dict[str, tuple[str, dict[str, str]]]:
        if self._cs is None:
            self._cs = self.p.containers()
        return self._cs

    def network(self, name: str) -> dict[str, Any] | None:
        if self._nets is None:
            self._nets = self.p.networks()
        return next((n for n in self._nets if n.get("name") == name), None)

    def dead_lines(self) -> list[tuple[str, str]]:
        """(observer, subject) of every member_dead in the agents' logs."""
        out = []
        for h in self.p.hosts:
            for line in self.p.log(h):
                if line.get("kind") == "member_dead" and line.get("subject") != h:
                    out.append((h, str(line.get("subject"))))
        return out

    def boots(self, host: str) -> int:
        return sum(1 for line in self.p.log(host) if line.get("kind") == "start")


Check = Callable[[_Ctx], tuple[bool, str]]


def _network(name: str, *, encrypted: bool = False) -> Check:
    def check(c: _Ctx) -> tuple[bool, str]:
        net = c.network(name)
        if net is None:
            return False, f"no network {name}"
        if not net.get("attachable"):
            return False, f"{name} exists but is not attachable"
        if encrypted and not net.get("encrypted"):
            return False, f"{name} exists but is not encrypted"
        return True, f"{name}: VNI {net.get('vni')}, subnet {net.get('subnet')}"

    return check


def _containers(network: str, names: tuple[str, ...], *, apart: bool = True) -> Check:
    def check(c: _Ctx) -> tuple[bool, str]:
        cs = c.containers()
        missing = [n for n in names if n not in cs or network not in cs[n][1]]
        if missing:
            return False, f"not running on {network}: {', '.join(missing)}"
        hosts = [cs[n][0] for n in names]
        if apart and len(set(hosts)) < len(hosts):
            return False, f"on the same host: {', '.join(names)} ({', '.join(hosts)})"
        return True, ", ".join(f"{n}@{cs[n][0]}" for n in names)

    return check


def _ping(src: str, dst: str, count: int = PINGS, *, all_back: bool = False) -> Check:
    def check(c: _Ctx) -> tuple[bool, str]:
        cs = c.containers()
        if src not in cs or dst not in cs:
            return False, f"{src} or {dst} is not running"
        got = c.p.ping(src, dst, count)
        ok = got == count if all_back else got > 0
        return ok, f"{src} -> {dst}: {got}/{count} replies"

    return check


def _all_alive(c: _Ctx) -> tuple[bool, str]:
    up = c.up()
    if len(up) < len(c.p.hosts):
        down = sorted(set(c.p.hosts) - set(up))
        return False, f"agents not answering: {', '.join(down)}"
    bad = []
    for h in up:
        view = c.ask(h, "members")
        for other in c.p.hosts:
            state = (view.get(other) or {}).get("state", "unknown")
            if state != "alive":
                bad.append(f"{h} sees {other} {state}")
    return not bad, "; ".join(bad[:4]) or f"all {len(up)} hosts see each other alive"


def _tables_converged(network: str) -> Check:
    def check(c: _Ctx) -> tuple[bool, str]:
        cs = c.containers()
        on = {h for h, ips in cs.values() if network in ips}
        want = {n for n, (_, ips) in cs.items() if network in ips}
        if len(on) < 2:
            return False, f"containers on {network} on fewer than two hosts"
        lacking = []
        for h in sorted(on):
            have = set(c.ask(h, "tables").get(network, {}))
            if want - have:
                lacking.append(f"{h} lacks {', '.join(sorted(want - have))}")
        return not lacking, "; ".join(lacking) or f"{len(on)} hosts hold {len(want)} entries"

    return check


def _fdb_programmed(network: str) -> Check:
    def check(c: _Ctx) -> tuple[bool, str]:
        cs = c.containers()
        problems = []
        for h in sorted({h for h, ips in cs.values() if network in ips}):
            kernel = c.ask(h, "kernel").get(network, {})
            neigh_ips = {ip for ip, _ in kernel.get("neigh", [])}
            for name, (owner, ips) in cs.items():
                if owner != h and network in ips and ips[network] not in neigh_ips:
                    problems.append(f"{h} has no neighbour entry for {name}")
        return not problems, "; ".join(problems[:4]) or "every remote endpoint is programmed"

    return check


def _scoped(network: str) -> Check:
    def check(c: _Ctx) -> tuple[bool, str]:
        cs = c.containers()
        on = {h for h, ips in cs.values() if network in ips}
        off = [h for h in c.up() if h not in on]
        if not off:
            return False, f"every host has a container on {network}: nothing to compare"
        leaky = [h for h in off if c.ask(h, "tables").get(network)]
        return not leaky, (
            f"hold {network} entries with no container on it: {', '.join(leaky)}"
            if leaky
            else f"{', '.join(off)} hold none of {network}'s entries"
        )

    return check


def _removed(network: str) -> Check:
    def check(c: _Ctx) -> tuple[bool, str]:
        deleted = set()
        for h in c.p.hosts:
            for line in c.p.log(h):
                if line.get("kind") == "entry_commit" and line.get("op") == "delete":
                    if line.get("network") == network:
                        deleted.add(str(line.get("key")))
        running = set(c.containers())
        gone = deleted - running
        if not gone:
            return False, f"no container on {network} was removed yet"
        holders = [h for h in c.up() for k in gone if k in c.ask(h, "tables").get(network, {})]
        if holders:
            return False, f"removed but still held by {', '.join(sorted(set(holders)))}"
        return True, f"removed and gone everywhere: {', '.join(sorted(gone))}"

    return check


def _declared_dead(c: _Ctx) -> tuple[bool, str]:
    dead = c.dead_lines()
    if not dead:
        return False, "no host was ever declared dead"
    subjects = sorted({s for _, s in dead})
    return True, f"declared dead at some point: {', '.join(subjects)}"


def _restarted(c: _Ctx) -> tuple[bool, str]:
    again = [h for h in c.p.hosts if c.boots(h) >= 2]
    if not again:
        return False, "no agent was restarted"
    if not set(again) <= set(c.up()):
        return False, f"restarted but not running now: {', '.join(again)}"
    return True, f"restarted: {', '.join(again)}"


def _buried_live_hosts(c: _Ctx) -> tuple[bool, str]:
    """A partition's trace: hosts declared dead that never crashed (booted once)."""
    live_buried = sorted({s for _, s in c.dead_lines() if c.boots(s) == 1})
    if not live_buried:
        return False, "no running host was ever declared dead"
    return True, f"declared dead while running: {', '.join(live_buried)}"


def _sealed(hosts: tuple[str, ...]) -> Check:
    def check(c: _Ctx) -> tuple[bool, str]:
        out = []
        for h in hosts:
            if h not in c.up():
                return False, f"{h} is not running"
            state = c.ask(h, "crypto")
            if not state.get("port"):
                return False, f"{h} holds no network keys"
            sealed = sum(
                int((n.get("counters") or {}).get("tx_frames", 0)) for n in _crypto_nets(state)
            )
            if sealed <= 0:
                return False, f"{h} sealed no frame yet"
            out.append(f"{h} sealed {sealed}")
        return True, ", ".join(out)

    return check


def _crypto_nets(state: dict[str, Any]) -> list[dict[str, Any]]:
    nets = state.get("networks") or {}
    if isinstance(nets, dict):
        return [n for n in nets.values() if isinstance(n, dict)]
    return [n for n in nets if isinstance(n, dict)]


def _rotated(c: _Ctx) -> tuple[bool, str]:
    gens = {h: c.ask(h, "crypto").get("generation") for h in c.up()}
    gens = {h: g for h, g in gens.items() if g is not None}
    if not gens:
        return False, "no agent holds network keys"
    low = min(int(g) for g in gens.values())
    if low < 2:  # the first ring an agent fetches is generation 1
        return False, f"key generation {low} on some host: not rotated yet"
    return True, f"key generation {low}..{max(int(g) for g in gens.values())}"


def _log_lines(c: _Ctx, kind: str) -> list[tuple[str, dict[str, Any]]]:
    """(host, line) of every ``kind`` line in the agents' logs."""
    return [(h, line) for h in c.p.hosts for line in c.p.log(h) if line.get("kind") == kind]


def _tasks_ran(service: str, at_least: int) -> Check:
    """A service's tasks were started (the agents log each task's names)."""

    def check(c: _Ctx) -> tuple[bool, str]:
        tasks = {
            f"{line.get('container')}@{h}"
            for h, line in _log_lines(c, "names")
            if line.get("service") == service
        }
        slots = {t.partition("@")[0] for t in tasks}
        if len(slots) < at_least:
            return False, f"{len(slots)} task(s) of {service} ever started, {at_least} wanted"
        return True, f"tasks started: {', '.join(sorted(tasks))}"

    return check


def _dns_answered(client: str) -> Check:
    """The embedded DNS of the client's host answered queries."""

    def check(c: _Ctx) -> tuple[bool, str]:
        cs = c.containers()
        if client not in cs:
            return False, f"{client} is not running"
        host = cs[client][0]
        counts = ((c.ask(host, "status").get("services") or {}).get("dns")) or {}
        answered = int(counts.get("answered", 0)) + int(counts.get("nodata", 0))
        if answered <= 0:
            return False, f"the embedded DNS on {host} answered no query yet"
        return True, f"the embedded DNS on {host} answered {answered} queries"

    return check


def _mode_switched(service: str, mode: str) -> Check:
    """An entry of the service's tasks carried ``mode`` with a spec generation >= 2."""

    def check(c: _Ctx) -> tuple[bool, str]:
        for _h, line in _log_lines(c, "entry_seen"):
            value = line.get("value") or {}
            if value.get("service") == service and value.get("mode") == mode:
                if int(value.get("svc_gen") or 0) >= 2:
                    return True, f"{line.get('key')}: {mode}, generation {value['svc_gen']}"
        return False, f"no task of {service} ever carried mode {mode} after an update"

    return check


def _mesh_everywhere(c: _Ctx) -> tuple[bool, str]:
    """Every host started the routing mesh's ingress sandbox at some point."""
    sandboxes = {
        h for h, line in _log_lines(c, "names") if str(line.get("container")) == f"ingress.{h}"
    }
    missing = [h for h in c.p.hosts if h not in sandboxes]
    if missing:
        return False, f"no routing mesh ever on {', '.join(missing)}"
    return True, f"routing mesh started on all {len(sandboxes)} hosts"


def _services_gone(services: tuple[str, ...]) -> Check:
    """The services were removed: not at the manager, and no host holds a task entry."""

    def check(c: _Ctx) -> tuple[bool, str]:
        started = {str(line.get("service")) for _h, line in _log_lines(c, "names")}
        if not set(services) <= started:
            return False, f"not all of {', '.join(services)} were ever created"
        left = sorted({s["name"] for s in c.p.services()} & set(services))
        if left:
            return False, f"still at the manager: {', '.join(left)}"
        holders = sorted(
            {
                h
                for h in c.up()
                for entries in c.ask(h, "tables").values()
                for e in entries.values()
                if ((e or {}).get("value") or {}).get("service") in services
            }
        )
        if holders:
            return False, f"task entries still held by {', '.join(holders)}"
        return True, f"{', '.join(services)} removed, their names gone from every host"

    return check


# --- the labs ---------------------------------------------------------------------------

STEPS: dict[int, tuple[tuple[str, Check, str], ...]] = {
    1: (
        ("every agent runs and sees every host alive", _all_alive, "restart the lab"),
        ("an attachable network web", _network("web"), "network create web --attachable"),
        (
            "containers c1 and c2 on web, on two hosts",
            _containers("web", ("c1", "c2")),
            "run c1 web h1, then run c2 web h5",
        ),
        ("c1 reaches c2 across the underlay", _ping("c1", "c2"), "c1 ping c2; then fdb h1"),
    ),
    2: (
        ("an attachable network web", _network("web"), "network create web --attachable"),
        (
            "containers c1 and c2 on web, on two hosts",
            _containers("web", ("c1", "c2")),
            "run c1 web h1, then run c2 web h2",
        ),
        (
            "every host with a container on web holds every web entry",
            _tables_converged("web"),
            "wait a second and look again: tables h1",
        ),
        (
            "each such host's kernel has the other endpoints (FDB and neighbour)",
            _fdb_programmed("web"),
            "fdb h1 web",
        ),
        (
            "hosts without a container on web hold none of its entries",
            _scoped("web"),
            "tables h3 (a host with no container on web)",
        ),
        (
            "a container was removed and its entry went everywhere",
            _removed("web"),
            "run c3 web h3, then rm c3, then tables h1",
        ),
    ),
    3: (
        (
            "containers c1, c2, c3 on web, on three hosts",
            _containers("web", ("c1", "c2", "c3")),
            "network create web --attachable; run c1 web h1; run c2 web h2; run c3 web h3",
        ),
        ("a crashed host was declared dead", _declared_dead, "crash h3, wait 8 s, members h1"),
        ("the crashed host was restarted", _restarted, "restart h3, then members h1"),
        ("every host sees every host alive again", _all_alive, "wait, then members h1"),
        (
            "no loss left: c1 gets every ping back from c3",
            _ping("c1", "c3", LOSS_PINGS, all_back=True),
            "loss 0; run c3 web h3 again after the restart; c1 ping c3",
        ),
    ),
    4: (
        (
            "containers c1, c2, c5, c6 on web",
            _containers("web", ("c1", "c2", "c5", "c6")),
            "run c1 web h1; run c2 web h2; run c5 web h5; run c6 web h6",
        ),
        (
            "during a partition, running hosts were declared dead by the other half",
            _buried_live_hosts,
            "partition h1,h2,h3,h4 h5,h6,h7,h8, then wait 10 s and members h1",
        ),
        ("healed and merged: every host sees every host alive", _all_alive, "heal; wait 30 s"),
        ("c1 reaches c5 across the former cut", _ping("c1", "c5"), "heal; then c1 ping c5"),
    ),
    5: (
        ("an attachable network plain", _network("plain"), "network create plain --attachable"),
        (
            "an attachable encrypted network secure",
            _network("secure", encrypted=True),
            "network create secure --attachable --opt encrypted",
        ),
        (
            "c1, c2 on plain and s1, s2 on secure, each pair on two hosts",
            lambda c: _both(
                c, _containers("plain", ("c1", "c2")), _containers("secure", ("s1", "s2"))
            ),
            "run c1 plain h1; run c2 plain h2; run s1 secure h1; run s2 secure h2",
        ),
        ("s1 reaches s2 through ESP", _ping("s1", "s2"), "s1 ping s2"),
        ("h1 and h2 sealed frames with the network key", _sealed(("h1", "h2")), "crypto h2"),
        ("the keys were rotated", _rotated, "rotate, then crypto h2"),
    ),
    6: (
        (
            "attachable networks front and back",
            lambda c: _both(c, _network("front"), _network("back")),
            "overlaysim network create -d overlay --attachable --subnet 10.40.0.0/24 front "
            "(and back)",
        ),
        (
            "a client container on front",
            _containers("front", ("client",), apart=False),
            "overlaysim run --name client --network front h4",
        ),
        (
            "service web ran three tasks",
            _tasks_ran("web", 3),
            "overlaysim service create --name web --replicas 3 --network front -- ...",
        ),
        (
            "the client's embedded DNS answered",
            _dns_answered("client"),
            "overlaysim exec client -- getent hosts web",
        ),
        (
            "web was switched to dnsrr",
            _mode_switched("web", "dnsrr"),
            "overlaysim service update --endpoint-mode dnsrr web",
        ),
        (
            "a published port: every host ran the routing mesh",
            _mesh_everywhere,
            "overlaysim service create --name api --replicas 2 --network front "
            "--publish 8081:8080 -- ...",
        ),
        (
            "web and api removed, their names gone everywhere",
            _services_gone(("web", "api")),
            "overlaysim service rm web api",
        ),
    ),
}


def _both(c: _Ctx, a: Check, b: Check) -> tuple[bool, str]:
    (ok_a, da), (ok_b, db) = a(c), b(c)
    return ok_a and ok_b, f"{da}; {db}"


def check_lab(probe: Probe, lab: int) -> list[StepResult]:
    """Every step of ``lab`` (1-6) checked on the testbed behind ``probe``."""
    if lab not in STEPS:
        raise UserError(f"check: no lab {lab}; the labs are {', '.join(map(str, LABS))}")
    ctx = _Ctx(probe)
    out = []
    for i, (goal, check, hint) in enumerate(STEPS[lab], start=1):
        try:
            ok, detail = check(ctx)
        except (OSError, ConnectionError, UserError, subprocess.SubprocessError) as exc:
            ok, detail = False, f"could not look: {exc}"
        out.append(StepResult(lab, i, goal, ok, "" if ok else hint, detail))
    return out


# --- output --------------------------------------------------------------------------------


def format_text(results: list[StepResult]) -> str:
    """One line per step (PASS/FAIL, goal, what was seen), a hint under each failure."""
    lines = []
    for r in results:
        lines.append(f"[{'PASS' if r.passed else 'FAIL'}] {r.lab}.{r.step} {r.goal}: {r.detail}")
        if not r.passed:
            lines.append(f"       hint: {r.hint}")
    done = sum(r.passed for r in results)
    lab = results[0].lab if results else 0
    lines.append(f"lab {lab}: {done}/{len(results)} steps done")
    return "\n".join(lines)


def format_json(results: list[StepResult]) -> str:
    done = sum(r.passed for r in results)
    return json.dumps(
        {
            "lab": results[0].lab if results else None,
            "passed": done == len(results),
            "done": done,
            "steps": [asdict(r) for r in results],
        },
        indent=2,
        sort_keys=True,
    )


CSV_FIELDS = ("lab", "step", "goal", "passed", "detail", "hint")


def format_csv(results: list[StepResult]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in results:
        row = asdict(r)
        row["passed"] = "true" if r.passed else "false"
        w.writerow({k: row[k] for k in CSV_FIELDS})
    return buf.getvalue()


def render(results: list[StepResult], fmt: str = "text") -> str:
    return {"text": format_text, "json": format_json, "csv": format_csv}[fmt](results)


def parse_lab(value: str) -> int:
    try:
        lab = int(value)
    except ValueError:
        lab = 0
    if lab not in LABS:
        raise UserError(f"check: lab {value!r}: expected one of {', '.join(map(str, LABS))}")
    return lab
