"""The known-issues library: Docker's documented overlay failures, each a scenario under
``scenarios/known-issues/`` plus one symptom check, run under both protocol variants.

A case passes when its symptom shows under ``docker`` (value above ``reproduced_above``:
"reproduced") and does not under our default variant (value at most ``absent_at_most``:
"absent"). ``overlaysim known-issues`` runs them and prints the table.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where the case scenarios live (a source checkout, or the current directory).
SCENARIO_DIRS = (
    Path(__file__).resolve().parents[1] / "scenarios" / "known-issues",
    Path("scenarios") / "known-issues",
)


@dataclass(frozen=True, slots=True)
class Case:
    """One documented failure, and how to tell whether a run shows it."""

    id: str  # also names its scenario: ``scenarios/known-issues/<id>.yaml``
    source: str  # the issue that documents it
    backend: str  # "sim" (control-plane cause) or "emu" (data-plane cause)
    symptom: str  # what ``value`` measures
    value: Callable[[dict[str, Any], Path], float]  # (metrics.json, results folder)
    #: Most symptoms are counts that must be 0 without the bug and are not with it.
    reproduced_above: float = 0.0
    absent_at_most: float = 0.0

    @property
    def scenario(self) -> str:
        """The scenario's file name under ``scenarios/known-issues/``."""
        return f"{self.id}.yaml"


def _from_folder(count: Callable[[Path], int]) -> Callable[[dict[str, Any], Path], float]:
    """A case's ``value`` from a count over the results folder alone."""
    return lambda m, folder: float(count(folder))


def _unconverged(m: dict[str, Any], folder: Path) -> float:
    return float(m["endpoint_convergence_s"]["unconverged"])


def _unreachable(m: dict[str, Any], folder: Path) -> float:
    return float(m["reachability"]["unreachable_expected"])


#: A removed container still held this long after its removal counts as stale.
STALE_AFTER_S = 5.0


def _full_size_lost(m: dict[str, Any], folder: Path) -> float:
    """Echoes of the container MTU's full size lost (emulation's manifest)."""
    pings = json.loads((folder / "manifest.json").read_text())["full_size_pings"]
    return float(sum(p["sent"] - p["received"] for p in pings))


def _fragments(m: dict[str, Any], folder: Path) -> float:
    """IPv4 fragments the hosts' underlay stacks made (emulation's manifest)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return float(manifest["underlay_ip"]["FragCreates"])


def probe_echoes_lost(folder: Path) -> int:
    """Probe echoes between containers that should reach each other and did not, over the
    whole run (every round of ``reachability.csv``, not only the final one)."""
    with (folder / "reachability.csv").open(newline="") as f:
        return sum(
            r["expected"].lower() == "true" and r["reachable"].lower() != "true"
            for r in csv.DictReader(f)
        )


def _held_at_end(folder: Path) -> tuple[float, dict, dict, dict, dict, dict]:
    """The end of the run and, from ``events.csv``, who is up, on which network, where
    each container lives, when it was removed, and what each host holds at the end."""
    manifest = json.loads((folder / "manifest.json").read_text())
    end = float(manifest["scenario"]["duration"])
    up: dict[str, bool] = {}
    on_net: dict[tuple[str, str], bool] = {}
    home: dict[tuple[str, str], str] = {}  # (container, network) -> host, while attached
    gone: dict[tuple[str, str], float] = {}  # (container, network) -> removed at
    held: dict[tuple[str, str, str], bool] = {}  # (host, network, container) -> live
    with (folder / "events.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            kind, t = r["kind"], float(r["t"])
            if kind in ("node_start", "node_restart", "node_join"):
                up[r["subject"]] = True
            elif kind in ("node_crash", "node_leave"):
                up[r["subject"]] = False
            elif kind in ("net_attach", "net_detach"):
                on_net[(r["node"], r["network"])] = kind == "net_attach"
            elif kind == "container_attach":
                home[(r["subject"], r["network"])] = r["node"]
                gone.pop((r["subject"], r["network"]), None)
            elif kind == "container_detach":
                home.pop((r["subject"], r["network"]), None)
                gone[(r["subject"], r["network"])] = t
            elif kind == "entry_held":
                held[(r["node"], r["network"], r["key"])] = r["op"] == "add"
    return end, up, on_net, home, gone, held


def stale_entries(folder: Path) -> int:
    """(host, container) pairs where a host running and on the network at the end still
    holds, live, the endpoint of a container removed from it at least ``STALE_AFTER_S``
    before the end. From ``events.csv`` (its ``entry_held`` rows: runs of at most 64 hosts).
    """
    end, up, on_net, _, gone, held = _held_at_end(folder)
    return sum(
        1
        for (host, net, key), live in held.items()
        if live
        and gone.get((key, net), end) <= end - STALE_AFTER_S
        and up.get(host, False)
        and on_net.get((host, net), False)
    )


def resurrected_entries(folder: Path) -> int:
    """(host, container) pairs where a host made a removed container's endpoint live
    again after the container's delete had reached it (an ``entry_held`` delete, then an
    add). Only containers removed for good count, so a legitimate re-attach under the
    same name never does. From ``events.csv`` (runs of at most 64 hosts)."""
    removed: dict[tuple[str, str], float] = {}  # (container, network) -> removed at
    seen_delete: set[tuple[str, str, str]] = set()
    back: set[tuple[str, str, str]] = set()
    rows = []
    with (folder / "events.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            if r["kind"] == "container_attach":
                removed.pop((r["subject"], r["network"]), None)
            elif r["kind"] == "container_detach":
                removed[(r["subject"], r["network"])] = float(r["t"])
            elif r["kind"] == "entry_held":
                rows.append(r)
    for r in rows:  # in time order
        key = (r["node"], r["network"], r["key"])
        if (r["key"], r["network"]) not in removed:
            continue
        if r["op"] == "delete":
            seen_delete.add(key)
        elif key in seen_delete:
            back.add(key)
    return len(back)


def missing_entries(folder: Path) -> int:
    """(host, container) pairs where a host running and on the network at the end does
    not hold the endpoint of a container attached there (on another running host) at
    the end. From ``events.csv`` (``entry_held`` rows: runs of at most 64 hosts)."""
    end, up, on_net, home, _, held = _held_at_end(folder)
    hosts = [h for h, is_up in up.items() if is_up]
    missing = 0
    for (key, net), owner in home.items():
        if not up.get(owner, False):
            continue
        for host in hosts:
            if host != owner and on_net.get((host, net), False):
                missing += not held.get((host, net, key), False)
    return missing


CASES: tuple[Case, ...] = (
    Case(
        id="heal-flapping",
        source="issue 12",
        backend="sim",
        symptom="false positives outside partitions",
        value=lambda m, folder: float(m["false_positives"]),
        reproduced_above=100,
        absent_at_most=25,
    ),
    Case(
        id="quick-restart",
        source="moby#47728",
        backend="sim",
        symptom="endpoint commits never seen by every peer",
        value=_unconverged,
    ),
    Case(
        id="ip-reuse",
        source="moby#35401",
        backend="sim",
        symptom="container pairs unreachable at the end",
        value=_unreachable,
    ),
    Case(
        id="add-after-delete",
        source="moby#33789",
        backend="sim",
        symptom="removed containers made live again after their delete",
        value=_from_folder(resurrected_entries),
    ),
    Case(
        id="leave-rejoin",
        source="moby#47728/#50342",
        backend="sim",
        symptom="live containers missing from a peer at the end",
        value=_from_folder(missing_entries),
    ),
    Case(
        id="underlay-mtu",
        source="libnetwork#2661",
        backend="emu",
        symptom="full-MTU echoes lost (of 10)",
        value=_full_size_lost,
    ),
    Case(
        id="esp-seq-exhaustion",
        source="moby#52005",
        backend="emu",
        symptom="encrypted probe echoes lost (16 per SA)",
        value=_from_folder(probe_echoes_lost),
    ),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One case run under both variants."""

    case: Case
    docker: float | None
    default: float | None
    error: str = ""

    @property
    def reproduced(self) -> bool:
        return self.docker is not None and self.docker > self.case.reproduced_above

    @property
    def absent(self) -> bool:
        return self.default is not None and self.default <= self.case.absent_at_most

    @property
    def ok(self) -> bool:
        return not self.error and self.reproduced and self.absent


def scenario_path(case: Case) -> Path:
    for d in SCENARIO_DIRS:
        p = d / case.scenario
        if p.is_file():
            return p
    raise FileNotFoundError(f"{case.scenario}: not found in {', '.join(map(str, SCENARIO_DIRS))}")


def run_case(case: Case, out: Path) -> Outcome:
    """Run ``case`` under ``docker`` and ``overlaysim``; results in ``out/<id>/<variant>``."""
    from overlaysim.scenario.loader import load_scenario

    values: dict[str, float] = {}
    for variant in ("docker", "overlaysim"):
        sc = load_scenario(scenario_path(case), [f"protocol.variant={variant}"])
        dest = out / case.id / variant
        if case.backend == "sim":
            from overlaysim.sim.runner import run_simulation as run
        else:
            from overlaysim.emu.runner import run_emulation as run
        status = run(sc, dest, seed=sc.seed, progress=False)
        if status != "complete":
            return Outcome(case, values.get("docker"), None, f"{variant} run {status}")
        metrics = json.loads((dest / "metrics.json").read_text())
        values[variant] = case.value(metrics, dest)
    return Outcome(case, values["docker"], values["overlaysim"])


def table(outcomes: list[Outcome]) -> str:
    """The printed report: one row per case."""
    rows = [("case", "source", "symptom", "docker", "default", "")]
    for o in outcomes:
        d = "-" if o.docker is None else f"{o.docker:g}"
        f = "-" if o.default is None else f"{o.default:g}"
        rows.append(
            (
                o.case.id,
                o.case.source,
                o.case.symptom,
                f"{d} ({'reproduced' if o.reproduced else 'NOT reproduced'})",
                f"{f} ({'absent' if o.absent else 'PRESENT'})",
                o.error or ("ok" if o.ok else "FAIL"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
