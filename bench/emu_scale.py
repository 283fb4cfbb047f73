"""Emulation scale benchmark: N Mininet hosts, one real agent each, one run per row.

For each size N (star underlay, ``lan`` profile, one network ``web``, two containers per
host started at t=0, then churn on ``web`` at 2 attach/detach per second for 15 s), the
scenario runs twice through :func:`overlaysim.emu.runner.run_emulation`: once on a clean
underlay and once with 5 % end-to-end loss switched on at t=0. It prints, per row:

* set-up seconds per host: underlay build + start, agents started and answering, every
  agent seeing every other alive (``boot: formed``), networks and the 2N containers;
* agent RSS (``VmRSS`` from ``/proc/<pid>/status`` at the end of the run): mean and max;
* endpoint convergence (commit until every live host on the network has the endpoint
  programmed in its kernel): p50, p99, max, and commits never converged. At 0 % loss
  this covers the 2N boot commits and the churn; at 5 % loss the churn only (the boot
  commits come before the loss step).

Needs root and Mininet; run nothing else on Mininet meanwhile. Usage:
  sudo .venv/bin/python bench/emu_scale.py                 # N = 10, 25, 50
  sudo .venv/bin/python bench/emu_scale.py --sizes 10 --loss 0
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from overlaysim.emu.runner import run_emulation
from overlaysim.metrics.results import load_run
from overlaysim.scenario.loader import validate_scenario


def scenario(n: int, loss: float, duration: float) -> Any:
    events: list[dict[str, Any]] = [
        {"at": 1, "action": "churn", "network": "web", "rate_per_s": 2, "duration": 15}
    ]
    if loss:
        events.insert(0, {"at": 0, "action": "loss", "percent": loss})
    return validate_scenario(
        {
            "name": f"emu-scale-{n}-loss{loss:g}",
            "seed": 11,
            "duration": duration,
            "profile": "lan",
            "topology": {"generator": "star", "hosts": n},
            "networks": [{"name": "web", "subnet": "10.40.0.0/16", "attachable": True}],
            "containers": [{"per_host": 2, "prefix": "c", "networks": ["web"]}],
            "events": events,
            "measure": {"probes": False, "throughput": []},
        }
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def one(n: int, loss: float, duration: float, out: Path) -> dict[str, Any]:
    sc = scenario(n, loss, duration)
    t = time.perf_counter()
    status = run_emulation(sc, out, progress=False, plots=False)
    wall = time.perf_counter() - t
    run = load_run(out)
    m = run.manifest
    timings = m["underlay"]["timings"]
    setup = timings.get("build_s", 0.0) + timings.get("start_s", 0.0) + m.get("boot_s", 0.0)
    conv = run.convergence
    if loss:  # only commits made under loss (after the loss step at t=0)
        conv = conv[conv["t_commit"] > 0.5]
    done = conv[conv["status"] == "converged"]["latency_s"].tolist()
    rss = list(m.get("agent_rss_kib", {}).values())
    return {
        "hosts": n,
        "loss_pct": loss,
        "status": status,
        "setup_s": setup,
        "setup_s_per_host": setup / n,
        "rss_mib_mean": sum(rss) / len(rss) / 1024 if rss else math.nan,
        "rss_mib_max": max(rss) / 1024 if rss else math.nan,
        "commits": len(conv),
        "p50_s": pct(done, 50),
        "p99_s": pct(done, 99),
        "max_s": max(done) if done else math.nan,
        "unconverged": int((conv["status"] == "unconverged").sum()),
        "step_lag_max_s": (m.get("step_lag_s") or {}).get("max"),
        "wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--loss", type=float, nargs="+", default=[0.0, 5.0])
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args()
    rows = []
    head = (
        f"{'hosts':>5} {'loss%':>5} {'setup s':>8} {'s/host':>7} {'RSS MiB':>8} {'max':>6} "
        f"{'commits':>7} {'p50 s':>6} {'p99 s':>6} {'max s':>6} {'unconv':>6} {'lag s':>6}"
    )
    print(head)
    with tempfile.TemporaryDirectory(prefix="emu-scale-") as tmp:
        for n in a.sizes:
            for loss in a.loss:
                r = one(n, loss, a.duration, Path(tmp) / f"{n}-{loss:g}")
                rows.append(r)
                print(
                    f"{r['hosts']:>5} {r['loss_pct']:>5g} {r['setup_s']:>8.1f} "
                    f"{r['setup_s_per_host']:>7.2f} {r['rss_mib_mean']:>8.1f} "
                    f"{r['rss_mib_max']:>6.1f} {r['commits']:>7} {r['p50_s']:>6.3f} "
                    f"{r['p99_s']:>6.3f} {r['max_s']:>6.3f} {r['unconverged']:>6} "
                    f"{r['step_lag_max_s'] or 0:>6.2f}",
                    flush=True,
                )
    target = [r for r in rows if r["hosts"] >= 50 and r["loss_pct"] == 0]
    for r in target:
        ok = r["status"] == "complete" and r["p99_s"] < 2.0 and r["unconverged"] == 0
        print(
            f"target (50 hosts up and converged, p99 < 2 s at 0% loss): {'met' if ok else 'MISSED'}"
        )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
