"""What this machine's kernel and tools can do, probed without side effects.

``overlaysim doctor`` prints :func:`probe`'s result and runs record it in their manifest,
so every figure says which mechanism produced it (netem or a fallback, kernel ESP or
the user-space path). Kernel features are tried for real inside a throwaway network
namespace ``osim-probe-<pid>`` (add a vxlan device, a qdisc, an nftables table, an
xfrm state), which is deleted afterwards: nothing outside it is touched.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from overlaysim.agent import names


@dataclass(frozen=True, slots=True, kw_only=True)
class Capability:
    """Result of one probe: whether it works, what was seen, what is lost without it."""

    ok: bool
    detail: str
    disables: str


#: What goes missing when each capability is absent (shown by ``overlaysim doctor``).
DISABLES: dict[str, str] = {
    "root": "all emulation (namespaces, links, qdiscs need root)",
    "mininet": "all emulation (the underlay is built with Mininet)",
    "mnexec": "all emulation (Mininet starts hosts with mnexec)",
    "vxlan": "the kernel overlay data plane",
    "netem": "kernel-side delay: latency and delay steps go through the NFQUEUE delay "
    "line instead (user space, with a measured ceiling; see doctor's last lines)",
    "tbf": "bandwidth limits and rate impairments",
    "nft_numgen": "loss, partition and crash impairments",
    "nfqueue": "the user-space delay line (without netem too, delay steps are refused)",
    "tun": "encrypted networks (their frames leave the bridge through a TAP device)",
    "esp": "nothing yet: encrypted networks use the user-space ESP path on every kernel",
    "kernel_gcm": "nothing yet: the user-space ESP path does AES-GCM itself (AES-NI)",
    "iperf3": "throughput measurements",
    "tcpdump": "packet captures",
    "tshark": "decoding captures in reports",
    "openvswitch": "nothing: the underlay uses Linux bridges",
    "ipvs": "nothing: service VIPs are balanced with nftables DNAT (nft_nat) on every kernel",
    "nft_nat": "service VIP load balancing (nftables DNAT with numgen, per connection)",
}


def probe() -> dict[str, Capability]:
    """Probe everything; never raises for a missing feature (that is the answer)."""
    root = os.geteuid() == 0
    caps: dict[str, Capability] = {
        "root": _cap("root", root, "running as root" if root else f"uid {os.geteuid()}"),
        "mininet": _probe_module("mininet"),
        "mnexec": _probe_tool("mnexec"),
    }
    kernel = ("vxlan", "netem", "tbf", "nft_numgen", "nfqueue", "tun", "esp", "kernel_gcm")
    kernel += ("nft_nat",)
    if root:
        with probe_netns() as ns:
            caps["vxlan"] = _guard("vxlan", lambda: _probe_vxlan(ns))
            caps["netem"] = _guard("netem", lambda: _probe_qdisc(ns, "netem"))
            caps["tbf"] = _guard("tbf", lambda: _probe_qdisc(ns, "tbf"))
            caps["nft_numgen"] = _guard("nft_numgen", lambda: _probe_nft(ns))
            caps["nfqueue"] = _guard("nfqueue", lambda: _probe_nfqueue(ns))
            caps["tun"] = _guard("tun", lambda: _probe_tun(ns))
            caps["esp"] = _guard("esp", lambda: _probe_esp(ns))
            caps["kernel_gcm"] = _guard("kernel_gcm", lambda: _probe_gcm(ns))
            caps["nft_nat"] = _guard("nft_nat", lambda: _probe_nft_nat(ns))
    else:
        for name in kernel:
            caps[name] = _cap(name, False, "not probed: needs root")
    for tool in ("iperf3", "tcpdump", "tshark"):
        caps[tool] = _probe_tool(tool)
    caps["openvswitch"] = _probe_ovs()
    caps["ipvs"] = _guard("ipvs", _probe_ipvs)
    return caps


def qdisc_available(kind: str) -> bool:
    """Whether the kernel can create a ``kind`` qdisc (probed in a throwaway namespace)."""
    with probe_netns(suffix=f"-{kind}") as ns:
        return _probe_qdisc(ns, kind).ok


def nfqueue_available() -> bool:
    """Whether the iptables NFQUEUE target works here (probed in a throwaway namespace)."""
    with probe_netns(suffix="-nfq") as ns:
        return _probe_nfqueue(ns).ok


def format_report(caps: dict[str, Capability]) -> Table:
    """A rich table for ``overlaysim doctor``: one row per capability."""
    table = Table(title="overlaysim doctor: emulation capabilities")
    table.add_column("capability")
    table.add_column("ok")
    table.add_column("detail")
    table.add_column("without it")
    for name, cap in caps.items():
        mark = "[green]yes[/green]" if cap.ok else "[red]no[/red]"
        table.add_row(name, mark, cap.detail, "" if cap.ok else cap.disables)
    return table


# --- the throwaway namespace -----------------------------------------------------------


@contextlib.contextmanager
def probe_netns(suffix: str = "") -> Iterator[str]:
    """A named network namespace that exists only for the ``with`` block."""
    from pyroute2 import netns

    name = f"{names.PROBE_NS_PREFIX}{os.getpid()}{suffix}"
    if name in netns.listnetns():
        netns.remove(name)  # our own name (prefix + our PID): a leftover of ours
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def run_in_netns(
    ns: str, argv: list[str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``ns`` (20 s timeout), capturing text; never raises on failure."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=20,
    )


def _ipr(ns: str):  # -> IPRoute (imported lazily: doctor must work without pyroute2 paths)
    from pyroute2 import IPRoute

    return IPRoute(netns=ns, flags=0)


# --- probes ----------------------------------------------------------------------------


def _cap(name: str, ok: bool, detail: str) -> Capability:
    return Capability(ok=ok, detail=detail, disables=DISABLES[name])


def _guard(name: str, fn: Callable[[], Capability]) -> Capability:
    try:
        return fn()
    except Exception as exc:  # a probe that crashes means "not available", with the reason
        return _cap(name, False, f"probe failed: {exc}")


def _probe_module(module: str) -> Capability:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return _cap(module, False, "not importable: pip install mininet==2.3.0.dev6")
    from importlib import metadata

    try:
        version = metadata.version(module)
    except metadata.PackageNotFoundError:
        version = "unknown version"
    return _cap(module, True, f"{module} {version}")


def _probe_tool(tool: str) -> Capability:
    path = shutil.which(tool)
    if path is None:
        pkg = "mininet" if tool == "mnexec" else tool
        return _cap(tool, False, f"not found: apt-get install {pkg}")
    return _cap(tool, True, path)


def _netlink_error(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    if code is not None:
        return f"{os.strerror(code)} (errno {code})"
    return str(exc)


def _probe_vxlan(ns: str) -> Capability:
    from pyroute2.netlink.exceptions import NetlinkError

    with _ipr(ns) as ipr:
        try:
            ipr.link("add", ifname=names.PROBE_VXLAN, kind="vxlan", vxlan_id=4242, vxlan_port=4789)
        except NetlinkError as exc:
            return _cap("vxlan", False, f"cannot create a vxlan device: {_netlink_error(exc)}")
        ipr.link("del", index=ipr.link_lookup(ifname=names.PROBE_VXLAN)[0])
    return _cap("vxlan", True, "vxlan device created and removed")


def _probe_qdisc(ns: str, kind: str) -> Capability:
    from pyroute2.netlink.exceptions import NetlinkError

    params: dict[str, object] = (
        {"delay": 1000} if kind == "netem" else {"rate": "1mbit", "burst": 1600, "latency": "50ms"}
    )
    with _ipr(ns) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.tc("add", kind, lo, handle=0x10000, **params)
        except NetlinkError as exc:
            missing = exc.code == 2  # ENOENT: no such qdisc kind
            why = f"sch_{kind} is not in this kernel" if missing else _netlink_error(exc)
            return _cap(kind, False, why)
        ipr.tc("del", index=lo, root=True)
    return _cap(kind, True, f"{kind} qdisc created and removed")


def _probe_nft(ns: str) -> Capability:
    if shutil.which("nft") is None:
        return _cap("nft_numgen", False, "nft not found: apt-get install nftables")
    table = {"family": "netdev", "name": names.PROBE_TABLE}
    base = {"family": "netdev", "table": names.PROBE_TABLE}
    numgen = {"numgen": {"mode": "random", "mod": 10000}}
    rules: list[dict[str, object]] = [{"add": {"table": table}}]
    for hook in ("ingress", "egress"):
        chain = {"name": hook, "type": "filter", "hook": hook, "dev": "lo", "prio": 0}
        rules.append({"add": {"chain": {**base, **chain, "policy": "accept"}}})
    expr = [{"match": {"op": "<", "left": numgen, "right": 1}}, {"drop": None}]
    rules.append({"add": {"rule": {**base, "chain": "ingress", "expr": expr}}})
    rules.append({"delete": {"table": table}})
    out = run_in_netns(ns, ["nft", "-j", "-f", "-"], json.dumps({"nftables": rules}))
    if out.returncode != 0:
        return _cap("nft_numgen", False, out.stderr.strip() or "nft failed")
    return _cap("nft_numgen", True, "netdev ingress/egress chains with numgen random drop")


def _probe_nft_nat(ns: str) -> Capability:
    """The VIP mechanism: an ip nat table, output hook, DNAT to a numgen-chosen address."""
    if shutil.which("nft") is None:
        return _cap("nft_nat", False, "nft not found: apt-get install nftables")
    t = names.PROBE_NAT_TABLE
    ruleset = (
        f"table ip {t} {{\n\tchain out {{\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        "\t\tip daddr 192.0.2.1 dnat ip to numgen random mod 2 map "
        f"{{ 0 : 192.0.2.2, 1 : 192.0.2.3 }}\n\t}}\n}}\ndelete table ip {t}\n"
    )
    out = run_in_netns(ns, ["nft", "-f", "-"], ruleset)
    if out.returncode != 0:
        return _cap("nft_nat", False, out.stderr.strip() or "nft failed")
    return _cap("nft_nat", True, "ip nat output chain with DNAT to numgen random map")


def _genl_family(name: str) -> bool:
    """Whether the kernel knows the generic-netlink family ``name`` (module loaded)."""
    try:
        from pyroute2.netlink import genlmsg
        from pyroute2.netlink.generic import GenericNetlinkSocket

        sock = GenericNetlinkSocket()
        try:
            sock.bind(name, genlmsg)
            return True
        finally:
            sock.close()
    except Exception:  # pyroute2 raises several kinds for an unknown family
        return False


def _probe_ipvs() -> Capability:
    """IPVS (what Docker balances VIPs with); recorded, not used: nftables NAT is."""
    proc = Path("/proc/net/ip_vs").exists()
    family = _genl_family("IPVS")
    if proc or family:
        return _cap("ipvs", True, "IPVS present (not used: VIPs use nftables DNAT)")
    return _cap(
        "ipvs", False, "no IPVS in this kernel (no /proc/net/ip_vs, no IPVS netlink family)"
    )


def _probe_nfqueue(ns: str) -> Capability:
    if shutil.which("iptables") is None:
        return _cap("nfqueue", False, "iptables not found: apt-get install iptables")
    rule = ["-p", "udp", "--dport", "9", "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass"]
    out = run_in_netns(ns, ["iptables", "-w", "-A", "OUTPUT", *rule])
    if out.returncode != 0:
        return _cap("nfqueue", False, f"iptables NFQUEUE target: {out.stderr.strip()}")
    run_in_netns(ns, ["iptables", "-w", "-D", "OUTPUT", *rule])
    py = importlib.util.find_spec("netfilterqueue") is not None
    lib = "python netfilterqueue present" if py else "python netfilterqueue missing"
    return _cap("nfqueue", True, f"iptables NFQUEUE target works; {lib}")


_XFRM = ["xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp"]
_XFRM_MODE = ["reqid", "1", "mode", "transport"]


def _probe_tun(ns: str) -> Capability:
    from overlaysim.agent.netns import ns_path
    from overlaysim.agent.tap import open_tap

    try:
        fd = open_tap(names.PROBE_TAP, ns_path(ns))
    except OSError as exc:
        return _cap("tun", False, str(exc))
    os.close(fd)  # the device goes with its descriptor
    return _cap("tun", True, "TAP device with virtio-net headers and TSO offload")


def _probe_esp(ns: str) -> Capability:
    # cbc(aes)+hmac(sha256) are present almost everywhere, so a failure here is ESP itself.
    argv = [
        "ip",
        *_XFRM,
        "spi",
        "0x1001",
        *_XFRM_MODE,
        "enc",
        "cbc(aes)",
        "0x" + "11" * 16,
        "auth",
        "hmac(sha256)",
        "0x" + "22" * 32,
    ]
    out = run_in_netns(ns, argv)
    if out.returncode != 0:
        return _cap("esp", False, f"xfrm ESP state: {out.stderr.strip()}")
    aead = _xfrm_aead(ns)
    return _cap("esp", True, f"xfrm ESP state created; rfc4106(gcm(aes)): {aead or 'ok'}")


def _xfrm_aead(ns: str) -> str:
    argv = ["ip", *_XFRM, "spi", "0x1002", *_XFRM_MODE]
    argv += ["aead", "rfc4106(gcm(aes))", "0x" + "33" * 20, "128"]
    out = run_in_netns(ns, argv)
    return "" if out.returncode == 0 else out.stderr.strip()


def _probe_gcm(ns: str) -> Capability:
    names = _proc_crypto_names()
    if {"gcm(aes)", "rfc4106(gcm(aes))"} & names:
        return _cap("kernel_gcm", True, "gcm(aes) registered in /proc/crypto")
    config = _kernel_config()
    if config.get("CONFIG_CRYPTO_GCM") in ("y", "m"):
        return _cap("kernel_gcm", True, f"CONFIG_CRYPTO_GCM={config['CONFIG_CRYPTO_GCM']}")
    err = _xfrm_aead(ns)
    if not err:
        return _cap("kernel_gcm", True, "rfc4106(gcm(aes)) xfrm state accepted")
    detail = "not in /proc/crypto"
    if config:
        detail += ", CONFIG_CRYPTO_GCM not set"
    return _cap("kernel_gcm", False, f"{detail}; xfrm says: {err}")


def _probe_ovs() -> Capability:
    tool = shutil.which("ovs-vsctl")
    kernel = _genl_family("ovs_datapath")
    if tool and kernel:
        return _cap("openvswitch", True, f"{tool}; kernel datapath present")
    parts = [
        tool or "ovs-vsctl not found",
        "kernel datapath present" if kernel else "no kernel datapath",
    ]
    return _cap("openvswitch", False, "; ".join(parts))


def _proc_crypto_names() -> set[str]:
    try:
        text = Path("/proc/crypto").read_text()
    except OSError:
        return set()
    return {line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("name")}


def _kernel_config() -> dict[str, str]:
    try:
        raw = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        return {}
    config = {}
    for line in raw.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            config[key] = value
    return config
