"""The ``overlaysim`` command line.

Each subcommand is a thin wrapper: parse, call the library, print. Heavy imports are
done inside the handlers so ``overlaysim --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from overlaysim import __version__
from overlaysim.agent import names

_EPILOG = """\
quick start:
  overlaysim validate scenarios/quickstart.yaml
  overlaysim sim scenarios/quickstart.yaml --out results/qs
  overlaysim report results/qs

scale it up without editing the file:
  overlaysim sim scenarios/scale-1000.yaml --set topology.hosts=2000 --set events=[]

every subcommand has its own --help with examples.
"""


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", type=Path, help="scenario YAML file (see docs/scenarios.md)")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: results/<scenario>-<backend>-s<seed>)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a scenario field; VALUE is parsed as YAML "
        "(e.g. topology.hosts=5000, events.0.percent=10, events=[]); repeatable",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.add_argument("--no-plots", action="store_true", help="do not draw plots after the run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overlaysim",
        description="A testbed for Docker-style overlay networks (VXLAN + SWIM gossip): "
        "simulate a scenario at thousands of nodes, or emulate it with real agents in Mininet.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"overlaysim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "validate",
        help="check a scenario file without running it",
        description="Parse and validate a scenario. Every problem is reported with the file, "
        "the field path, the value and what was expected; exit status 2 when invalid.",
        epilog="example:\n  overlaysim validate scenarios/churn.yaml --set events.0.rate_per_s=20\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE")
    p.add_argument("--show", action="store_true", help="print the resolved scenario as YAML")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "known-issues",
        help="reproduce Docker's documented overlay failures under both protocol variants",
        description="Run each case of scenarios/known-issues/ under protocol.variant=docker "
        "and under the default, and print case, source, symptom, the value under docker "
        "('reproduced' when the symptom shows) and by default ('absent' when it does not). "
        "Exit status 0 only when every case behaves that way. See docs/known-issues.md.",
        epilog="examples:\n  overlaysim known-issues\n"
        "  overlaysim known-issues --only quick-restart --out results/ki\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=("sim", "emu"), default="sim")
    p.add_argument("--only", metavar="ID", help="run one case")
    p.add_argument("--out", type=Path, default=Path("results") / "known-issues")
    p.set_defaults(func=_cmd_known_issues)

    p = sub.add_parser(
        "sim",
        help="run a scenario on the SimPy simulator",
        description="Run a scenario in virtual time: the same protocol cores as the live "
        "agent, one per host, over a NetworkX model of the underlay. Same seed, same "
        "results, byte for byte. Writes a results folder (manifest.json, events.csv, "
        "convergence.csv, traffic.csv, metrics.json, plots/).",
        epilog="examples:\n"
        "  overlaysim sim scenarios/quickstart.yaml\n"
        "  overlaysim sim scenarios/scale-1000.yaml --seed 3 --out results/s1000\n"
        "  overlaysim sim scenarios/loss-sweep.yaml --set events.0.percent=20\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_args(p)
    p.set_defaults(func=_cmd_sim)

    p = sub.add_parser(
        "sweep",
        help="run a scenario over a grid of overrides x seeds (resumable, parallel)",
        description="Run every combination of the --grid values, once per seed, each in "
        "OUT/<point>/seed-<s>/ (a results folder like 'sim' writes). Runs whose manifest "
        "says complete are skipped, so re-running the same command resumes a sweep. "
        "Every point is validated before anything runs. OUT/index.csv gets one row per "
        "run: grid values, seed, status, path and the scalar metrics. See docs/sweeps.md.",
        epilog="examples:\n"
        "  overlaysim sweep scenarios/loss-sweep.yaml --grid events.0.percent=0,5,10 --seeds 5\n"
        "  overlaysim sweep scenarios/quickstart.yaml --grid topology.hosts=20,50 \\\n"
        "      --grid profile=lan,wan --seed-list 1,2,3 --out results/qs-sweep --jobs 4\n"
        "  overlaysim sweep scenarios/scale-1000.yaml --grid topology.hosts=1000,2000 \\\n"
        "      --seeds 3 --executor dask://scheduler:8786\n"
        "  sudo overlaysim sweep scenarios/churn.yaml --backend emu --grid topology.hosts=5,10\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", type=Path, help="scenario YAML file (see docs/scenarios.md)")
    p.add_argument(
        "--grid",
        dest="grids",
        action="append",
        default=[],
        metavar="PATH=V1,V2,...",
        help="a scenario field and the values to sweep (YAML; commas inside [...] stay); "
        "repeatable, the points are the cartesian product",
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, metavar="K", help="seeds 0..K-1 (1)")
    seeds.add_argument("--seed-list", default=None, metavar="S1,S2,...", help="explicit seeds")
    p.add_argument("--backend", choices=("sim", "emu"), default="sim", help="default: sim")
    p.add_argument(
        "--out", type=Path, default=None, help="sweep folder (default: results/sweep-<scenario>)"
    )
    p.add_argument(
        "--jobs", type=int, default=None, help="parallel runs (default: CPU count; 1 for emu)"
    )
    p.add_argument(
        "--executor",
        default="local",
        metavar="local|dask-local|dask://HOST:PORT",
        help="local process pool (default), a Dask LocalCluster, or a Dask scheduler",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a scenario field for every point (YAML value); repeatable",
    )
    p.add_argument("--plots", action="store_true", help="also draw each run's plots (slower)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "run",
        help="run a scenario on Mininet, or a container on the running testbed",
        description="Two forms, as the arguments say:\n\n"
        "  overlaysim run SCENARIO [--seed N] [--out DIR] [--set k=v ...]\n"
        "      play a scenario on a Mininet underlay with one real agent per host and the\n"
        "      kernel VXLAN data plane; writes the same results folder as 'sim'. Needs root.\n\n"
        "  overlaysim run --name C --network N [--network N2] [--ip IP] HOST\n"
        "      start a standalone container on HOST of the testbed started by\n"
        "      'overlaysim up' (like 'docker run --network'; needs attachable networks).",
        epilog="examples:\n"
        "  sudo overlaysim run scenarios/quickstart.yaml\n"
        "  sudo overlaysim run scenarios/churn.yaml --set topology.hosts=10 --out results/churn-emu\n"
        "  sudo overlaysim run --name c1 --network web h1\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="a scenario file, or with --name: a host of the testbed")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--out", type=Path, default=None, help="results folder")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a scenario field (YAML value); repeatable",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display or summary")
    p.add_argument("--no-plots", action="store_true", help="do not draw plots after the run")
    p.add_argument("--name", help="container form: the container's name")
    p.add_argument("--network", action="append", dest="networks", default=[], help="container form")
    p.add_argument("--ip", help="container form: a fixed address (one network only)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "report",
        help="summarise a results folder and redraw its plots",
        description="Print the summary table of a results folder and redraw plots/.",
        epilog="examples:\n  overlaysim report results/quickstart\n"
        "  overlaysim report results/quickstart --html\n"
        "  overlaysim report results/quickstart --no-plots --html /tmp/quickstart.html\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", type=Path)
    p.add_argument("--no-plots", action="store_true", help="do not redraw plots")
    p.add_argument(
        "--html",
        nargs="?",
        const=True,
        default=None,
        metavar="PATH",
        help="also write one self-contained HTML page (default: RESULTS/report.html)",
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "compare",
        help="compare two results folders (e.g. simulator vs emulation)",
        description="Compare the distributions of two runs (e.g. simulator vs emulation):\n"
        "endpoint convergence latency (overall and per op), crash detection (first\n"
        "suspicion, all dead) and join visibility, with n, median and p95 per side and a\n"
        "two-sample Kolmogorov-Smirnov test: 'agree' when p >= alpha, 'differ' otherwise,\n"
        "'too few samples' below 5 values on a side. Overhead and false positives are\n"
        "shown as ratios B/A. Writes compare.json and compare.png (see docs/compare.md).",
        epilog="examples:\n"
        "  overlaysim compare results/quickstart-sim-s7 results/quickstart-emu-s7\n"
        "  overlaysim compare results/a results/b --alpha 0.01 --out results/a-vs-b\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="reference results folder")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="results folder compared with A")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write compare.json and compare.png (default: RUN_B/compare-with-<A>)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.05, help="significance level of the KS tests (0.05)"
    )
    p.add_argument(
        "--since",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="timing samples only from events at or after this scenario time, e.g. past "
        "a boot burst (default 0: every event; scalars are always over the whole run)",
    )
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "animate",
        help="animate a run on its topology: an entry spreading, a crash detected, a join",
        description="Draw the run's topology and animate, from its own events.csv, who holds "
        "an endpoint entry (--entry), who suspects and declares dead a crashed host "
        "(--crash) or who knows a joining or restarted host (--join), with a clock, the "
        "scenario's impairments on the links and the convergence time once reached. "
        "Simulator and emulation folders alike (entries: runs of at most 64 hosts). "
        "Writes a GIF or one self-contained HTML page.",
        epilog="examples:\n"
        "  overlaysim animate results/qs --entry c2 --network web --out c2.gif\n"
        "  overlaysim animate results/qs --crash h4 --out h4-crash.html\n"
        "  overlaysim animate results/qs --join h4 --out h4-join.gif --fps 2\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("results", type=Path, metavar="RUN", help="a results folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--entry", metavar="KEY", help="an endpoint entry (container name)")
    what.add_argument("--crash", metavar="HOST", help="a host that crashed in the run")
    what.add_argument("--join", metavar="HOST", help="a host that joined or restarted")
    p.add_argument("--network", metavar="N", help="the entry's network (default: first by name)")
    p.add_argument("--out", type=Path, required=True, help="FILE.gif or FILE.html")
    p.add_argument("--fps", type=int, default=4, help="frames per second (4)")
    p.set_defaults(func=_cmd_animate)

    p = sub.add_parser(
        "doctor",
        help="show what this machine can do (root, Mininet, vxlan, netem, ESP, ...)",
        description="Probe the kernel and tools non-destructively (in a throwaway namespace) "
        "and print what is present, what is missing, and what each missing piece disables.",
        epilog="example:\n  sudo overlaysim doctor\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--remeasure",
        action="store_true",
        help="measure the delay line's ceiling again (it is cached until reboot)",
    )
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser(
        "clean",
        help="remove leftovers of crashed runs (like mn -c, but only what overlaysim created)",
        description="Remove processes, namespaces, links and nft tables left by runs that "
        "died: only objects recorded under /run/overlaysim or named with the project's "
        f"'{names.PREFIX}' prefix. Live runs are left alone.",
        epilog="examples:\n  sudo overlaysim clean --dry-run\n  sudo overlaysim clean\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(func=_cmd_clean)

    p = sub.add_parser(
        "lab",
        help="workshop mode: a testbed plus a Mininet CLI with overlay commands (docs/labs/)",
        description="Bring up TOPOLOGY like 'overlaysim up' (underlay, one agent per host, "
        "manager on the first host), then open a Mininet CLI that also has overlay commands: "
        "network create/ls, run, rm, 'C1 ping C2', members, tables, fdb, capture, crypto, rotate, loss, "
        "partition, heal, crash, restart. Leaving it (exit, Ctrl-D, Ctrl-C at the prompt) "
        "removes everything. The guided labs are in docs/labs/. Needs root.",
        epilog="example:\n  sudo overlaysim lab topologies/star.yaml\n"
        "  overlay> network create web --attachable\n"
        "  overlay> run c1 web h1\n"
        "  overlay> check 1\n\n"
        "check a running lab from another terminal (each step of guided lab 1-5, with hints):\n"
        "  sudo overlaysim lab check 2 [--json | --csv]\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("topology", help="a topology YAML file (see topologies/), or 'check'")
    p.add_argument("lab_number", nargs="?", metavar="LAB", help="with 'check': a lab, 1-5")
    p.add_argument("--profile", default="lan", choices=["lan", "wan", "local"])
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="fmt", action="store_const", const="json", help="with check")
    fmt.add_argument("--csv", dest="fmt", action="store_const", const="csv", help="with check")
    p.set_defaults(func=_cmd_lab)

    from overlaysim.service_cli import register as register_service
    from overlaysim.testbed_cli import register

    register(sub)
    register_service(sub)
    return parser


def _cmd_lab(args: argparse.Namespace) -> int:
    if args.topology == "check":
        from overlaysim.errors import UserError
        from overlaysim.lab.check import LiveProbe, check_lab, parse_lab, render

        if args.lab_number is None:
            raise UserError("lab check: which lab? e.g. overlaysim lab check 2")
        number = parse_lab(args.lab_number)
        results = check_lab(LiveProbe(), number)
        print(render(results, args.fmt or "text"))
        return 0 if all(r.passed for r in results) else 1
    if args.lab_number is not None or args.fmt is not None:
        from overlaysim.errors import UserError

        raise UserError("lab: LAB, --json and --csv go with 'overlaysim lab check LAB'")
    from overlaysim.lab.cli import main as lab_main

    return lab_main(args)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from rich.console import Console

    from overlaysim.emu.capabilities import format_report, probe
    from overlaysim.emu.delay import doctor_lines

    caps = probe()
    Console().print(format_report(caps))
    missing = [name for name, cap in caps.items() if not cap.ok]
    if missing:
        print(f"missing: {', '.join(missing)} (see the 'disables' column)")
    for line in doctor_lines(caps, remeasure=getattr(args, "remeasure", False)):
        print(line)
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    from overlaysim.emu.clean import clean

    removed = clean(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} object(s)")
    return 0


def _default_out(name: str, backend: str, seed: int) -> Path:
    return Path("results") / f"{name}-{backend}-s{seed}"


def _cmd_validate(args: argparse.Namespace) -> int:
    from overlaysim.scenario.loader import load_scenario
    from overlaysim.world.dryrun import dry_run

    sc = load_scenario(args.scenario, args.overrides)
    world = dry_run(sc, source=str(args.scenario))  # raises naming every refusal
    if args.show:
        import yaml

        print(yaml.safe_dump(sc.resolved(), sort_keys=False))
    for s in world.skipped:
        subject = s.get("host") or s.get("container") or ""
        subject = f" {subject}" if subject else ""
        print(f"{args.scenario}: note: at {s['t']:g} s {s['action']}{subject} would be skipped: "
              f"{s['reason']}")  # fmt: skip
    print(
        f"{args.scenario}: valid scenario {sc.name!r} "
        f"(dry run: {world.done} steps, {len(world.containers)} containers at the end)"
    )
    return 0


def _run_scenario(args: argparse.Namespace, path: Path, backend: str) -> int:
    """Load, run on ``backend`` (sim or emu), print the summary; exit status 0 if complete."""
    from overlaysim.scenario.loader import load_scenario
    from overlaysim.world.dryrun import dry_run

    sc = load_scenario(path, args.overrides)
    seed = sc.seed if args.seed is None else args.seed
    dry_run(sc, source=str(path), seed=seed)  # refuse before anything is created
    out = args.out or _default_out(sc.name, backend, seed)
    if backend == "sim":
        from overlaysim.sim.runner import run_simulation as run
    else:
        from overlaysim.emu.runner import run_emulation as run
    status = run(sc, out, seed=seed, progress=not args.quiet)
    if not args.no_plots:
        from overlaysim.metrics.results import load_run
        from overlaysim.report.plots import write_plots

        write_plots(load_run(out), out / "plots")
    if not args.quiet:
        from overlaysim.metrics.results import load_run
        from overlaysim.report.summary import print_summary

        print_summary(load_run(out))
        print(f"results: {out}")
    else:  # no summary, but a run whose numbers cannot be trusted still says so
        from overlaysim.metrics.results import load_run
        from overlaysim.report.summary import run_warnings

        for warning in run_warnings(load_run(out)):
            print(f"warning: {warning}", file=sys.stderr)
    return 0 if status == "complete" else 1


def _cmd_known_issues(args: argparse.Namespace) -> int:
    from overlaysim.known_issues import CASES, run_case, table

    cases = [c for c in CASES if c.backend == args.backend]
    if args.only:
        cases = [c for c in cases if c.id == args.only]
        if not cases:
            known = ", ".join(c.id for c in CASES if c.backend == args.backend) or "none"
            print(f"--only: no {args.backend} case {args.only!r}; expected one of {known}")
            return 2
    if not cases:
        print(f"no {args.backend} cases yet (see docs/known-issues.md)")
        return 1
    outcomes = []
    for case in cases:
        print(f"running {case.id} ({case.source}) under docker and overlaysim ...", flush=True)
        outcomes.append(run_case(case, args.out))
    print(table(outcomes))
    print(f"results: {args.out}")
    return 0 if all(o.ok for o in outcomes) else 1


def _cmd_sim(args: argparse.Namespace) -> int:
    return _run_scenario(args, args.scenario, "sim")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from overlaysim.scenario.loader import load_scenario
    from overlaysim.sweep import (
        check_executor,
        parse_grid,
        parse_seed_list,
        plan_sweep,
        run_sweep,
        seeds_from,
    )

    check_executor(args.executor, args.backend, args.jobs)
    grids = [parse_grid(g) for g in args.grids]
    listed = parse_seed_list(args.seed_list) if args.seed_list is not None else None
    seeds = seeds_from(args.seeds, listed)
    out = args.out or Path("results") / f"sweep-{load_scenario(args.scenario, args.overrides).name}"
    plan = plan_sweep(
        args.scenario,
        grids,
        seeds,
        out,
        base_overrides=args.overrides,
        backend=args.backend,
        plots=args.plots,
    )
    result = run_sweep(plan, jobs=args.jobs, executor=args.executor, progress=not args.quiet)
    if not args.quiet:
        print(
            f"{len(plan.tasks)} runs: {result.done} done, {result.skipped} skipped, "
            f"{result.failed} failed"
        )
        for o in result.ran:
            if o.status != "complete":
                print(f"  {o.point_id}/seed-{o.seed}: {o.status} {o.error or ''}".rstrip())
        print(f"index: {result.index}")
    return 0 if result.ok else 1


def _cmd_run(args: argparse.Namespace) -> int:
    if args.name:
        from overlaysim.testbed_cli import run_container

        return run_container(args)
    if args.networks or args.ip:
        from overlaysim.errors import UserError

        raise UserError("--network/--ip belong to the container form: add --name NAME")
    return _run_scenario(args, Path(args.target), "emu")


def _cmd_report(args: argparse.Namespace) -> int:
    from overlaysim.metrics.results import load_run
    from overlaysim.report.plots import write_plots
    from overlaysim.report.summary import print_summary

    run = load_run(args.results)
    print_summary(run)
    if not args.no_plots:
        paths = write_plots(run, args.results / "plots")
        for p in paths:
            print(f"plot: {p}")
    if args.html is not None:
        from overlaysim.report.html import write_html

        dest = write_html(run, None if args.html is True else Path(args.html))
        print(f"html: {dest}")
    return 0


def _cmd_animate(args: argparse.Namespace) -> int:
    from overlaysim.metrics.results import load_run
    from overlaysim.report.animate import write_animation
    from overlaysim.report.story import build_story

    try:
        run = load_run(args.results)
    except FileNotFoundError as exc:
        from overlaysim.errors import UserError

        raise UserError(str(exc)) from None
    story = build_story(
        run, entry=args.entry, crash=args.crash, join=args.join, network=args.network
    )
    out = write_animation(story, args.out, fps=args.fps)
    print(f"{story.title}: {len(story.frames)} frames, {story.t_start:.2f}-{story.t_end:.2f} s")
    print(f"wrote: {out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from overlaysim.report.compare import compare_runs, load_comparable
    from overlaysim.report.compare_output import (
        comparison_table,
        default_out_dir,
        write_comparison,
    )

    a, b = load_comparable(args.run_a), load_comparable(args.run_b)
    comparison = compare_runs(a, b, alpha=args.alpha, since=args.since)
    console = Console()
    console.print(comparison_table(comparison))
    for w in comparison.warnings:
        console.print(f"[yellow]warning: {w}[/]")
    console.print(f"[bold]{comparison.overall_line()}[/]")
    out = args.out or default_out_dir(args.run_a, args.run_b)
    for p in write_comparison(comparison, out):
        print(f"wrote: {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from overlaysim.errors import RunFailed, user_error_types

    try:
        return args.func(args)
    except user_error_types() as exc:
        print(f"overlaysim: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"overlaysim: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("overlaysim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A bug, not the user's doing: one line, and the traceback only when asked for.
        if os.environ.get("OVERLAYSIM_DEBUG"):
            raise
        print(
            f"overlaysim: error: {type(exc).__name__}: {one_line(exc)} "
            "(an internal error; OVERLAYSIM_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
