"""Simulator scale benchmark: our per-message cost next to a bare SimPy event, one run.

For each cluster size N it boots N nodes (star underlay, chosen preset), lets the
cluster settle, then simulates a measured window and prints:

* wall seconds per simulated second,
* protocol messages handled per wall second (delivered + timer firings),
* the raw SimPy event rate measured in the same process just before,
* their ratio: wall cost of one handled message / wall cost of one bare SimPy event.

With ``--endpoints`` it measures what users run instead: the scenario runner
(``SimWorld``, observers included) on a formed cluster with one endpoint per host on one
network, committed at t=0 (a burst of N entries), optionally with endpoint churn
(``--churn RATE``: containers attaching/detaching as a Poisson process from t=1 s on).
For each N it prints wall s per simulated s, entry receptions per wall s (entries
carried by delivered table messages), protocol messages per wall s (deliveries + timer
firings), peak RSS and RSS per node, and the wall time of a bare SimPy workload (N
processes x 1,000 timeouts) timed in the same process, with the ratio run wall / bare
wall. The bare workload is timed three times (twice before the run, once after it) and
the ratio uses their median; the line shows their range and the ratios it spans, since
one timing of a few seconds moves with whatever else the machine is doing.

Usage:
  python bench/sim_scale.py                       # N = 1000, 2000, 5000, 10000; 60 s each
  python bench/sim_scale.py --endpoints --sizes 500 1000 --seconds 30
  python bench/sim_scale.py --endpoints --churn 20 --sizes 1000 --seconds 30
  python bench/sim_scale.py --endpoints --sizes 500 --seconds 10 --profile prof.out
  python bench/sim_scale.py --endpoints --sizes 10000 --seconds 60 --progress 2
  python bench/sim_scale.py --sizes 1000 --seconds 10
  python bench/sim_scale.py --sizes 100000 --seconds 5   # if memory allows
  python bench/sim_scale.py --endpoints --sizes 2000 --seconds 30 --core compiled

``--core compiled`` runs the optional build of ``make compiled`` (the table layer and
queue compiled by mypyc from the same sources); the header names the build in use.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import signal
import statistics
import sys
import time

from overlaysim import corebuild


def _core_choice(argv: list[str]) -> str:
    """``--core``'s value, read before argparse runs: the build must be chosen before the
    protocol core is imported (below)."""
    for i, a in enumerate(argv):
        if a == "--core" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--core="):
            return a.split("=", 1)[1]
    return "python"


if __name__ == "__main__":
    try:
        corebuild.install(_core_choice(sys.argv[1:]))
    except corebuild.CoreBuildError as exc:
        sys.exit(f"sim_scale: {exc}")

import simpy  # noqa: E402 - after the build is chosen
from simpy.events import Timeout  # noqa: E402

from overlaysim.core.config import profile  # noqa: E402
from overlaysim.scenario.generators import star  # noqa: E402
from overlaysim.scenario.topology import LinkSpec  # noqa: E402
from overlaysim.sim.engine import Observer, SimCluster  # noqa: E402
from overlaysim.sim.hugepages import huge_mb as huge_mb_now  # noqa: E402
from overlaysim.sim.runner import frozen_heap  # noqa: E402
from overlaysim.sim.underlay import Underlay  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from where import protocol_sections, top  # noqa: E402 - bench/where.py, beside this file


def process_simpy_rate(n: int = 200_000) -> float:
    """Messages per wall second for idiomatic SimPy: one process per message that waits
    out its delay with ``yield env.timeout(d)`` (process start + timeout + resume)."""
    env = simpy.Environment()
    rng = random.Random(1)
    count = 0

    def message(d: float):
        nonlocal count
        yield env.timeout(d)
        count += 1
        if count < n:
            env.process(message(rng.random() * 0.01))

    for _ in range(5000):
        env.process(message(rng.random() * 0.01))
    t0 = time.perf_counter()
    env.run()
    return count / (time.perf_counter() - t0)


def bare_simpy_rate(n: int = 500_000) -> float:
    """Events per wall second for the cheapest useful SimPy pattern: a timeout with a callback.

    This is what the simulator pays per message at the least (schedule, pop, call back).
    """
    env = simpy.Environment()
    rng = random.Random(1)
    count = 0

    def cb(_ev: object) -> None:
        nonlocal count
        count += 1
        if count < n:
            t = Timeout(env, rng.random() * 0.01)
            t.callbacks.append(cb)

    # Keep a few thousand events in the heap, like a cluster with messages in flight.
    for _ in range(5000):
        t = Timeout(env, rng.random() * 0.01)
        t.callbacks.append(cb)
    t0 = time.perf_counter()
    env.run()
    dt = time.perf_counter() - t0
    return count / dt


class _Counting(Observer):
    def __init__(self) -> None:
        self.member_events = 0

    def member_event(self, t, host, ev) -> None:
        self.member_events += 1


def run_size(n: int, seconds: float, preset: str, settle: float, seed: int) -> dict:
    topo = star(n, LinkSpec(latency_ms=0.5, bandwidth_mbps=1000.0, loss_pct=0.0))
    env = simpy.Environment()
    mconf, tconf = profile(preset)
    obs = _Counting()
    cluster = SimCluster(
        env, Underlay(topo), membership=mconf, tables=tconf, rng=random.Random(seed), observer=obs
    )
    hosts = list(topo.hosts)
    t0 = time.perf_counter()
    # Start from a formed cluster (boot: formed): joining N nodes by gossip costs
    # O(N^2 log N) receipts, which is a boot cost, not the steady state measured here.
    # The table layer idles (no networks), so it is not told about N x N peers.
    cluster.start_formed(hosts, tables=False)
    with frozen_heap():  # as run_simulation does
        env.run(until=settle)
        boot_wall = time.perf_counter() - t0
        delivered0 = cluster.messages_delivered
        timers0 = _timer_count(cluster)
        t1 = time.perf_counter()
        env.run(until=settle + seconds)
        wall = time.perf_counter() - t1
    delivered = cluster.messages_delivered - delivered0
    handled = delivered + (_timer_count(cluster) - timers0)
    alive_views = sum(len(s.node.membership.alive()) for s in cluster.slots.values())
    return {
        "n": n,
        "boot_wall_s": boot_wall,
        "wall_s": wall,
        "wall_per_sim_s": wall / seconds,
        "delivered": delivered,
        "handled": handled,
        "handled_per_wall_s": handled / wall if wall else float("nan"),
        "converged_views": alive_views / (n * (n - 1)) if n > 1 else 1.0,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bare_simpy_processes(n: int, timeouts: int = 1000) -> float:
    """Wall seconds of the reference workload: ``n`` SimPy processes, each waiting out
    ``timeouts`` random timeouts (``yield env.timeout(d)``), run to completion."""
    env = simpy.Environment()
    rng = random.Random(1)

    def proc(delays: list[float]):
        for d in delays:
            yield env.timeout(d)

    for _ in range(n):
        env.process(proc([rng.random() * 0.01 for _ in range(timeouts)]))
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0


def endpoint_scenario(n: int, seconds: float, preset: str, seed: int, churn: float) -> dict:
    """Scenario data: N hosts on a star, one endpoint per host on one network at t=0."""
    events = []
    if churn > 0:
        events.append(
            {
                "at": 1,
                "action": "churn",
                "network": "app",
                "rate_per_s": churn,
                "duration": seconds - 1,
            }
        )
    return {
        "name": f"bench-{n}",
        "seed": seed,
        "duration": seconds,
        "profile": preset,
        "boot": "formed",
        "topology": {
            "generator": "star",
            "hosts": n,
            "link": {"latency_ms": 0.5, "bandwidth_mbps": 1000, "loss_pct": 0},
        },
        "networks": [{"name": "app", "subnet": "10.64.0.0/14", "attachable": True}],
        "containers": [{"per_host": 1, "networks": ["app"]}],
        "events": events,
        "measure": {"probes": False},
    }


def _rss_mb() -> float:
    """Current (not peak) resident set of this process, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _thp_mode() -> str:
    """The kernel's transparent huge page mode (always, madvise, never), or unknown."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return "unknown"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "unknown"


def _interpreter() -> str:
    """Which interpreter build runs, for the header: its path and whether its core is a
    shared ``libpython`` (calls between the interpreter's own functions then go through
    the dynamic linker's tables) or linked into the executable. On one machine the two
    builds of Python 3.11 ran the same workload up to a tenth apart (docs/scale.md,
    twenty-sixth round), so a timing names the build it came from."""
    try:
        with open("/proc/self/maps") as f:
            libs = {line.rsplit("/", 1)[-1].strip() for line in f if "/libpython" in line}
        core = f"shared {', '.join(sorted(libs))}" if libs else "linked into the executable"
    except OSError:  # no /proc (not Linux): say so rather than guess
        core = "core linkage unknown"
    return f"interpreter {os.path.realpath(sys.executable)} ({core})"


def run_endpoints(
    n: int,
    seconds: float,
    preset: str,
    seed: int,
    churn: float,
    progress: float = 0.0,
    huge_pages: bool = True,
    where: bool = False,
) -> dict:
    """One user-shaped run through the scenario runner's world (observers included).

    ``progress`` > 0: run in steps of that many simulated seconds and print a line to
    stderr after each (simulated time, wall time, current RSS, entry receptions), so a
    run of an hour shows how it advances and one stopped early still says how far it got.
    Stepping adds stop events between steps; it does not reorder the run's own events.

    ``where``: sample where the simulated part's time goes (bench/where.py) and return
    it as ``where`` rows (label, estimated wall seconds, samples)."""
    from overlaysim.core.wire import BulkSync, TableGossip
    from overlaysim.scenario.loader import validate_scenario
    from overlaysim.scenario.timeline import plan
    from overlaysim.sim.runner import SimWorld

    scenario = validate_scenario(endpoint_scenario(n, seconds, preset, seed, churn))
    gc.collect()
    # The reference is timed three times (twice before the run, once after it with the
    # run's objects freed) and its median is used: one timing of a few seconds has been
    # seen to differ by a factor of two between runs on the same day (docs/scale.md).
    bares = [bare_simpy_processes(n), bare_simpy_processes(n)]
    t0 = time.perf_counter()
    world = SimWorld(scenario, seed)
    cluster = world.cluster
    obs = cluster.observer
    inner = obs.received
    counts = {"entries": 0}

    def received(t, host, msg, size):  # count entry receptions, then record as usual
        if type(msg) is TableGossip or type(msg) is BulkSync:
            counts["entries"] += len(msg.entries)
        inner(t, host, msg, size)

    obs.received = received
    world.start(plan(scenario, seed))  # boot, then the timeline (churn) as a process
    boot_wall = time.perf_counter() - t0
    sampler = protocol_sections([received]) if where else None
    with frozen_heap(huge_pages) as collapse:
        t1 = time.perf_counter()
        if sampler is not None:
            sampler.start()
        steps = [seconds]
        if progress > 0:
            steps = [k * progress for k in range(1, int(seconds / progress) + 1)]
            steps += [seconds] if steps[-1] < seconds else []
        windows: list[tuple[float, dict[str, int]]] = []
        try:
            for until in steps:
                world.env.run(until=until)
                if progress > 0:
                    busiest = ""
                    if sampler is not None:
                        windows.append((until, sampler.window()))
                        busiest = f"  busiest: {top(windows[-1][1])}"
                    print(
                        f"  N={n} t={until:g} s  wall {boot_wall + time.perf_counter() - t1:.1f} s "
                        f"(boot {boot_wall:.1f})  rss {_rss_mb():.0f} MB  "
                        f"entry rx {counts['entries']}{busiest}",
                        file=sys.stderr, flush=True,
                    )  # fmt: skip
        finally:
            if sampler is not None:
                sampler.stop()  # also on MemoryError or Ctrl-C: no timer left firing
        run_wall = time.perf_counter() - t1
    wall = boot_wall + run_wall
    rows = world.tracker.finish(seconds)
    lat = sorted(r["latency_s"] for r in rows if r["status"] == "converged")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    huge_mb = huge_mb_now()
    handled = cluster.messages_delivered + cluster.timers_fired
    del world, cluster, obs, received
    gc.collect()
    bares.append(bare_simpy_processes(n))
    bare = statistics.median(bares)
    return {
        "n": n,
        "churn": churn,
        "seconds": seconds,
        "bare_wall_s": bare,
        "bare_walls_s": bares,
        "boot_wall_s": boot_wall,
        "wall_s": wall,
        "ratio": wall / bare,
        "ratio_range": [wall / max(bares), wall / min(bares)],
        "wall_per_sim_s": run_wall / seconds,
        "entry_rx": counts["entries"],
        "entry_rx_per_wall_s": counts["entries"] / run_wall,
        "msgs": handled,
        "msgs_per_wall_s": handled / run_wall,
        "commits": len(rows),
        "converged": len(lat),
        "p50_s": lat[len(lat) // 2] if lat else None,
        "max_s": lat[-1] if lat else None,
        "rss_mb": rss_mb,
        "rss_kb_per_node": rss_mb * 1024 / n,
        "huge_mb": huge_mb,
        "heap_pages": "off: --small-pages" if collapse is None else collapse.status,
        **({} if sampler is None else {"where": sampler.rows(run_wall)}),
        **({"where_windows": windows} if windows else {}),
    }


def _endpoint_line(r: dict) -> str:
    p50 = "-" if r["p50_s"] is None else f"{r['p50_s']:.3f}"
    mx = "-" if r["max_s"] is None else f"{r['max_s']:.3f}"
    return (
        f"N={r['n']:>6} churn={r['churn']:g}/s  wall {r['wall_s']:7.1f} s "
        f"(boot {r['boot_wall_s']:.1f})  wall/sim-s {r['wall_per_sim_s']:7.3f}  "
        f"entry rx/wall-s {r['entry_rx_per_wall_s']:9.0f}  msgs/wall-s {r['msgs_per_wall_s']:8.0f}  "
        f"bare simpy {r['bare_wall_s']:6.2f} s ({min(r['bare_walls_s']):.2f}-"
        f"{max(r['bare_walls_s']):.2f})  ratio x{r['ratio']:.1f} "
        f"(x{r['ratio_range'][0]:.1f}-x{r['ratio_range'][1]:.1f})  "
        f"converged {r['converged']}/{r['commits']} p50 {p50} s max {mx} s  "
        f"rss {r['rss_mb']:.0f} MB ({r['rss_kb_per_node']:.0f} KB/node)"
        + ("" if r.get("huge_mb") is None else f", {r['huge_mb']:.0f} MB in huge pages at the end")
        + (f" (heap collapse {r['heap_pages']})" if "heap_pages" in r else "")
    )


def _where_table(r: dict) -> str:
    """The ``where`` rows of one run as an indented table (seconds, share, samples)."""
    run = r["wall_s"] - r["boot_wall_s"]
    total = sum(row[2] for row in r["where"]) or 1
    lines = [
        f"  where the {run:.1f} s of the simulated part went ({total:,} CPU-time samples, "
        "each counted for the innermost step on the stack; bench/where.py):"
    ]
    for label, secs, samples in r["where"]:
        lines.append(f"    {secs:9.2f} s {100 * samples / total:5.1f}%  {samples:>9,}  {label}")
    return "\n".join(lines)


def _endpoints_main(args: argparse.Namespace) -> int:
    """Each size in a fresh interpreter, so peak RSS belongs to that size alone."""
    import json
    import subprocess

    print(
        f"python {sys.version.split()[0]}, simpy {simpy.__version__}, preset {args.preset}, "
        f"{args.seconds:g} simulated s, boot formed, 1 endpoint/host on 1 network at t=0; "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, transparent huge pages "
        f"{_thp_mode()!r}; {_interpreter()}; {corebuild.describe()}",
        flush=True,
    )
    failed = False
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--seconds", str(args.seconds)]
        cmd += ["--preset", args.preset, "--seed", str(args.seed), "--churn", str(args.churn)]
        if args.profile:
            cmd += ["--profile", f"{args.profile}.{n}"]
        if args.progress:
            cmd += ["--progress", str(args.progress)]
        if args.small_pages:
            cmd += ["--small-pages"]
        if args.where:
            cmd += ["--where"]
        cmd += ["--core", args.core]
        # stderr passes through: progress lines, and a failure's own message.
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            rc = proc.returncode
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
            print(f"N={n:>6}: the run did not finish ({how}); see the lines above", flush=True)
            failed = True
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(_endpoint_line(r), flush=True)
        if "where" in r:
            print(_where_table(r), flush=True)
        if args.json:
            print(json.dumps(r), flush=True)
    print(
        "ratio = run wall (boot + simulated seconds) / wall of N SimPy processes x 1,000 "
        "timeouts, timed in the same process: the median of three timings (two before the "
        "run, one after it), their range in brackets"
    )
    return 1 if failed else 0


def _one(args: argparse.Namespace) -> int:
    import json

    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        r = run_endpoints(
            args.one, args.seconds, args.preset, args.seed, args.churn, args.progress,
            not args.small_pages, args.where,
        )  # fmt: skip
        prof.disable()
        prof.dump_stats(args.profile)
    else:
        try:
            r = run_endpoints(
                args.one, args.seconds, args.preset, args.seed, args.churn, args.progress,
                not args.small_pages, args.where,
            )  # fmt: skip
        except MemoryError:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"N={args.one}: out of memory (peak RSS {peak:.0f} MB); with --progress the "
                "lines above say how far the run got",
                file=sys.stderr,
            )
            return 3
    print(json.dumps(r))
    return 0


def _timer_count(cluster: SimCluster) -> int:
    return getattr(cluster, "timers_fired", 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    ap.add_argument("--seconds", type=float, default=60.0, help="simulated seconds measured")
    ap.add_argument("--settle", type=float, default=2.0, help="simulated seconds before measuring")
    ap.add_argument("--preset", default="lan", choices=["lan", "wan", "local"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--endpoints", action="store_true", help="user-shaped run with endpoints")
    ap.add_argument("--churn", type=float, default=0.0, help="endpoint churn events/s")
    ap.add_argument("--profile", help="cProfile stats file prefix (endpoint runs)")
    ap.add_argument("--json", action="store_true", help="also print each row as JSON")
    ap.add_argument(
        "--progress", type=float, default=0.0, metavar="S",
        help="endpoint runs: print simulated time, wall time and RSS every S simulated s "
        "(with --where, also the three busiest steps of those S seconds)",
    )  # fmt: skip
    ap.add_argument(
        "--small-pages", action="store_true",
        help="endpoint runs: leave the heap on small pages (the simulator otherwise asks "
        "the kernel to move it onto huge pages, overlaysim/sim/hugepages.py): for A/B "
        "timings of that placement",
    )  # fmt: skip
    ap.add_argument(
        "--where", action="store_true",
        help="endpoint runs: after each run, print where its simulated part's time went "
        "(receiving each message kind, held checks, accepting records, broadcast queues, "
        "gossip and bulk-sync rounds, timers, the driver, observers, SimPy's loop), "
        "sampled 250 times per CPU second (bench/where.py)",
    )  # fmt: skip
    ap.add_argument(
        "--core", choices=corebuild.CHOICES, default="python",
        help="which build of the table layer and queue runs: the Python sources (default) "
        "or the optional build of `make compiled` (refused when missing or stale)",
    )  # fmt: skip
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.where and corebuild.status().core == "compiled":
        ap.error(
            "--where samples Python frames, and the compiled table layer and queue have "
            "none: use --core python for where the time goes"
        )
    if args.one:
        return _one(args)
    if args.endpoints:
        return _endpoints_main(args)

    print(
        f"python {sys.version.split()[0]}, simpy {simpy.__version__}, preset {args.preset}; "
        f"{_interpreter()}; {corebuild.describe()}"
    )
    rows = []
    for n in args.sizes:
        gc.collect()
        bare = bare_simpy_rate()
        proc = process_simpy_rate()
        r = run_size(n, args.seconds, args.preset, args.settle, args.seed)
        r["bare_events_per_s"] = bare
        r["process_msgs_per_s"] = proc
        r["cost_ratio"] = bare / r["handled_per_wall_s"]
        r["cost_ratio_process"] = proc / r["handled_per_wall_s"]
        rows.append(r)
        print(
            f"N={n:>6}  boot {r['boot_wall_s']:6.1f} s  "
            f"wall/sim-s {r['wall_per_sim_s']:7.3f}  "
            f"handled/wall-s {r['handled_per_wall_s']:8.0f}  "
            f"simpy callback ev/s {bare:8.0f} (x{r['cost_ratio']:.1f})  "
            f"simpy process msg/s {proc:7.0f} (x{r['cost_ratio_process']:.1f})  "
            f"views {r['converged_views']:.3f}  rss {r['max_rss_mb']:.0f} MB",
            flush=True,
        )
    print(
        "x = wall cost of one handled protocol message (delivery or timer, with the "
        "protocol work) / wall cost of one SimPy event of that kind, same process, same run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
