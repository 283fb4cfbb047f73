"""Emulation scale benchmark: N Mininet hosts, one real agent each, one run per row.

For each size N (star underlay, ``lan`` profile, one network ``web``, two containers per
host started at t=0, then from t=10 s churn on ``web`` at 2 attach/detach per second for
10 s), the scenario runs twice through :func:`overlaysim.emu.runner.run_emulation`: once
on a clean underlay and once with 5 % end-to-end loss switched on at t=0 (after the
initial containers, which the runner starts before the first step). It prints, per row:

* set-up seconds per host: underlay build + start, agents started and answering, every
  agent seeing every other alive (``boot: formed``), networks and the 2N containers;
* agent RSS (``VmRSS`` from ``/proc/<pid>/status`` at the end of the run): mean and max;
* endpoint convergence (commit until every live host on the network has the endpoint
  programmed in its kernel): p99 of the boot burst (2N commits within about a second,
  always without loss), then p50, p99 and max of the churn commits (one at a time,
  under the row's loss), and commits never converged;
* the same boot-burst and churn p99 from the simulator for the same scenario and seed,
  for comparison (the protocol's own figure, without kernel or CPU effects).

After the table, each 0 % loss row of 50 hosts or more is checked against issue 15's
targets: set-up <= 0.25 s per host, no commit unconverged, timeline lag <= 0.5 s, churn
p99 within 1.5x of the simulator's. ``--keep DIR`` keeps both results folders of every
row (``DIR/<N>-<loss>/emu`` and ``.../sim``) for ``overlaysim report``/``compare``.

Needs root and Mininet; run nothing else on Mininet meanwhile. Usage:
  sudo .venv/bin/python bench/emu_scale.py                 # N = 10, 25, 50
  sudo .venv/bin/python bench/emu_scale.py --sizes 10 --loss 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from overlaysim.core.network import ATTACHMENTS, DEFAULT_ATTACHMENT
from overlaysim.emu.runner import run_emulation
from overlaysim.metrics.results import load_run
from overlaysim.scenario.loader import validate_scenario
from overlaysim.sim.runner import run_simulation

#: Churn starts here, after the boot burst has settled.
CHURN_AT = 10.0


def scenario(n: int, loss: float, duration: float, attachment: str = DEFAULT_ATTACHMENT) -> Any:
    events: list[dict[str, Any]] = [
        {"at": CHURN_AT, "action": "churn", "network": "web", "rate_per_s": 2, "duration": 10}
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
            "networks": [
                {
                    "name": "web",
                    "subnet": "10.40.0.0/16",
                    "attachable": True,
                    "attachment": attachment,
                }
            ],
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


def phases(conv: Any) -> tuple[list[float], list[float], int]:
    """Converged latencies of the boot burst and of the churn, and the unconverged count."""
    done = conv[conv["status"] == "converged"]
    boot = done[done["t_commit"] < CHURN_AT]["latency_s"].tolist()
    churn = done[done["t_commit"] >= CHURN_AT]["latency_s"].tolist()
    return boot, churn, int((conv["status"] == "unconverged").sum())


def targets(r: dict[str, Any]) -> list[tuple[str, bool]]:
    """Issue 15's four targets for one row: (what, met)."""
    lag = r["step_lag_max_s"]
    return [
        (f"set-up {r['setup_s_per_host']:.2f} s/host <= 0.25", r["setup_s_per_host"] <= 0.25),
        (
            f"unconverged commits {r['unconverged']} == 0 (run {r['status']})",
            r["status"] == "complete" and r["unconverged"] == 0,
        ),
        (f"timeline lag {lag or 0:.3f} s <= 0.5", lag is not None and lag <= 0.5),
        (
            f"churn p99 {r['churn_p99_s']:.2f} s <= 1.5 x sim {r['sim_churn_p99_s']:.2f} s",
            r["churn_p99_s"] <= 1.5 * r["sim_churn_p99_s"],
        ),
    ]


def one(
    n: int, loss: float, duration: float, out: Path, attachment: str = DEFAULT_ATTACHMENT
) -> dict[str, Any]:
    sc = scenario(n, loss, duration, attachment)
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    status = run_emulation(sc, out / "emu", progress=False)
    wall = time.perf_counter() - t
    load_after = os.getloadavg()[0]
    run = load_run(out / "emu")
    m = run.manifest
    timings = m["underlay"]["timings"]
    setup = timings.get("build_s", 0.0) + timings.get("start_s", 0.0) + m.get("boot_s", 0.0)
    boot, churn, unconverged = phases(run.convergence)
    run_simulation(sc, out / "sim", progress=False)
    sim_boot, sim_churn, _ = phases(load_run(out / "sim").convergence)
    rss = list(m.get("agent_rss_kib", {}).values())
    return {
        "hosts": n,
        "loss_pct": loss,
        "status": status,
        "setup_s": setup,
        "setup_s_per_host": setup / n,
        "rss_mib_mean": sum(rss) / len(rss) / 1024 if rss else math.nan,
        "rss_mib_max": max(rss) / 1024 if rss else math.nan,
        "boot_commits": len(boot),
        "boot_p99_s": pct(boot, 99),
        "churn_commits": len(churn),
        "churn_p50_s": pct(churn, 50),
        "churn_p99_s": pct(churn, 99),
        "churn_max_s": max(churn) if churn else math.nan,
        "unconverged": unconverged,
        "sim_boot_p99_s": pct(sim_boot, 99),
        "sim_churn_p99_s": pct(sim_churn, 99),
        "step_lag_max_s": (m.get("step_lag_s") or {}).get("max"),
        "wall_s": wall,
        # Where the set-up went: underlay phases (nodes, links, config, bridges,
        # baseline) and the agents' boot until formed.
        "setup_parts_s": {
            **timings,
            "boot_s": m.get("boot_s", 0.0),
            "containers_s": m.get("boot_containers_s", math.nan),
        },
        # 1-minute load average before and after the run (2 cores: above ~2 the
        # agents wait for CPU, and every time above is partly the machine's).
        "load": [round(load_before, 1), round(load_after, 1)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50])
    p.add_argument("--loss", type=float, nargs="+", default=[0.0, 5.0])
    p.add_argument("--duration", type=float, default=25.0)
    p.add_argument(
        "--attachment",
        choices=ATTACHMENTS,
        default=DEFAULT_ATTACHMENT,
        help="how hosts plug the containers into 'web' (docs/dataplane.md)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep each row's results folders under DIR (default: a temporary folder)",
    )
    a = p.parse_args()
    rows = []
    head = (
        f"{'hosts':>5} {'loss%':>5} {'setup s':>7} {'s/host':>6} {'RSS MiB':>7} {'max':>5} "
        f"{'boot n':>6} {'p99':>6} {'churn n':>7} {'p50':>6} {'p99':>6} {'max':>6} "
        f"{'unconv':>6} {'sim boot p99':>12} {'sim churn p99':>13} {'lag s':>5} "
        f"{'cont. s':>7} {'load':>9}"
    )
    print(head)
    keep = nullcontext(str(a.keep)) if a.keep else None
    with keep or tempfile.TemporaryDirectory(prefix="emu-scale-") as tmp:
        for n in a.sizes:
            for loss in a.loss:
                r = one(n, loss, a.duration, Path(tmp) / f"{n}-{loss:g}", a.attachment)
                rows.append(r)
                print(
                    f"{r['hosts']:>5} {r['loss_pct']:>5g} {r['setup_s']:>7.1f} "
                    f"{r['setup_s_per_host']:>6.2f} {r['rss_mib_mean']:>7.1f} "
                    f"{r['rss_mib_max']:>5.1f} {r['boot_commits']:>6} {r['boot_p99_s']:>6.3f} "
                    f"{r['churn_commits']:>7} {r['churn_p50_s']:>6.3f} {r['churn_p99_s']:>6.3f} "
                    f"{r['churn_max_s']:>6.3f} {r['unconverged']:>6} "
                    f"{r['sim_boot_p99_s']:>12.3f} {r['sim_churn_p99_s']:>13.3f} "
                    f"{r['step_lag_max_s'] or 0:>5.2f} "
                    f"{r['setup_parts_s']['containers_s']:>7.1f} "
                    f"{r['load'][0]:>4.1f}>{r['load'][1]:<4.1f}",
                    flush=True,
                )
    for r in rows:
        if r["hosts"] >= 50 and r["loss_pct"] == 0:
            for what, ok in targets(r):
                print(f"target (issue 15), {r['hosts']} hosts, {what}: {'met' if ok else 'MISSED'}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
