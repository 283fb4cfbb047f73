"""The results commands: ``report``, ``compare`` and ``animate`` read results folders.

They never run anything: they summarise, plot, compare and animate what a run wrote
(simulator and emulation folders alike). :mod:`overlaysim.cli` registers them.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report``, ``compare`` and ``animate``."""
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
