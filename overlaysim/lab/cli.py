"""``overlaysim lab``: a Mininet CLI with overlay commands.

:class:`LabCLI` adds the workshop commands to Mininet's own (``nodes``, ``h1 ip addr``,
``sh``, ``py``, ``source``...). It only parses arguments and prints: the work is done by
:mod:`overlaysim.lab.commands`. Ctrl-C while a command runs interrupts that command;
Ctrl-C at the prompt, ``exit`` and Ctrl-D end the lab, and the caller tears it down.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from mininet.cli import CLI
from mininet.net import Mininet

from overlaysim.errors import user_error_types
from overlaysim.lab import commands as lab_cmds
from overlaysim.lab.commands import Lab, LabError

_INTRO = """\
overlay commands (type 'help NAME' for details):
  network create NAME [--subnet S] [--attachable] [--opt encrypted]   network ls
  run C NET HOST     rm C     C1 ping C2 [COUNT]
  members HOST       tables HOST     fdb HOST [NET]     capture HOST [COUNT] [while C1 ping C2]
  crypto HOST        rotate (or: keys rotate)
  loss PERCENT       partition h1,h2 h3,h4     heal     crash HOST     restart HOST
  check LAB [--json|--csv]   (did you do guided lab LAB, 1-6? each step, with a hint)
plus Mininet's own: nodes, h1 ip addr, sh CMD, py EXPR, source FILE, exit (or Ctrl-D)"""


class _Refused(Exception):
    """Bad arguments; argparse's message, without exiting the CLI."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Refused(f"{self.prog}: {message} (usage: {self.format_usage().strip()[7:]})")


class _Net(dict[str, Any]):
    """What Mininet's CLI expects of a ``Mininet`` object, over the underlay's hosts.

    Keys are the topology's host names (``h1``), so ``h1 ip addr`` and ``h1 ping h2``
    work as in Mininet. ``pingall`` borrows Mininet's own implementation.
    """

    pingAll = Mininet.pingAll  # noqa: N815 - Mininet's names
    ping = Mininet.ping
    _parsePing = staticmethod(Mininet._parsePing)  # noqa: N815

    def __init__(self, lab: Lab) -> None:
        super().__init__({h: lab.underlay.host(h) for h in lab.hosts})
        self.hosts = list(self.values())
        self.switches: list[Any] = []
        self.links: list[Any] = []
        self.terms: list[Any] = []
        self.nameToNode = self  # noqa: N815


class LabCLI(CLI):
    """Mininet's CLI plus the overlay commands; runs until ``exit``, Ctrl-D or Ctrl-C."""

    prompt = "overlay> "

    def __init__(self, lab: Lab, stdin: Any = sys.stdin, script: str | None = None) -> None:
        self.lab = lab
        self._busy = False
        super().__init__(_Net(lab), stdin=stdin, script=script)

    # -- loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Mininet's loop, except that Ctrl-C at the prompt ends the lab."""
        print(_INTRO)
        while True:
            try:
                self.cmdloop()
                return
            except KeyboardInterrupt as exc:
                if not self._busy or str(exc).startswith("signal"):
                    print("\nleaving the lab")
                    return
                print("\ninterrupted")
            finally:
                self._busy = False

    def precmd(self, line: str) -> str:
        self._busy = True
        return super().precmd(line)

    def postcmd(self, stop: bool, line: str) -> bool:
        self._busy = False
        return stop

    def onecmd(self, line: str) -> bool:
        """One command; an unexpected failure is printed instead of ending the lab."""
        try:
            return bool(super().onecmd(line))
        except Exception as exc:  # noqa: BLE001 - the session must survive a bad command
            print(f"*** {line.split()[0] if line.split() else line}: {type(exc).__name__}: {exc}")
            return False

    def _do(self, fn: Callable[[], str]) -> None:
        try:
            print(fn())
        except _Refused as exc:
            print(f"*** {exc}")
        except user_error_types() as exc:
            print(f"*** error: {exc}")

    # -- overlay commands -------------------------------------------------------------------

    def do_network(self, line: str) -> None:
        """network create NAME [--subnet S] [--attachable] [--opt encrypted] | network ls
        Create an overlay network through the manager (VNI and subnet allocated unless
        given), or list the networks."""

        def go() -> str:
            args = shlex.split(line)
            if args[:1] == ["ls"] and len(args) == 1:
                return lab_cmds.network_ls(self.lab)
            if args[:1] != ["create"]:
                raise _Refused(
                    "usage: network create NAME [--subnet S] [--attachable] [--opt encrypted] | ls"
                )
            p = _Parser(prog="network create", add_help=False)
            p.add_argument("name")
            p.add_argument("--subnet")
            p.add_argument("--attachable", action="store_true")
            p.add_argument("--opt", "-o", action="append", default=[], metavar="encrypted")
            a = p.parse_args(args[1:])
            unknown = [o for o in a.opt if o.partition("=")[0] != "encrypted"]
            if unknown:
                raise _Refused(f"--opt {unknown[0]}: unknown option; supported: encrypted")
            enc = any(o.partition("=")[2] in ("", "true", "1") for o in a.opt)
            return lab_cmds.network_create(
                self.lab, a.name, subnet=a.subnet, attachable=a.attachable, encrypted=enc
            )

        self._do(go)

    def do_run(self, line: str) -> None:
        """run CONTAINER NETWORK HOST
        Start a container on HOST attached to NETWORK (it must be attachable)."""
        a = self._args(line, "run", ["container", "network", "host"])
        if a is not None:
            self._do(lambda: lab_cmds.run(self.lab, a.container, a.network, a.host))

    def do_rm(self, line: str) -> None:
        """rm CONTAINER
        Remove a container: its endpoint entries are deleted everywhere."""
        a = self._args(line, "rm", ["container"])
        if a is not None:
            self._do(lambda: lab_cmds.rm(self.lab, a.container))

    def do_members(self, line: str) -> None:
        """members HOST
        HOST's membership view (SWIM): state and incarnation of every node."""
        a = self._args(line, "members", ["host"])
        if a is not None:
            self._do(lambda: lab_cmds.members(self.lab, a.host))

    def do_tables(self, line: str) -> None:
        """tables HOST
        HOST's gossip tables: the endpoint entries it holds, per network."""
        a = self._args(line, "tables", ["host"])
        if a is not None:
            self._do(lambda: lab_cmds.tables(self.lab, a.host))

    def do_fdb(self, line: str) -> None:
        """fdb HOST [NETWORK]
        The FDB (MAC -> remote VTEP) and neighbour (IP -> MAC) entries in HOST's kernel."""
        a = self._args(line, "fdb", ["host", ("network", "?")])
        if a is not None:
            self._do(lambda: lab_cmds.fdb(self.lab, a.host, a.network))

    def do_capture(self, line: str) -> None:
        """capture HOST [COUNT] [while C1 ping C2]
        Capture COUNT (default 4) overlay packets on HOST's underlay eth0: VXLAN (UDP 4789)
        with VNI and inner addresses, ESP of encrypted networks (UDP 4500) with SPI,
        sequence and length; 'while C1 ping C2' makes the traffic meanwhile."""
        words = shlex.split(line)
        during = None
        if "while" in words:
            i = words.index("while")
            rest, words = words[i + 1 :], words[:i]
            if len(rest) not in (3, 4) or rest[1] != "ping":
                print("*** capture: expected 'while C1 ping C2 [COUNT]'")
                return
            src, dst = rest[0], rest[2]
            n = int(rest[3]) if len(rest) == 4 and rest[3].isdigit() else 3
            during = lambda: lab_cmds.ping(self.lab, src, dst, n)  # noqa: E731
        a = self._args(shlex.join(words), "capture", ["host", ("count", "?")])
        if a is None:
            return
        if a.count is not None and not a.count.isdigit():
            print(f"*** capture: COUNT must be a number, not {a.count!r}")
            return
        count = int(a.count or 4)
        self._do(lambda: lab_cmds.capture(self.lab, a.host, count, during=during))

    def do_crypto(self, line: str) -> None:
        """crypto HOST
        HOST's encrypted data path: key generation and primary key, and per encrypted
        network its TAP, frames and bytes sealed and opened, every drop reason, and
        cleartext VXLAN dropped."""
        a = self._args(line, "crypto", ["host"])
        if a is not None:
            self._do(lambda: lab_cmds.crypto(self.lab, a.host))

    def do_rotate(self, line: str) -> None:
        """rotate
        Rotate the network keys at the manager, then have every running agent install
        the new ring (the next key becomes primary)."""
        if self._args(line, "rotate", []) is not None:
            self._do(lambda: lab_cmds.rotate(self.lab))

    def do_keys(self, line: str) -> None:
        """keys rotate
        The same as 'rotate'."""
        if shlex.split(line) != ["rotate"]:
            print("*** keys: usage: keys rotate")
            return
        self._do(lambda: lab_cmds.rotate(self.lab))

    def do_loss(self, line: str) -> None:
        """loss PERCENT
        Drop PERCENT % of packets arriving at every host; 'loss 0' removes it."""
        a = self._args(line, "loss", ["percent"])
        if a is None:
            return
        try:
            percent = float(a.percent)
        except ValueError:
            print(f"*** loss: PERCENT must be a number, not {a.percent!r}")
            return
        self._do(lambda: lab_cmds.loss(self.lab, percent))

    def do_partition(self, line: str) -> None:
        """partition h1,h2 h3,h4
        Split the hosts into groups that cannot reach each other; hosts in no group are
        isolated. 'heal' ends it."""
        groups = [[h for h in g.split(",") if h] for g in line.split()]
        self._do(lambda: lab_cmds.partition(self.lab, groups))

    def do_heal(self, line: str) -> None:
        """heal
        End the partition."""
        self._do(lambda: lab_cmds.heal(self.lab))

    def do_crash(self, line: str) -> None:
        """crash HOST
        SIGKILL HOST's agent and silence its links (its containers die with it)."""
        a = self._args(line, "crash", ["host"])
        if a is not None:
            self._do(lambda: lab_cmds.crash(self.lab, a.host))

    def do_restart(self, line: str) -> None:
        """restart HOST
        Restore HOST's links and start a new boot of its agent; it rejoins."""
        a = self._args(line, "restart", ["host"])
        if a is not None:
            self._do(lambda: lab_cmds.restart(self.lab, a.host))

    def default(self, line: str) -> None:
        """``C1 ping C2 [COUNT]`` between containers; anything else goes to Mininet."""
        words = line.split()
        if len(words) in (3, 4) and words[1] == "ping" and words[0] in self.lab.containers:
            if len(words) == 4 and not words[3].isdigit():
                print(f"*** ping: COUNT must be a number, not {words[3]!r}")
                return
            n = int(words[3]) if len(words) == 4 else 3
            self._do(lambda: lab_cmds.ping(self.lab, words[0], words[2], n))
            return
        super().default(line)

    def do_check(self, line: str) -> None:
        """check LAB [--json | --csv]
        Check the testbed against guided lab LAB (1-6, docs/labs/): each step's goal,
        passed or not, and a hint for what is missing."""
        from overlaysim.lab.check import LabProbe, check_lab, parse_lab, render

        def go() -> str:
            p = _Parser(prog="check", add_help=False)
            p.add_argument("lab")
            fmt = p.add_mutually_exclusive_group()
            fmt.add_argument("--json", dest="fmt", action="store_const", const="json")
            fmt.add_argument("--csv", dest="fmt", action="store_const", const="csv")
            a = p.parse_args(shlex.split(line))
            return render(check_lab(LabProbe(self.lab), parse_lab(a.lab)), a.fmt or "text")

        self._do(go)

    # -- parsing --------------------------------------------------------------------------

    def _args(self, line: str, prog: str, spec: list[Any]) -> argparse.Namespace | None:
        p = _Parser(prog=prog, add_help=False)
        for item in spec:
            if isinstance(item, tuple):
                p.add_argument(item[0], nargs=item[1])
            else:
                p.add_argument(item)
        try:
            return p.parse_args(shlex.split(line))
        except (_Refused, ValueError) as exc:
            print(f"*** {exc}")
            return None


def main(args: argparse.Namespace) -> int:
    """``overlaysim lab TOPOLOGY``: bring the testbed up, run the CLI, tear down."""
    from overlaysim.lab.session import lab_session

    with lab_session(args.topology, profile=args.profile, publish=True) as lab:
        LabCLI(lab)
        print("tearing down")
    return 0


__all__ = ["LabCLI", "LabError", "main"]
