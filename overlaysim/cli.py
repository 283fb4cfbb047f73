"""The ``overlaysim`` command line.

The root parser, ``main`` and its error handling. Each subcommand is a thin wrapper
(parse, call the library, print) registered by the module of its concept: the scenario
commands (:mod:`overlaysim.run_cli`), the results commands (:mod:`overlaysim.results_cli`),
the machine commands (:mod:`overlaysim.host_cli`), the testbed's Docker-style commands
(:mod:`overlaysim.testbed_cli`) and ``service`` (:mod:`overlaysim.service_cli`). Heavy
imports are done inside the handlers so ``overlaysim --help`` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from overlaysim import __version__

_EPILOG = """\
quick start:
  overlaysim validate scenarios/quickstart.yaml
  overlaysim sim scenarios/quickstart.yaml --out results/qs
  overlaysim report results/qs

scale it up without editing the file:
  overlaysim sim scenarios/scale-1000.yaml --set topology.hosts=2000 --set events=[]

every subcommand has its own --help with examples.
"""


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

    from overlaysim.host_cli import register as register_host
    from overlaysim.results_cli import register as register_results
    from overlaysim.run_cli import register as register_run
    from overlaysim.service_cli import register as register_service
    from overlaysim.testbed_cli import register as register_testbed

    # The order of registration is the order ``overlaysim --help`` lists the commands in.
    register_run(sub)
    register_results(sub)
    register_host(sub)
    register_testbed(sub)
    register_service(sub)
    return parser


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
