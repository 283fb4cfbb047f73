"""The machine commands: ``doctor``, ``clean`` and ``lab`` act on this host's kernel.

``doctor`` probes what the kernel can do, ``clean`` removes what crashed runs left, and
``lab`` opens the workshop testbed. :mod:`overlaysim.cli` registers them.
"""

from __future__ import annotations

import argparse

from overlaysim.agent import names


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``doctor``, ``clean`` and ``lab``."""
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
        "check a running lab from another terminal (each step of guided lab 1-6, with hints):\n"
        "  sudo overlaysim lab check 2 [--json | --csv]\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("topology", help="a topology YAML file (see topologies/), or 'check'")
    p.add_argument("lab_number", nargs="?", metavar="LAB", help="with 'check': a lab, 1-6")
    p.add_argument("--profile", default="lan", choices=["lan", "wan", "local"])
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="fmt", action="store_const", const="json", help="with check")
    fmt.add_argument("--csv", dest="fmt", action="store_const", const="csv", help="with check")
    p.set_defaults(func=_cmd_lab)


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
