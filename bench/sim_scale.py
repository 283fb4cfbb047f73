"""Simulator scale benchmark: our per-message cost next to a bare SimPy event, one run.

For each cluster size N it boots N nodes (star underlay, chosen preset), lets the
cluster settle, then simulates a measured window and prints:

* wall seconds per simulated second,
* protocol messages handled per wall second (delivered + timer firings),
* the raw SimPy event rate measured in the same process just before,
* their ratio: wall cost of one handled message / wall cost of one bare SimPy event.

Usage:
  python bench/sim_scale.py                       # N = 1000, 2000, 5000, 10000; 60 s each
  python bench/sim_scale.py --sizes 1000 --seconds 10
  python bench/sim_scale.py --sizes 100000 --seconds 5   # if memory allows
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import time

import simpy
from simpy.events import Timeout

from overlaysim.core.config import profile
from overlaysim.scenario.generators import star
from overlaysim.scenario.topology import LinkSpec
from overlaysim.sim.engine import Observer, SimCluster
from overlaysim.sim.runner import frozen_heap
from overlaysim.sim.underlay import Underlay


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
    args = ap.parse_args(argv)

    print(f"python {sys.version.split()[0]}, simpy {simpy.__version__}, preset {args.preset}")
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
