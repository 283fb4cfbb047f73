"""Where an entry's spread spends its time, simulator vs emulator (same scenario and seed).

    python bench/spread.py EMU_DIR SIM_DIR [--op delete] [--since T] [--json OUT]

EMU_DIR is an ``overlaysim run`` results folder. Its agents' per-datagram lines
(``gossip_tx``/``gossip_rx``) exist only when the run had ``OVERLAYSIM_TRACE_GOSSIP=1``
in its environment (``--trace-gossip``); without them only the commit → table-event
parts are shown. SIM_DIR is an ``overlaysim sim`` folder: the simulation is replayed
from its manifest's scenario and seed (deterministic) with an observer that sees every
datagram; the replay's convergence rows are checked against the folder's.

Prints one table: each component of the decomposition (``overlaysim.metrics.spread``)
as p50 / p90 / mean per backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from overlaysim.errors import UserError
from overlaysim.metrics.spread import decompose, summarise
from overlaysim.report.spread_trace import emu_trace
from overlaysim.sim.spread_replay import sim_trace


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.0f}" if unit == "ms" else f"{v:.2g}"


ROWS = [
    ("owner_wait", "commit -> owner's first send", "ms"),
    ("hop", "per hop: send -> receive", "ms"),
    ("handle", "receive -> table event", "ms"),
    ("forward_wait", "table event -> own first send", "ms"),
    ("hops_to_last", "hops to the last host", ""),
    ("to_last", "commit -> last host", "ms"),
    ("path_held", "  on its path: held, waiting ticks", "ms"),
    ("path_wire", "  on its path: on the wire", "ms"),
    ("path_round", "  on its path: holder's send no.", ""),
    ("sent_per_commit", "datagrams sent per commit", ""),
]


def table(name_a: str, a: dict, name_b: str, b: dict) -> str:
    out = [f"{'component':34} {name_a + ' p50/p90/mean':>24} {name_b + ' p50/p90/mean':>24}"]
    for key, label, unit in ROWS:
        cells = []
        for s in (a, b):
            d = s[key]
            if not d["n"]:
                cells.append("-")
            else:
                cells.append("/".join(_fmt(d[q], unit) for q in ("p50", "p90", "mean")))
        out.append(f"{label + (' (ms)' if unit else ''):34} {cells[0]:>24} {cells[1]:>24}")
    la, lb = a["loss"], b["loss"]
    out.append(
        f"{'datagrams lost':34} {la['lost']}/{la['sent']:<18} {lb['lost']}/{lb['sent']:<18}".rstrip()
    )
    out.append(f"{'commits (n)':34} {a['commits']['n']:>24} {b['commits']['n']:>24}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("emu", type=Path, help="emulation results folder")
    ap.add_argument("sim", type=Path, help="simulation results folder (replayed)")
    ap.add_argument("--op", choices=("add", "delete"), default=None)
    ap.add_argument("--since", type=float, default=0.0, help="only commits at/after T s")
    ap.add_argument("--json", type=Path, default=None, help="write the summaries here")
    a = ap.parse_args(argv)
    try:
        etr, einfo = emu_trace(a.emu)
        str_, sinfo = sim_trace(a.sim)
    except (OSError, ValueError, KeyError, UserError) as exc:
        # a missing folder or file, a folder of another kind, a truncated log line
        print(f"spread: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if not sinfo["replay_matches_folder"]:
        print(f"warning: the replay of {a.sim} does not match its events.csv", file=sys.stderr)
    if not einfo["datagram_lines"]:
        print(
            f"note: {a.emu} has no gossip_tx/gossip_rx lines (run with "
            "OVERLAYSIM_TRACE_GOSSIP=1): per-hop rows are empty",
            file=sys.stderr,
        )
    res = {}
    for name, tr in (("sim", str_), ("emu", etr)):
        spreads = [s for s in decompose(tr) if s.commit.t >= a.since]
        res[name] = {op: summarise(spreads, op) for op in ("add", "delete", None)}
    ops = [a.op] if a.op else ["add", "delete", None]
    for op in ops:
        print(f"\n== {op or 'all ops'} ==")
        print(table("sim", res["sim"][op], "emu", res["emu"][op]))
    prog = sorted(einfo["programming"])
    if prog:
        print(
            f"\nemu only: table event -> kernel programmed p50 {statistics.median(prog) * 1e3:.1f} ms"
            f", max {prog[-1] * 1e3:.1f} ms (n={len(prog)})"
        )
    if a.json:
        a.json.write_text(
            json.dumps({k: {str(op): v for op, v in d.items()} for k, d in res.items()}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
