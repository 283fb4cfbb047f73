"""The scenario commands: ``validate``, ``known-issues``, ``sim``, ``sweep`` and ``run``.

Each checks a scenario (a dry run of the world) before anything is created, then runs it
on a backend and writes a results folder; :mod:`overlaysim.cli` registers them first.
Heavy imports are done inside the handlers so ``overlaysim --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from overlaysim import corebuild


def _add_overrides(p: argparse.ArgumentParser, help: str | None) -> None:
    """``--set PATH=VALUE`` (repeatable), read by :func:`load_scenario` as ``overrides``."""
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE", help=help
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of one scenario run, the same on both backends (``sim``, ``run``)."""
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: results/<scenario>-<backend>-s<seed>)",
    )
    _add_overrides(
        p,
        "override a scenario field; VALUE is parsed as YAML "
        "(e.g. topology.hosts=5000, events.0.percent=10, events=[]); repeatable",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.add_argument("--no-plots", action="store_true", help="do not draw plots after the run")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``validate``, ``known-issues``, ``sim``, ``sweep`` and ``run``."""
    p = sub.add_parser(
        "validate",
        help="check a scenario file without running it",
        description="Parse and validate a scenario. Every problem is reported with the file, "
        "the field path, the value and what was expected; exit status 2 when invalid.",
        epilog="example:\n  overlaysim validate scenarios/churn.yaml --set events.0.rate_per_s=20\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", type=Path)
    _add_overrides(p, None)
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
        "  overlaysim sim scenarios/loss-sweep.yaml --set events.0.percent=20\n"
        "  make compiled && overlaysim sim scenarios/scale-2000.yaml --core compiled\n\n"
        "exit status: 0 complete, 130 interrupted (Ctrl-C; the folder is marked so),\n"
        "1 failed, 2 invalid input.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", type=Path, help="scenario YAML file (see docs/scenarios.md)")
    _add_run_options(p)
    p.add_argument(
        "--core",
        choices=corebuild.CHOICES,
        default="python",
        help="which build of the table layer and queue runs: the Python sources "
        "(default), the optional build of `make compiled` (refused when missing or built "
        "from other sources), or auto (the build when it is usable). Same results folder "
        "either way; see docs/scale.md",
    )
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
    _add_overrides(p, "override a scenario field for every point (YAML value); repeatable")
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
        "  sudo overlaysim run --name c1 --network web h1\n\n"
        "exit status (scenario form): 0 complete, 130 interrupted (Ctrl-C, SIGTERM; the\n"
        "folder is marked so and holds what was collected), 1 failed, 2 invalid input.\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="a scenario file, or with --name: a host of the testbed")
    _add_run_options(p)  # the scenario form's, as for sim
    p.add_argument("--name", help="container form: the container's name")
    p.add_argument("--network", action="append", dest="networks", default=[], help="container form")
    p.add_argument("--ip", help="container form: a fixed address (one network only)")
    p.set_defaults(func=_cmd_run)


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
    """Load, run on ``backend`` (sim or emu), print the summary. Exit status 0 if the
    run completed, 130 if it was interrupted (Ctrl-C, SIGTERM), 1 if it failed."""
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

        done = load_run(out)
        for warning in run_warnings(done):
            print(f"warning: {warning}", file=sys.stderr)
        if status != "complete":  # the one line a quiet run owes its user
            cause = done.manifest.get("error")
            print(
                f"overlaysim: run {status}{f': {cause}' if cause else ''}; "
                f"what it collected is in {out}",
                file=sys.stderr,
            )
    return {"complete": 0, "interrupted": 130}.get(status, 1)


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
    try:
        corebuild.install(args.core)  # before the protocol core is imported
    except corebuild.CoreBuildError as exc:
        print(f"overlaysim: error: {exc}", file=sys.stderr)
        return 2
    if args.core != "python" and not args.quiet:
        print(corebuild.describe(), file=sys.stderr)
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
