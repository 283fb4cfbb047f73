"""Small kernel helpers for the data plane: named namespaces, netlink handles, sysctls.

Everything here goes through pyroute2 or plain syscalls; no shell strings. Namespace
specs are either a name under ``/var/run/netns`` or a path such as
``/proc/PID/ns/net``; ``None`` means the calling process's own namespace.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from overlaysim.agent.nlbatch import NeighSocket
from overlaysim.agent.ownthread import call_in_own_thread

log = logging.getLogger(__name__)

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


AF_INET = 2
AF_BRIDGE = 7
NUD_PERMANENT = ndmsg.states["permanent"]
NTF_SELF = ndmsg.flags["self"]


class KernelError(RuntimeError):
    """A kernel operation failed for a reason other than "already gone"."""


def netns_exists(name: str) -> bool:
    """Whether a named namespace exists."""
    return (NETNS_DIR / name).exists()


def list_netns() -> list[str]:
    """Names of all named network namespaces."""
    return sorted(pr_netns.listnetns())


def create_netns(name: str) -> None:
    """Create the named namespace; fail if the name is taken (never adopt).

    As ``ip netns add`` does, but in a short-lived thread of this process: the thread
    unshares its network namespace and binds it to the name, then ends (``unshare``
    changes only the calling thread). pyroute2's own ``create`` forks a helper
    process for that, which costs a busy agent tens of milliseconds per container.
    """
    if netns_exists(name):
        raise KernelError(f"network namespace {name!r} already exists (leftover? run clean)")

    def run() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        pr_netns.attach(name, "thread-self", libc=_libc)  # bind /proc/thread-self/ns/net

    call_in_own_thread(run, "netns-create")


def open_ipr(ns: str | None) -> IPRoute:
    """An rtnetlink handle in namespace ``ns`` (never creates the namespace)."""
    if ns is None:
        return IPRoute()
    return IPRoute(netns=ns, flags=0)


def close_ipr(ipr: IPRoute) -> None:
    """Close a handle, quietly: pyroute2 warns when closed from another thread."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ipr.close()
        except Exception as exc:  # a broken handle must not stop teardown
            log.debug("closing netlink handle: %s", exc)


def is_gone(exc: BaseException) -> bool:
    """True when ``exc`` means the object no longer exists."""
    if isinstance(exc, NetlinkError):
        return exc.code in (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOENT, errno.ENODEV, errno.EINVAL)
    return False


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    """Index of ``ifname`` in the handle's namespace, or None."""
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def delete_link(ipr: IPRoute, ifname: str) -> bool:
    """Delete ``ifname`` if present. Returns whether something was deleted."""
    index = link_index(ipr, ifname)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if is_gone(exc):
            return False
        raise
    return True


def flush_links(ns: str) -> None:
    """Delete every interface except ``lo`` in ``ns``.

    Removing a namespace destroys its devices asynchronously (a kernel work queue);
    deleting them first makes teardown synchronous, so a VXLAN device with the same
    VNI and port can be created again right away.
    """
    # one dump and one write on a raw socket (a pyroute2 handle here would cost a
    # helper process, for a container namespace that usually holds only lo)
    sock = NeighSocket(ns_path(ns))
    try:
        # vxlan and veth first, bridges last: ports detach cleanly
        links = sorted(
            ((index, kind) for index, name, kind in sock.links() if name and name != "lo"),
            key=lambda item: item[1] == "bridge",
        )
        if links:
            sock.delete_links([index for index, _ in links])
    finally:
        sock.close()


def remove_netns(name: str) -> bool:
    """Remove a named namespace (its interfaces first). False if it was gone."""
    if not netns_exists(name):
        return False
    try:
        flush_links(name)
    except Exception as exc:  # best effort: the namespace removal below still frees it
        log.warning("flushing links in %s: %s", name, exc)
    try:
        pr_netns.remove(name)
    except OSError as exc:
        if is_gone(exc):
            return False
        raise
    return True


def kill_inside(name: str) -> list[int]:
    """SIGKILL every process whose network namespace is the named namespace ``name``.

    For a crashed agent's container namespaces before they are removed: a service task's
    command would otherwise keep running in a namespace nobody can name any more. Only
    ever called on the project's own namespaces, so whatever runs there is ours.
    """
    ino = ns_inode(name)
    if ino is None:
        return []
    killed = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino != ino:
                continue
            os.kill(int(entry.name), 9)
        except OSError:
            continue  # gone meanwhile, or not ours to see
        killed.append(int(entry.name))
    return killed


def ns_inode(ns: str | None) -> int | None:
    """Inode of a namespace spec, to recognise it later (None if unavailable)."""
    path = ns_path(ns)
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def ns_path(ns: str | None) -> str:
    """Filesystem path of a namespace spec."""
    if ns is None:
        return f"/proc/{os.getpid()}/ns/net"
    if "/" in ns:
        return ns
    return str(NETNS_DIR / ns)


def run_in_netns(ns: str | None, func: Callable[..., Any], *args: Any) -> Any:
    """Run ``func(*args)`` in a forked child that has entered namespace ``ns``.

    For the few things netlink cannot do (sysctls, ethtool ioctls). The caller's
    threads never change namespace. The result (or exception) comes back pickled.
    """
    path = ns_path(ns)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: enter, run, report, exit without running parent cleanups
        os.close(read_fd)
        code = 0
        try:
            fd = os.open(path, os.O_RDONLY)
            pr_netns.setns(fd, flags=0)
            os.close(fd)
            payload = pickle.dumps((True, func(*args)))
        except BaseException as exc:  # report everything to the parent
            code = 1
            payload = pickle.dumps((False, KernelError(f"in netns {ns}: {exc!r}")))
        with os.fdopen(write_fd, "wb") as out:
            out.write(payload)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    if not data:
        raise KernelError(f"helper in netns {ns} died without a result")
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value


# --- VXLAN forwarding entries --------------------------------------------------------


def fdb_set(ipr: IPRoute, vx: int, mac: str, vtep: str) -> None:
    """``bridge fdb replace MAC dev VX dst VTEP self permanent``."""
    _neigh_op(
        ipr, "replace", family=AF_BRIDGE, ifindex=vx, lladdr=mac, dst=vtep,
        state=NUD_PERMANENT, flags=NTF_SELF,
    )  # fmt: skip


def fdb_del(ipr: IPRoute, vx: int, mac: str, vtep: str | None = None) -> None:
    """Delete ``mac`` towards ``vtep`` (without ``vtep``: the whole entry); tolerant."""
    args: dict[str, Any] = {"family": AF_BRIDGE, "ifindex": vx, "lladdr": mac, "flags": NTF_SELF}
    if vtep is not None:
        args["dst"] = vtep
    _neigh_op(ipr, "del", **args)


def neigh_set(ipr: IPRoute, vx: int, ip: str, mac: str) -> None:
    """``ip neigh replace IP lladdr MAC dev VX nud permanent``."""
    _neigh_op(ipr, "replace", family=AF_INET, ifindex=vx, dst=ip, lladdr=mac, state=NUD_PERMANENT)


def neigh_del(ipr: IPRoute, vx: int, ip: str) -> None:
    """Delete the neighbour entry for ``ip``; tolerant of it being gone."""
    _neigh_op(ipr, "del", family=AF_INET, ifindex=vx, dst=ip)


def _neigh_op(ipr: IPRoute, cmd: str, **args: Any) -> None:
    try:
        ipr.neigh(cmd, **args)
    except NetlinkError as exc:
        if not (cmd == "del" and is_gone(exc)):
            raise


def vxlan_entries(ipr: IPRoute, vx: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """The VXLAN device's own FDB ``{(mac, vtep)}`` and IPv4 neighbours ``{(ip, mac)}``."""
    fdb = {
        (msg.get("lladdr"), msg.get("dst"))
        for msg in ipr.neigh("dump", family=AF_BRIDGE)
        if msg["ifindex"] == vx and msg.get("dst")  # the bridge's (master) entries have none
    }
    neigh = {
        (msg.get("dst"), msg.get("lladdr"))
        for msg in ipr.neigh("dump", family=AF_INET)
        if msg["ifindex"] == vx
    }
    return fdb, neigh


# --- sysctls (run inside run_in_netns) ---------------------------------------------

NEIGH_DEFAULT = "/proc/sys/net/ipv4/neigh/default"


def raise_neigh_gc(sandbox: str, thresholds: dict[int, int]) -> dict[str, Any]:
    """Raise ``gc_thresh1..3`` of the IPv4 neighbour table; never lower them.

    The ARP table is kernel-wide and its ``default`` sysctls appear only in the
    initial namespace on current kernels, so after the sandbox (where Docker writes
    them) try our own namespace, then PID 1's. Returns ``{"where", "values"}`` with
    ``{path: (before, after)}``, or ``{"where": "none", "errors": [...]}``.
    """
    targets = {f"{NEIGH_DEFAULT}/gc_thresh{i}": v for i, v in thresholds.items()}
    attempts: list[tuple[str, Callable[[], Any]]] = [
        (sandbox, lambda: run_in_netns(sandbox, raise_sysctls, targets)),
        ("own", lambda: raise_sysctls(targets)),
        ("initial", lambda: run_in_netns("/proc/1/ns/net", raise_sysctls, targets)),
    ]
    errors = []
    for where, attempt in attempts:
        try:
            changes = attempt()
        except (KernelError, OSError) as exc:
            errors.append(f"{where}: {exc}")
            continue
        if changes is not None:
            return {"where": where, "values": changes}
    return {"where": "none", "errors": errors}


def raise_sysctls(targets: dict[str, int]) -> dict[str, tuple[int, int]] | None:
    """Raise each sysctl file to at least its target; never lower one.

    Returns ``{path: (before, after)}``, or None when the first file is absent
    (some sysctls exist only in the initial namespace).
    """
    first = next(iter(targets))
    if not os.path.exists(first):
        return None
    changes: dict[str, tuple[int, int]] = {}
    for path, target in targets.items():
        with open(path) as f:
            before = int(f.read().split()[0])
        after = max(before, target)
        if after != before:
            with open(path, "w") as f:
                f.write(str(after))
        changes[path] = (before, after)
    return changes


# --- ethtool features (run inside run_in_netns) --------------------------------------

#: Offloads that decide overlay throughput (see docs/dataplane.md).
KEY_FEATURES = (
    "rx-gro",
    "tx-generic-segmentation",
    "tx-tcp-segmentation",
    "tx-udp_tnl-segmentation",
    "tx-checksum-ip-generic",
    "tx-scatter-gather",
)


def read_features(ifnames: list[str], names: tuple[str, ...] = KEY_FEATURES) -> dict:
    """``{ifname: {feature: enabled}}`` for the given interfaces (ethtool ioctls)."""
    from pyroute2.ethtool import Ethtool

    result: dict[str, dict[str, bool]] = {}
    with Ethtool() as tool:
        for ifname in ifnames:
            features = tool.get_features(ifname).features
            result[ifname] = {n: bool(features[n].enable) for n in names if n in features}
    return result
