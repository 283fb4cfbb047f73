"""``overlaysim service ...``: replicated services on a running testbed, like Docker's.

The manager keeps the service records (:mod:`overlaysim.agent.service_registry`): name,
network, replicas, endpoint mode, VIP, spec generation and where each task runs. This
module turns its answers into work on the hosts: each task is a container started by
its host's agent with the task spec (so its endpoint entries carry the service's names
and every host's embedded DNS answers for it) and, if given, the service's command,
which runs inside the task and stops with it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from overlaysim.errors import UserError
from overlaysim.listing import print_table

_FMT = argparse.RawDescriptionHelpFormatter

EXAMPLES = """\
examples:
  overlaysim service create --name web --replicas 3 --network front \\
      -- python3 -m http.server 8080
  overlaysim service create --name db --replicas 2 --network front --endpoint-mode dnsrr
  overlaysim service create --name api --replicas 2 --network front --publish 8080:80 \
      -- python3 -m http.server 80
  overlaysim service ls
  overlaysim service ps web
  overlaysim service scale web=1
  overlaysim service update --endpoint-mode dnsrr web
  overlaysim service rm web

Inside any container on the network, 'web' resolves to the service's VIP (balanced over
the tasks per new connection) or, in dnsrr mode, to the task IPs; 'tasks.web' to every
task IP:
  overlaysim exec c1 -- getent hosts tasks.web
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``service`` and its subcommands to the top-level parser."""
    svc = sub.add_parser(
        "service",
        help="create, scale, update, list and remove replicated services",
        description="Replicated services on the running testbed, like 'docker service'. "
        "Each task is a container <service>.<slot> with that hostname, placed round robin "
        "over the live hosts (a task name that ran before goes back to its last host while "
        "it is live); the service name resolves in every container on its network.",
        epilog=EXAMPLES,
        formatter_class=_FMT,
    )
    ssub = svc.add_subparsers(dest="svc_command", metavar="COMMAND", required=True)
    p = ssub.add_parser(
        "create",
        help="create a service and start its tasks",
        description="Create service NAME with K tasks on NETWORK. In vip mode (default) the "
        "name resolves to one virtual IP from the network's addresses, balanced over the "
        "tasks per connection (nftables DNAT); in dnsrr mode to the task IPs, shuffled. "
        "A command after '--' runs inside each task (its network and UTS namespaces, with "
        "the embedded DNS in its resolv.conf) and is stopped with the task.",
        epilog="example:\n  overlaysim service create --name web --replicas 3 --network front "
        "-- python3 -m http.server 8080\n",
        formatter_class=_FMT,
    )
    p.add_argument("--name", required=True)
    p.add_argument("--replicas", type=int, default=1, metavar="K")
    p.add_argument("--network", required=True)
    p.add_argument("--endpoint-mode", dest="mode", default="vip", metavar="vip|dnsrr")
    p.add_argument(
        "--publish",
        "-p",
        action="append",
        default=[],
        metavar="P:T",
        help="publish task port T as port P on every host's underlay address (routing mesh)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... run in each task")
    p.set_defaults(func=_create)
    p = ssub.add_parser(
        "scale",
        help="set the number of tasks: SERVICE=K ...",
        epilog="example:\n  overlaysim service scale web=1 db=3\n",
        formatter_class=_FMT,
    )
    p.add_argument("pairs", nargs="+", metavar="SERVICE=K")
    p.set_defaults(func=_scale)
    p = ssub.add_parser(
        "update",
        help="change a service's endpoint mode (tasks are replaced one by one)",
        epilog="example:\n  overlaysim service update --endpoint-mode dnsrr web\n",
        formatter_class=_FMT,
    )
    p.add_argument("--endpoint-mode", dest="mode", required=True, metavar="vip|dnsrr")
    p.add_argument("name")
    p.set_defaults(func=_update)
    p = ssub.add_parser("ls", help="list services")
    p.set_defaults(func=_ls)
    p = ssub.add_parser("ps", help="list a service's tasks, their hosts and states")
    p.add_argument("name")
    p.set_defaults(func=_ps)
    p = ssub.add_parser("rm", help="remove services and their tasks")
    p.add_argument("names", nargs="+", metavar="SERVICE")
    p.set_defaults(func=_rm)


# -- plumbing ----------------------------------------------------------------------------


def _call(host: str, op: str, **args: Any) -> Any:
    from overlaysim.emu.live import read_live

    return read_live().call(host, op, **args)


def _manager(op: str, **args: Any) -> Any:
    from overlaysim.emu.live import read_live

    return read_live().call_manager(op, **args)


def _start_task(svc: dict[str, Any], task: str, host: str) -> dict[str, Any]:
    from overlaysim.agent.service_registry import task_spec

    req: dict[str, Any] = {
        "container": task,
        "networks": svc["networks"],
        "task": task_spec(svc, task),
    }
    if svc["command"]:
        req["command"] = svc["command"]
    return _call(host, "task", **req)


def _stop_task(task: str, host: str) -> bool:
    try:
        _call(host, "rm", container=task)
    except UserError as exc:  # a task on a dead host is already gone
        print(f"{task}: {exc}", file=sys.stderr)
        return False
    return True


def _stop_tasks(tasks: list[list[str]] | list[tuple[str, str]]) -> None:
    """Stop tasks on their hosts at once (each host's agent works on its own)."""
    from concurrent.futures import ThreadPoolExecutor

    if len(tasks) <= 1:
        for task, host in tasks:
            _stop_task(task, host)
        return
    with ThreadPoolExecutor(max_workers=min(8, len(tasks))) as pool:
        list(pool.map(lambda th: _stop_task(*th), tasks))


def _command(argv: list[str]) -> list[str]:
    return argv[1:] if argv[:1] == ["--"] else argv


# -- verbs -------------------------------------------------------------------------------


def _create(args: argparse.Namespace) -> int:
    command = _command(args.command)
    svc = _manager(
        "service_create",
        name=args.name,
        replicas=args.replicas,
        network=args.network,
        mode=args.mode,
        command=command,
        publish=args.publish,
    )
    started: list[tuple[str, str]] = []
    try:
        for task, host in svc["tasks"]:
            res = _start_task(svc, task, host)
            started.append((task, host))
            print(f"{task} on {host} {res['networks'][0]['ip']}")
        if svc["publish"]:
            _sync_mesh()
    except BaseException:
        _stop_tasks(started)
        _manager("service_rm", name=svc["name"])
        if svc["publish"]:
            _sync_mesh()
        raise
    where = f"vip {svc['vip']}" if svc["vip"] else "dnsrr"
    print(f"{svc['name']}: {len(svc['tasks'])} tasks on {svc['network']}, {where}")
    for p, t in svc["publish"]:
        print(f"  port {p} on every host -> task port {t} (ingress vip {svc['ingress_vip']})")
    return 0


def _sync_mesh() -> None:
    """Tell every host's agent the routing mesh's full set of published ports."""
    from overlaysim.emu.live import read_live

    ports = _manager("ingress_ports")
    for host in sorted(read_live().hosts):
        try:
            _call(host, "ingress", ports=ports)
        except UserError as exc:  # a dead host gets the set when it is back
            print(f"routing mesh on {host}: {exc}", file=sys.stderr)


def _parse_pair(pair: str) -> tuple[str, int]:
    name, sep, k = pair.partition("=")
    try:
        if sep and name:
            return name, int(k)
    except ValueError:
        pass
    raise UserError(f"service scale {pair!r}: expected SERVICE=REPLICAS, e.g. web=3")


def _scale(args: argparse.Namespace) -> int:
    pairs = [_parse_pair(p) for p in args.pairs]  # all checked before anything changes
    for name, k in pairs:
        svc = _manager("service_scale", name=name, replicas=k)
        _stop_tasks(svc["removed"])
        for task, host in svc["added"]:
            _start_task(svc, task, host)
        print(f"{svc['name']} scaled to {svc['replicas']}")
    return 0


def _update(args: argparse.Namespace) -> int:
    before = _manager("service_inspect", name=args.name)
    svc = _manager("service_update", name=args.name, mode=args.mode)
    if svc["gen"] == before["gen"]:
        print(f"{svc['name']}: already {svc['mode']}")
        return 0
    # rolling: one task at a time, so the others keep answering meanwhile
    for task, host in svc["tasks"]:
        _stop_task(task, host)
        _start_task(svc, task, host)
    print(f"{svc['name']}: endpoint mode {svc['mode']} (spec generation {svc['gen']})")
    return 0


def _ls(args: argparse.Namespace) -> int:
    print_table(
        [("NAME", 16), ("MODE", 7), ("REPLICAS", 10), ("VIP", 16), ("NETWORK", 14), ("COMMAND", 0)],
        (
            (
                s["name"],
                s["mode"],
                s["replicas"],
                s["vip"] or "-",
                s["network"],
                " ".join(s["command"]),
            )
            for s in _manager("service_ls")
        ),
    )
    return 0


def _ps(args: argparse.Namespace) -> int:
    svc = _manager("service_inspect", name=args.name)
    print_table(
        [("TASK", 20), ("HOST", 10), ("STATE", 10), ("COMMAND", 0)], map(_task_row, svc["tasks"])
    )
    return 0


def _task_row(placement: list[str]) -> tuple[str, str, str, str]:
    """One task's row of ``service ps``: asks its host's agent how it is."""
    task, host = placement
    try:
        st = _call(host, "status")
    except UserError:
        return task, host, "unreachable", ""
    running = task in st.get("containers", {})
    proc = st.get("services", {}).get("commands", {}).get(task)
    state = "running" if running else "missing"
    if proc is None:
        return task, host, state, ""
    cmd = f"pid {proc['pid']}" if proc["exit"] is None else f"exited {proc['exit']}"
    return task, host, state, cmd


def _rm(args: argparse.Namespace) -> int:
    for name in args.names:
        svc = _manager("service_rm", name=name)
        if svc["publish"]:
            _sync_mesh()
        _stop_tasks(svc["tasks"])
        print(svc["name"])
    return 0
