"""Docker-style commands against a running testbed (``overlaysim up``).

Each command reads the testbed's address book (:mod:`overlaysim.emu.live`) and calls
the agents' control sockets: network definitions and service placement go to the
manager, containers to the agent of their host.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from overlaysim.errors import UserError, user_error_types
from overlaysim.listing import print_table

if TYPE_CHECKING:
    from overlaysim.emu.live import LiveTestbed

_FMT = argparse.RawDescriptionHelpFormatter


def up(args: argparse.Namespace) -> int:
    """``overlaysim up TOPOLOGY``: a testbed that stays up until Ctrl-C."""
    import time

    from overlaysim.emu.live import NoTestbed, read_live
    from overlaysim.lab.session import lab_session

    try:
        other = read_live()
    except NoTestbed:
        other = None
    if other is not None:
        raise UserError(
            f"testbed {other.run_id} (pid {other.owner_pid}) is already up; "
            "stop it with Ctrl-C in its terminal first"
        )
    with lab_session(
        args.topology, profile=args.profile, publish=True, managers=args.manager
    ) as lab:
        u, tb = lab.underlay, lab.testbed
        for h in u.hosts:
            print(f"  {h:<8} {u.underlay_ip(h):<16} {tb.sock(h)}")
        print("try: overlaysim network create -d overlay --attachable web")
        print("     overlaysim run --name c1 --network web h1")
        print("Ctrl-C tears everything down.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("tearing down")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``network``, ``rm``, ``ps``, ``exec`` and ``inspect``.

    ``service`` is :mod:`overlaysim.service_cli`; ``run`` has two forms (a scenario, or a container) and lives in :mod:`overlaysim.run_cli`.
    """
    p = sub.add_parser(
        "up",
        help="bring up a testbed (underlay + one agent per host) that stays until Ctrl-C",
        description="Build the Mininet underlay of TOPOLOGY, start one overlay agent per host "
        "(the manager on the first host), wait until membership has formed, then wait. "
        "In another terminal, drive it with 'overlaysim network ...', 'overlaysim run --name "
        "...', 'overlaysim service ...', 'overlaysim inspect HOST'. Needs root.",
        epilog="example:\n  sudo overlaysim up topologies/star.yaml\n",
        formatter_class=_FMT,
    )
    p.add_argument("topology", help="a topology YAML file (see topologies/)")
    p.add_argument("--profile", default="lan", choices=["lan", "wan", "local"])
    p.add_argument("--manager", action="append", help="manager host (default: the first host)")
    p.set_defaults(func=up)

    net = sub.add_parser(
        "network",
        help="create, list, inspect, remove, connect and disconnect overlay networks",
        description="Manage overlay networks on the running testbed, like 'docker network'.",
        epilog="examples:\n"
        "  overlaysim network create -d overlay --attachable --subnet 10.30.0.0/24 web\n"
        "  overlaysim network ls\n"
        "  overlaysim network inspect web\n"
        "  overlaysim network connect db c1\n"
        "  overlaysim network disconnect db c1\n"
        "  overlaysim network rm web\n",
        formatter_class=_FMT,
    )
    nsub = net.add_subparsers(dest="net_command", metavar="COMMAND", required=True)
    p = nsub.add_parser(
        "create",
        help="create an overlay network",
        description="Create an overlay network (VNI and subnet allocated by the manager "
        "unless given). --opt encrypted seals the network's traffic between hosts as "
        "ESP-in-UDP (AES-GCM-128) on UDP 4500 with keys the manager rotates. "
        "--opt attachment=macvlan plugs containers in as macvlans of the network's VXLAN "
        "device instead of veth pairs into its bridge (plain networks only; "
        "docs/dataplane.md).",
        epilog="example:\n  overlaysim network create -d overlay --attachable --subnet 10.30.0.0/24 "
        "--ip-range 10.30.0.128/25 --aux-address router=10.30.0.2 web\n",
        formatter_class=_FMT,
    )
    p.add_argument("-d", "--driver", default="overlay", choices=["overlay"])
    p.add_argument("--attachable", action="store_true", help="allow standalone containers (run)")
    p.add_argument("--subnet")
    p.add_argument("--gateway")
    p.add_argument("--ip-range", dest="ip_range")
    p.add_argument("--aux-address", dest="aux", action="append", default=[], metavar="NAME=IP")
    p.add_argument("--opt", "-o", action="append", default=[], metavar="KEY[=VALUE]")
    p.add_argument("--mtu", type=int)
    p.add_argument("name")
    p.set_defaults(func=_network_create)
    p = nsub.add_parser("ls", help="list networks")
    p.set_defaults(func=_network_ls)
    p = nsub.add_parser("inspect", help="show a network and its endpoints as JSON")
    p.add_argument("name")
    p.set_defaults(func=_network_inspect)
    p = nsub.add_parser("rm", help="remove networks (each refused while endpoints remain)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=_network_rm)
    p = nsub.add_parser("connect", help="attach a running container to another network")
    p.add_argument("network")
    p.add_argument("container")
    p.add_argument("--ip")
    p.set_defaults(func=_network_connect)
    p = nsub.add_parser("disconnect", help="detach a container from a network")
    p.add_argument("network")
    p.add_argument("container")
    p.set_defaults(func=_network_disconnect)

    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_rm)

    p = sub.add_parser("ps", help="list containers on every host")
    p.set_defaults(func=_ps)

    p = sub.add_parser(
        "exec",
        help="run a command inside a container (or a testbed host)",
        description="Run a command in a container's network and UTS namespaces, with its "
        "resolv.conf (the embedded DNS at 127.0.0.11) mounted, as a service task's command "
        "runs. Given a host name instead (and no container has it), run it in that host's "
        "own namespace, on the underlay.",
        epilog="examples:\n  overlaysim exec c1 -- ping -c 3 10.30.0.3\n"
        "  overlaysim exec c1 -- getent hosts tasks.web\n"
        "  overlaysim exec h1 -- socat -u TCP:172.30.0.2:8080 -\n",
        formatter_class=_FMT,
    )
    p.add_argument("container")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(func=_exec)

    p = sub.add_parser(
        "inspect",
        help="show a host's membership view, gossip tables and kernel FDB/neighbour entries",
        epilog="examples:\n  overlaysim inspect h2\n  overlaysim inspect h2 --what kernel\n"
        "  overlaysim inspect h2 --what crypto\n",
        formatter_class=_FMT,
    )
    p.add_argument("host")
    p.add_argument(
        "--what",
        choices=["all", "members", "tables", "kernel", "status", "crypto"],
        default="all",
        help="what to show; crypto: the encrypted data path's keys, SAs and counters",
    )
    p.set_defaults(func=_inspect)


# -- plumbing ----------------------------------------------------------------------------


def _live() -> LiveTestbed:
    """The running testbed; its ``call``/``call_manager`` reach the agents."""
    from overlaysim.emu.live import read_live

    return read_live()


def _find(container: str) -> tuple[str, dict[str, Any]]:
    """(host, status) of the agent holding ``container``."""
    from overlaysim.emu.live import read_live

    tb = read_live()
    for host in sorted(tb.hosts):
        try:
            st = tb.call(host, "status")
        except UserError:
            continue
        if container in st.get("containers", {}):
            return host, st
    raise UserError(f"no such container: {container}")


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


# -- networks ----------------------------------------------------------------------------


def _network_create(args: argparse.Namespace) -> int:
    from overlaysim.core.network import DEFAULT_ATTACHMENT

    encrypted, attachment = False, DEFAULT_ATTACHMENT
    for opt in args.opt:
        key, _, value = opt.partition("=")
        if key == "encrypted" and value in ("", "true", "1"):
            encrypted = True
        elif key == "attachment" and value:
            attachment = value  # the manager checks the value
        else:
            raise UserError(
                f"--opt {opt}: unknown option; supported: encrypted, attachment=veth|macvlan"
            )
    aux = {}
    for item in args.aux:
        name, sep, ip = item.partition("=")
        if not sep or not name or not ip:
            raise UserError(f"--aux-address {item!r}: expected NAME=IP")
        aux[name] = ip
    spec = {
        "name": args.name,
        "subnet": args.subnet,
        "gateway": args.gateway,
        "ip_range": args.ip_range,
        "aux_addresses": aux,
        "attachable": args.attachable,
        "encrypted": encrypted,
        "mtu": args.mtu,
        "attachment": attachment,
    }
    net = _live().call_manager("network_create", spec=spec)
    print(net["id"])
    return 0


def _network_ls(args: argparse.Namespace) -> int:
    columns = [("NETWORK ID", 14), ("NAME", 16), ("DRIVER", 9), ("VNI", 7), ("SUBNET", 18)]
    print_table(
        [*columns, ("ATTACHABLE", 0)],
        (
            (
                n["id"][:12],
                n["name"],
                "overlay",
                n["vni"],
                n["subnet"],
                str(n["attachable"]).lower(),
            )
            for n in _live().call_manager("network_ls")
        ),
    )
    return 0


def _network_inspect(args: argparse.Namespace) -> int:
    _print(_live().call_manager("network_inspect", name=args.name))
    return 0


def _each(names: list[str], remove: Callable[[str], str]) -> int:
    """``remove(name)`` for every name, as ``docker rm a b`` does: each removed name is
    printed, each failure reported on stderr (its message names what failed) without
    stopping the rest; status 2 if any failed."""
    failed = 0
    for name in names:
        try:
            print(remove(name))
        except user_error_types() as exc:
            print(f"overlaysim: error: {exc}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def _network_rm(args: argparse.Namespace) -> int:
    live = _live()
    return _each(args.names, lambda name: live.call_manager("network_rm", name=name)["name"])


def _network_connect(args: argparse.Namespace) -> int:

    host, _ = _find(args.container)
    res = _live().call(
        host,
        "connect",
        container=args.container,
        network=args.network,
        ip=args.ip,
    )
    _print(res)
    return 0


def _network_disconnect(args: argparse.Namespace) -> int:

    host, _ = _find(args.container)
    _live().call(host, "disconnect", container=args.container, network=args.network)
    return 0


# -- containers --------------------------------------------------------------------------


def run_container(args: argparse.Namespace) -> int:
    """``overlaysim run --name C --network N HOST`` (the container form of ``run``)."""
    from overlaysim.emu.live import read_live

    tb = read_live()
    if not args.networks:
        raise UserError("run --name: give at least one --network")
    req: dict[str, Any] = {"container": args.name, "networks": args.networks}
    if args.ip:
        req["ip"] = args.ip
    res = tb.call(str(args.target), "run", **req)
    _print(res)
    return 0


def _rm(args: argparse.Namespace) -> int:
    live = _live()  # no testbed: one error, not one per name

    def remove(container: str) -> str:
        host, _ = _find(container)
        live.call(host, "rm", container=container)
        return container

    return _each(args.containers, remove)


def _ps(args: argparse.Namespace) -> int:
    from overlaysim.emu.live import read_live

    tb = read_live()
    print_table(
        [("CONTAINER", 20), ("HOST", 10), ("NETWORKS", 0)],
        (
            (name, host, ",".join(nets))
            for host in sorted(tb.hosts)
            for name, nets in sorted(tb.call(host, "status").get("containers", {}).items())
        ),
    )
    return 0


def _exec(args: argparse.Namespace) -> int:
    from overlaysim.emu.live import read_live

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise UserError("exec: give a command after the container, e.g. -- ping -c 3 10.30.0.3")
    hosts = read_live().hosts
    try:
        host, _ = _find(args.container)
    except UserError:
        if args.container not in hosts:
            raise
        # a testbed host itself (its underlay namespace), e.g. to try a published port
        pid = hosts[args.container].get("pid")
        return subprocess.call(["mnexec", "-a", pid, *argv] if pid else argv)
    netns = _container_netns(host, args.container)
    # Container namespaces are mounted inside the host's mount namespace: enter it first.
    pid = hosts[host].get("pid")
    prefix = ["mnexec", "-a", pid] if pid else []
    # ip netns exec mounts the container's resolv.conf (its embedded DNS); nsenter enters
    # its UTS namespace (its hostname), as a service task's command runs
    from overlaysim.agent.uts import UTS_DIR, exec_argv

    if (UTS_DIR / netns).exists():
        return subprocess.call([*prefix, *exec_argv(netns, netns, argv)])
    return subprocess.call([*prefix, "ip", "netns", "exec", netns, *argv])


def _container_netns(host: str, container: str) -> str:
    from overlaysim.agent import names
    from overlaysim.emu.live import read_live

    return names.container_netns(read_live().prefix, host, container)


# -- looking inside ----------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    from overlaysim.emu.live import read_live

    tb = read_live()
    what = ["members", "tables", "kernel"] if args.what == "all" else [args.what]
    _print({w: tb.call(args.host, w) for w in what})
    return 0
