"""Agent CPU per container attach and per endpoint event, on real agents under Mininet.

Wall times on a shared machine say more about the machine than about the code; CPU
seconds of the agent processes do not depend (much) on how many other jobs run. This
bench boots N hosts (star underlay, ``lan`` profile, one network ``web``, one container
per host so that every host programs ``web``), measures each agent's idle CPU rate,
then, per round:

* **attach**: K new containers on ``h1``, as fast as the control socket takes them;
  waits until every other host has programmed all K (``entry_programmed`` lines);
* **detach**: the same K containers disconnected; waits until every other host has
  unprogrammed them.

CPU is ``utime + stime + cutime + cstime`` of each agent process from
``/proc/<pid>/stat`` (so the ``nft``/``unshare`` children an agent waited for count as
its own), minus the agent's idle rate over the phase's wall time. Printed per phase:
the attaching host's CPU per container (``h1 ms/op``), the other hosts' CPU per endpoint
event they programmed (``remote ms/ev``), and the wall time and load for context.

Needs root and Mininet; hold the emulation lock. Usage:
  sudo .venv/bin/python bench/agent_cpu.py --hosts 10 --containers 40 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from overlaysim.emu.net import underlay_session
from overlaysim.emu.runner import EmuWorld
from overlaysim.emu.testbed import Testbed
from overlaysim.scenario.loader import validate_scenario
from overlaysim.scenario.timeline import plan

TICK = os.sysconf("SC_CLK_TCK")
SEED = 11


def scenario(n: int) -> Any:
    return validate_scenario(
        {
            "name": f"agent-cpu-{n}",
            "seed": SEED,
            "duration": 600,
            "profile": "lan",
            "topology": {"generator": "star", "hosts": n},
            "managers": ["h1"],
            "networks": [{"name": "web", "subnet": "10.40.0.0/16", "attachable": True}],
            "containers": [{"per_host": 1, "prefix": "base", "networks": ["web"]}],
            "measure": {"probes": False, "throughput": []},
        }
    )


def cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # after the command: state is field 3, utime..cstime are fields 14..17
    return sum(int(x) for x in fields[11:15]) / TICK


def cpu_all(pids: dict[str, int]) -> dict[str, float]:
    return {h: cpu_s(p) for h, p in pids.items()}


class Programmed:
    """Counts ``entry_programmed`` lines (not no-ops) per host and op, read incrementally."""

    def __init__(self, testbed: Testbed, hosts: list[str]) -> None:
        self.paths = {h: testbed.log_path(h) for h in hosts}
        self.offsets = dict.fromkeys(hosts, 0)
        self.keys: dict[str, dict[str, set[str]]] = {
            h: {"add": set(), "delete": set()} for h in hosts
        }

    def poll(self) -> None:
        for h, path in self.paths.items():
            with open(path, "rb") as f:
                f.seek(self.offsets[h])
                data = f.read()
            end = data.rfind(b"\n") + 1
            self.offsets[h] += end
            for line in data[:end].splitlines():
                if b'"entry_programmed"' not in line:
                    continue
                ev = json.loads(line)
                if ev.get("noop"):
                    continue
                self.keys[h][ev["op"]].add(ev["key"])

    def done(self, hosts: list[str], op: str, keys: set[str]) -> bool:
        self.poll()
        return all(keys <= self.keys[h][op] for h in hosts)


def wait(pred: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def phase(
    testbed: Testbed,
    pids: dict[str, int],
    idle: dict[str, float],
    seen: Programmed,
    op: str,
    names: list[str],
    src: str,
    others: list[str],
    spy_to: Path | None = None,
) -> dict[str, Any]:
    spies = []
    if spy_to is not None:  # py-spy on the attaching agent and one other, this phase only
        for host in (src, others[0]):
            out = spy_to.with_name(f"{spy_to.name}-{host}.txt")
            spies.append(
                subprocess.Popen(
                    [os.environ.get("PYSPY", "py-spy"), "record", "--pid", str(pids[host]),
                     "--rate", "200", "--format", "raw", "--nonblocking", "--threads", "--gil",
                     "--output", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        time.sleep(1.0)
    before, load0, runner0 = cpu_all(pids), os.getloadavg()[0], sum(os.times()[:4])
    t0 = time.monotonic()
    for name in names:
        if op == "add":
            testbed.call(src, "task", container=name, networks=["web"])
        else:
            testbed.call(src, "disconnect", container=name, network="web")
    calls = time.monotonic() - t0
    wait(lambda: seen.done(others, op, set(names)), 300, f"{op} of {len(names)} on every host")
    wall = time.monotonic() - t0
    time.sleep(0.5)  # let the last jobs' logging finish before the second sample
    wall += 0.5
    after = cpu_all(pids)
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    used = {h: max(0.0, after[h] - before[h] - idle[h] * wall) for h in pids}
    k = len(names)
    return {
        "op": op,
        "k": k,
        "calls_s": round(calls, 2),
        "wall_s": round(wall, 2),
        "src_ms_per_op": round(used[src] / k * 1e3, 2),
        "remote_ms_per_event": round(sum(used[h] for h in others) / (k * len(others)) * 1e3, 3),
        "agents_cpu_s": round(sum(used.values()), 2),
        "runner_cpu_s": round(sum(os.times()[:4]) - runner0, 2),
        "load": [round(load0, 1), round(os.getloadavg()[0], 1)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--containers", type=int, default=40, help="K containers per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--idle", type=float, default=4.0, help="seconds to measure idle CPU")
    p.add_argument("--pause", type=float, default=0.0, help="seconds to wait before round 1")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument(
        "--spy", type=Path, default=None,
        help="py-spy (PYSPY=path) h1 and h2 in round 1: OUT-<op>-<host>.txt",
    )  # fmt: skip
    a = p.parse_args()
    sc = scenario(a.hosts)
    hosts = [f"h{i}" for i in range(1, a.hosts + 1)]
    rows: list[dict[str, Any]] = []
    with underlay_session(sc.resolved_topology) as u:
        prefix = u.plan.prefix if u.plan is not None else ""
        testbed = Testbed(u, managers=["h1"], profile="lan", seed=SEED)
        world = EmuWorld(sc, SEED, testbed)
        try:
            t = time.monotonic()
            world.boot(plan(sc, SEED))
            world.settle()
            print(f"booted {a.hosts} hosts in {time.monotonic() - t:.1f} s", flush=True)
            pids = {h: testbed.agents[h].pid for h in hosts}
            seen = Programmed(testbed, hosts)
            time.sleep(2.0 + a.pause)
            seen.poll()
            c0, t0 = cpu_all(pids), time.monotonic()
            time.sleep(a.idle)
            c1, dt = cpu_all(pids), time.monotonic() - t0
            idle = {h: (c1[h] - c0[h]) / dt for h in hosts}
            print(f"idle: {sum(idle.values()) * 1e3:.1f} ms CPU per s over {a.hosts} agents")
            src, others = hosts[0], hosts[1:]
            print(
                f"{'round':>5} {'op':>6} {'K':>4} {'h1 ms/op':>9} {'remote ms/ev':>12} "
                f"{'agents s':>8} {'runner s':>8} {'calls s':>7} {'wall s':>6} {'load':>9}"
            )
            for r in range(1, a.rounds + 1):
                names = [f"x{r}-{i}" for i in range(a.containers)]
                for op in ("add", "delete"):
                    spy = Path(f"{a.spy}-{op}") if a.spy and r == 1 else None
                    row = {
                        "round": r,
                        **phase(testbed, pids, idle, seen, op, names, src, others, spy),
                    }
                    rows.append(row)
                    print(
                        f"{r:>5} {'attach' if op == 'add' else 'detach':>6} {row['k']:>4} "
                        f"{row['src_ms_per_op']:>9.2f} {row['remote_ms_per_event']:>12.3f} "
                        f"{row['agents_cpu_s']:>8.2f} {row['runner_cpu_s']:>8.2f} "
                        f"{row['calls_s']:>7.2f} {row['wall_s']:>6.2f} "
                        f"{row['load'][0]:>4.1f}>{row['load'][1]:<4.1f}",
                        flush=True,
                    )
        finally:
            world.close()
            testbed.stop()
            testbed.remove_files()
    left = [n for n in os.listdir("/var/run/netns") if prefix and n.startswith(prefix)]
    print(f"namespaces left with prefix {prefix!r}: {left or 'none'}")
    for op in ("add", "delete"):
        mine = [r for r in rows if r["op"] == op]
        if mine:
            print(
                f"median {op}: h1 {statistics.median(r['src_ms_per_op'] for r in mine):.2f} ms/op, "
                f"remote {statistics.median(r['remote_ms_per_event'] for r in mine):.3f} ms/event"
            )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
