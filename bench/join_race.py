"""The join race, in the simulator: a boot whose joins are spread over seconds.

    python bench/join_race.py                       # 100 hosts, seeds 1-12, three settings
    python bench/join_race.py --hosts 200 --seeds 1 2 3 --span 8

In the simulator the initial containers are one instant: every host joins its networks
at t = 0, before any message moves. The emulator realises that instant over seconds
(100 hosts attach their 200 containers in about 6 s on 2 CPUs), and a host that joins
while other hosts' entries are already spreading can miss them: its join sync came
before they existed, and their gossip was spent on the peers known before its join
was. This bench replays such a boot in the simulator. Each host attaches two
containers to one network, the hosts one after another at random gaps, ``--span``
seconds in all. Over the same boots it prints, per protocol setting, how long each
entry took to be held by every host (the emulator's targets for a boot commit), and
how many never were within ``--duration`` seconds.

Settings: ``before`` is the tables as they were before the join resync and the
bulk-sync rebroadcast (both off); ``every-peer`` adds a join sync with every peer known
on the network (NetworkDB's); ``rebroadcast`` and ``resync`` turn one of the two on;
``docker`` is the ``docker`` variant; ``overlaysim`` is the default (both on). Nothing
here is timed: the simulator is deterministic.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from typing import Any

_BEFORE = {"join_resync_delay": 0, "bulk_rebroadcast_limit": 0}
SETTINGS: dict[str, dict[str, Any]] = {
    "before": {"tables": _BEFORE},
    "every-peer": {"tables": {**_BEFORE, "join_sync_peers": 0}},
    "rebroadcast": {"tables": {"join_resync_delay": 0}},
    "resync": {"tables": {"bulk_rebroadcast_limit": 0}},
    "docker": {"variant": "docker"},
    "overlaysim": {},
}


def scenario(hosts: int, span: float, duration: float, seed: int, protocol: dict) -> dict:
    """A boot of ``hosts`` hosts joining ``web`` one after another over ``span`` s."""
    rng = random.Random(seed)
    gaps = [rng.uniform(0.02, 0.09) for _ in range(hosts)]
    scale = span / sum(gaps)
    events, t = [], 0.3
    for i, gap in enumerate(gaps, 1):
        t += gap * scale
        for j, at in ((1, t), (2, t + 0.05 + rng.uniform(0, 0.05))):
            events.append(
                {"at": round(at, 3), "action": "attach", "container": f"c-h{i}-{j}",
                 "host": f"h{i}", "network": "web"}
            )  # fmt: skip
    events.sort(key=lambda e: e["at"])
    return {
        "name": "join-race",
        "seed": seed,
        "duration": duration,
        "profile": "lan",
        "topology": {"generator": "star", "hosts": hosts},
        "networks": [{"name": "web", "subnet": "10.40.0.0/16", "attachable": True}],
        "containers": [],
        "events": events,
        "measure": {"probes": False, "throughput": []},
        "protocol": protocol,
    }


class _Held:
    """A simulator observer that notes when each host first holds each entry."""

    def __init__(self, inner: Any, first: dict[tuple[str, str], float]) -> None:
        self.inner = inner
        self.first = first

    def entry_event(self, t: float, host: str, ev: Any) -> None:
        if ev.table == "endpoints" and ev.kind.name in ("CREATE", "UPDATE"):
            self.first.setdefault((host, ev.key), t)
        self.inner.entry_event(t, host, ev)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run(sc: dict) -> tuple[list[float], int]:
    """Per entry: seconds from its commit until every host held it; and how many never."""
    from overlaysim.scenario.loader import validate_scenario
    from overlaysim.sim.runner import run_observed

    scen = validate_scenario(sc, source="bench/join_race.py")
    first: dict[tuple[str, str], float] = {}  # (host, key): when the host first held it
    world = run_observed(scen, sc["seed"], lambda inner: _Held(inner, first))
    commits = {r[5]: float(r[0]) for r in world.events.rows if r[2] == "entry_commit"}
    hosts = {f"h{i}" for i in range(1, sc["topology"]["hosts"] + 1)}
    spans, never = [], 0
    for key, t0 in commits.items():
        owner = key.split("-")[1]
        ts = [t0 if h == owner else first.get((h, key)) for h in hosts]
        if None in ts:
            never += 1
        else:
            spans.append(max(ts) - t0)
    return spans, never


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[2], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--hosts", type=int, default=100, help="hosts (default 100)")
    ap.add_argument("--span", type=float, default=6.0, help="seconds the joins take (6)")
    ap.add_argument("--duration", type=float, default=25.0, help="simulated seconds (25)")
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=list(range(1, 13)), help="seeds (default 1-12)"
    )
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["before", "docker", "overlaysim"],
        choices=list(SETTINGS),
        help="which settings (default: before docker overlaysim)",
    )
    args = ap.parse_args(argv)
    if args.hosts < 2 or args.span <= 0 or args.duration <= args.span + 0.5:
        ap.error("expected --hosts >= 2, --span > 0 and --duration > --span + 0.5")
    print(
        f"{args.hosts} hosts join over {args.span:g} s, 2 entries each; "
        f"{args.duration:g} simulated s; seeds {' '.join(map(str, args.seeds))}"
    )
    print("setting     | never held by all | per seed: p99 s (min-max) | max s (min-max)")
    for name in args.settings:
        p99s, maxes, never, seeds_never = [], [], 0, 0
        for seed in args.seeds:
            sc = scenario(args.hosts, args.span, args.duration, seed, SETTINGS[name])
            spans, nv = run(sc)
            spans.sort()
            never += nv
            seeds_never += bool(nv)
            p99s.append(spans[min(len(spans) - 1, int(0.99 * len(spans)))])
            maxes.append(spans[-1])
            print(".", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        print(
            f"{name:11s} | {never:3d} in {seeds_never:2d} of {len(args.seeds)} seeds"
            f"  | {statistics.median(p99s):5.2f} ({min(p99s):.2f}-{max(p99s):.2f})"
            f"      | {statistics.median(maxes):5.2f} ({min(maxes):.2f}-{max(maxes):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
