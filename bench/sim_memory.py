"""Where a simulated run's memory goes, per (node, peer) pair.

Runs the same user-shaped workload as ``bench/sim_scale.py --endpoints`` (formed boot,
lan preset, one endpoint per host on one network at t=0) for a few simulated seconds,
then walks every node's protocol state and adds up, per structure (attribute path such
as ``tables._nets[].records``), the bytes of the containers that node owns: dicts, sets,
lists, tuples, deques, and the per-node objects they hold (records, queue items).
Objects reachable from more than one node (shared records, keys, entries) are counted
once, under ``shared``. Each total is also given per (node, peer) pair, N x (N - 1).

Usage:
  python bench/sim_memory.py --n 500 --seconds 10
  python bench/sim_memory.py --n 500 --seconds 10 --tracemalloc 15   # + top allocation sites
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
from collections import Counter, deque

_CONTAINERS = (dict, set, frozenset, list, tuple, deque)


def _walk_objects(root: object, path: str, out: list[tuple[str, object]]) -> None:
    """(path, object) for every object under ``root`` worth attributing."""
    seen: set[int] = set()
    stack: list[tuple[str, object]] = [(path, root)]
    while stack:
        p, o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        out.append((p, o))
        t = type(o)
        if t is dict:
            for k, v in o.items():  # type: ignore[attr-defined]
                stack.append((p + "{k}", k))
                stack.append((p + "[]", v))
        elif t in _CONTAINERS:
            for v in o:  # type: ignore[attr-defined]
                stack.append((p + "[]", v))
        elif hasattr(t, "__slots__") or hasattr(o, "__dict__"):
            if t.__module__.startswith("overlaysim.core") and t.__name__ not in (
                "MembershipConfig",
                "TableConfig",
            ):
                names = list(getattr(t, "__slots__", ()))
                names += list(getattr(o, "__dict__", {}).keys())
                for a in names:
                    if hasattr(o, a):
                        stack.append((f"{p}.{a}", getattr(o, a)))


def breakdown(nodes: dict[str, object]) -> tuple[Counter, Counter, int]:
    """Bytes per structure path owned by one node, and bytes shared by several."""
    owners: dict[int, tuple[str, object]] = {}
    shared_ids: set[int] = set()
    for name, node in nodes.items():
        objs: list[tuple[str, object]] = []
        _walk_objects(node, "node", objs)
        for p, o in objs:
            i = id(o)
            prev = owners.get(i)
            if prev is None:
                owners[i] = (p, o, name)  # type: ignore[assignment]
            elif prev[2] != name:  # type: ignore[misc]
                shared_ids.add(i)
    per_path: Counter = Counter()
    per_type: Counter = Counter()
    shared = 0
    for i, (p, o, _n) in owners.items():  # type: ignore[misc]
        if type(o) in (str, int, float, bool, type(None)) and i not in shared_ids:
            # small immutable leaves (interned names, small ints): attribute like others
            pass
        size = sys.getsizeof(o)
        if i in shared_ids:
            shared += size
            continue
        per_path[p] += size
        per_type[type(o).__name__] += size
    return per_path, per_type, shared


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--tracemalloc", type=int, default=0, help="also show N top allocation sites")
    args = ap.parse_args(argv)

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from sim_scale import endpoint_scenario  # type: ignore[import-not-found]

    from overlaysim.scenario.loader import validate_scenario
    from overlaysim.scenario.timeline import plan
    from overlaysim.sim.runner import SimWorld, frozen_heap

    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(1)
    scenario = validate_scenario(endpoint_scenario(args.n, args.seconds, "lan", args.seed, 0.0))
    world = SimWorld(scenario, args.seed)
    world.start(plan(scenario, args.seed))
    with frozen_heap():
        world.env.run(until=args.seconds)
    gc.collect()
    n = args.n
    pairs = n * (n - 1)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"N={n}, {args.seconds:g} simulated s, peak RSS {rss_mb:.0f} MB ({rss_mb * 1024 / n:.0f} KB/node)"
    )
    if args.tracemalloc:
        import tracemalloc

        snap = tracemalloc.take_snapshot()
        total = sum(s.size for s in snap.statistics("filename"))
        print(f"traced {total / 1e6:.1f} MB = {total / pairs:.0f} B per pair; top sites:")
        for s in snap.statistics("lineno")[: args.tracemalloc]:
            f = s.traceback[0]
            name = f.filename.split("overlaysim/")[-1]
            print(f"  {s.size / pairs:7.1f} B/pair {s.size / 1e6:8.1f} MB  {name}:{f.lineno}")
        tracemalloc.stop()
    nodes = {h: s.node for h, s in world.cluster.slots.items()}
    per_path, per_type, shared = breakdown(nodes)
    owned = sum(per_path.values())
    print(
        f"per-node state: {owned / 1e6:.1f} MB owned ({owned / pairs:.0f} B per pair), "
        f"{shared / 1e6:.1f} MB shared between nodes ({shared / pairs:.1f} B per pair)"
    )
    print("by structure (bytes per (node, peer) pair):")
    for p, b in per_path.most_common(args.top):
        print(f"  {b / pairs:7.1f}  {p}")
    print("by object type (bytes per pair):")
    for t, b in per_type.most_common(12):
        print(f"  {b / pairs:7.1f}  {t}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
