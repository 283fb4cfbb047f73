"""The workshop's overlay commands, as plain functions over a running testbed.

Every command takes a :class:`Lab` and returns printable text; refusals and mistakes
raise (:class:`~overlaysim.errors.UserError`, or the manager's
:class:`~overlaysim.core.cluster_errors.ClusterError` subclasses such as
``EncryptionUnsupported``), and the CLI prints their message. The Mininet CLI in
:mod:`overlaysim.lab.cli` only parses arguments and prints; tests call these functions
directly, so both take the same code path.

Containers are the agents' named network namespaces; commands enter them through their
host (``Underlay.cmd`` then ``ip netns exec``), so every packet stays inside the run.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from overlaysim.emu.backend import crash_host, restart_host
from overlaysim.errors import UserError
from overlaysim.lab.vxlan import ESP_PORT, VXLAN_PORT, decode, decode_esp, read_pcap
from overlaysim.world.world import seed_hosts

if TYPE_CHECKING:
    from overlaysim.emu.impair import Impairments
    from overlaysim.emu.net import Underlay
    from overlaysim.emu.testbed import Testbed

#: Seconds ``capture`` waits for packets when nothing is generated alongside it.
CAPTURE_SECONDS = 10.0


class LabError(UserError):
    """A workshop command that cannot be done as typed; the message says why."""


@dataclass(slots=True, kw_only=True)
class Container:
    """A container started from the lab: where it runs and its addresses."""

    name: str
    host: str
    #: Named network namespace inside the host's mount namespace.
    netns: str
    #: Network name -> IPv4 address.
    ips: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Lab:
    """A running testbed plus what the workshop created on it."""

    testbed: Testbed
    underlay: Underlay
    containers: dict[str, Container] = field(default_factory=dict)
    #: Hosts whose agent was crashed from the lab and not restarted yet.
    crashed: set[str] = field(default_factory=set)

    @property
    def impairments(self) -> Impairments:
        return self.underlay.impairments

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(self.underlay.hosts)

    def host(self, name: str) -> str:
        """``name`` if it is a host of the testbed, else a :class:`LabError`."""
        if name not in self.underlay.hosts:
            raise LabError(f"no host {name!r}; hosts: {', '.join(self.underlay.hosts)}")
        return name

    def live_host(self, name: str) -> str:
        """``name`` if its agent runs now."""
        self.host(name)
        if name in self.crashed:
            raise LabError(f"{name} is crashed; 'restart {name}' first")
        return name

    def container(self, name: str) -> Container:
        try:
            return self.containers[name]
        except KeyError:
            known = ", ".join(sorted(self.containers)) or "none yet"
            raise LabError(f"no container {name!r} (containers: {known})") from None


# -- networks ---------------------------------------------------------------------------


def network_create(
    lab: Lab,
    name: str,
    *,
    subnet: str | None = None,
    attachable: bool = False,
    encrypted: bool = False,
) -> str:
    """Create an overlay network through the manager; the line says VNI and subnet."""
    spec = {
        "name": name,
        "subnet": subnet,
        "gateway": None,
        "ip_range": None,
        "aux_addresses": {},
        "attachable": attachable,
        "encrypted": encrypted,
        "mtu": None,
    }
    net = lab.testbed.manager_call("network_create", spec=spec)
    return (
        f"network {net['name']} created: id {net['id'][:12]}, VNI {net['vni']}, subnet "
        f"{net['subnet']}, gateway {net['gateway']}"
        + (", attachable" if net["attachable"] else " (not attachable: 'run' is refused)")
        + (f", encrypted (ESP over UDP {ESP_PORT})" if net.get("encrypted") else "")
    )


def network_ls(lab: Lab) -> str:
    """The manager's networks, one per line."""
    nets = lab.testbed.manager_call("network_ls")
    lines = [f"{'NETWORK ID':<14}{'NAME':<14}{'VNI':<7}{'SUBNET':<18}{'GATEWAY':<16}ATTACHABLE"]
    for n in nets:
        lines.append(
            f"{n['id'][:12]:<14}{n['name']:<14}{n['vni']:<7}{n['subnet']:<18}"
            f"{n['gateway']:<16}{str(n['attachable']).lower()}"
        )
    return "\n".join(lines)


# -- containers -------------------------------------------------------------------------


def run(lab: Lab, container: str, network: str, host: str) -> str:
    """Start ``container`` on ``host``, attached to ``network``."""
    lab.live_host(host)
    if container in lab.containers:
        raise LabError(
            f"container {container} already exists (on {lab.containers[container].host})"
        )
    res = lab.testbed.call(host, "run", container=container, networks=[network])
    att = res["networks"]
    lab.containers[container] = Container(
        name=container,
        host=host,
        netns=res.get("netns") or att[0]["netns"],
        ips={a["network"]: a["ip"] for a in att},
    )
    return "\n".join(
        f"{container} on {host}: {a['network']} {a['ip']}/{a['prefixlen']} mac {a['mac']} "
        f"VNI {a['vni']} MTU {a['mtu']} (namespace {a['netns']})"
        for a in att
    )


def rm(lab: Lab, container: str) -> str:
    """Remove ``container``: its table entries are deleted, then it is unplugged."""
    c = lab.container(container)
    if c.host not in lab.crashed:
        lab.testbed.call(c.host, "rm", container=container)
    del lab.containers[container]
    return f"{container} removed from {c.host}"


def ping(lab: Lab, src: str, dst: str, count: int = 3) -> str:
    """Ping container ``dst`` from container ``src`` on a network they share.

    Without a shared network (Docker isolates networks) every address of ``dst`` is
    tried, and each is expected to fail.
    """
    if count < 1:
        raise LabError(f"ping count must be >= 1, not {count}")
    a, b = lab.container(src), lab.container(dst)
    shared = sorted(set(a.ips) & set(b.ips))
    targets = [(n, b.ips[n]) for n in shared] or sorted(b.ips.items())
    out = []
    if not shared:
        out.append(f"{src} and {dst} share no network: expect no answer")
    for net, ip in targets:
        argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", ip]
        res = _in_container(lab, a, argv, timeout=count + 10)
        out.append(f"{src} ({a.host}) -> {dst} {ip} on {net} ({b.host}):")
        out.append((res.stdout + res.stderr).strip())
    return "\n".join(out)


def ping_received(text: str) -> int:
    """Replies counted in :func:`ping`'s output (summed over its pings)."""
    total = 0
    for line in text.splitlines():
        if "packets transmitted" in line:
            total += int(line.split(",")[1].split()[0])
    return total


# -- looking inside ---------------------------------------------------------------------


def members(lab: Lab, host: str) -> str:
    """``host``'s membership view: state, incarnation and address of every member."""
    view = lab.testbed.call(lab.live_host(host), "members")
    lines = [f"membership seen by {host}:", f"  {'NODE':<10}{'STATE':<10}{'INC':<6}ADDRESS"]
    for name, m in sorted(view.items()):
        me = "  (itself)" if name == host else ""
        lines.append(f"  {name:<10}{m['state']:<10}{m['incarnation']:<6}{m['addr']}{me}")
    return "\n".join(lines)


def tables(lab: Lab, host: str) -> str:
    """``host``'s gossip tables: live endpoint entries per network."""
    view = lab.testbed.call(lab.live_host(host), "tables")
    lines = [f"endpoint tables on {host}:"]
    if not any(view.values()):
        lines.append("  (none: this host is on no network yet, or nobody is)")
    for net, entries in sorted(view.items()):
        lines.append(f"  network {net}:")
        lines.append(f"    {'KEY':<12}{'OWNER':<8}{'LTIME':<7}{'IP':<16}VTEP")
        for key, e in sorted(entries.items()):
            v = e.get("value") or {}
            lines.append(
                f"    {key:<12}{e['owner']:<8}{e['ltime']:<7}{v.get('ip', ''):<16}"
                f"{v.get('vtep', '')}"
            )
    return "\n".join(lines)


def fdb(lab: Lab, host: str, network: str | None = None) -> str:
    """The VXLAN FDB (MAC -> remote VTEP) and neighbour (IP -> MAC) entries in ``host``'s
    kernel, per network: only remote endpoints are programmed."""
    view = lab.testbed.call(lab.live_host(host), "kernel")
    if network is not None:
        if network not in view:
            return f"{host} has no data plane for {network} (no local container on it)"
        view = {network: view[network]}
    if not view:
        return f"{host} has no overlay data plane yet (no local container)"
    lines = []
    for net, k in sorted(view.items()):
        lines.append(f"{host} kernel, network {net}:")
        lines += [f"  fdb   {mac} dst {vtep}" for mac, vtep in k.get("fdb", [])] or ["  fdb   -"]
        lines += [f"  neigh {ip} lladdr {mac}" for ip, mac in k.get("neigh", [])] or ["  neigh -"]
    return "\n".join(lines)


def capture(
    lab: Lab,
    host: str,
    count: int = 4,
    *,
    during: Callable[[], str] | None = None,
    seconds: float = CAPTURE_SECONDS,
) -> str:
    """Capture ``count`` overlay packets on ``host``'s underlay ``eth0`` and decode them:
    VXLAN (UDP 4789) with its VNI and inner addresses, ESP (UDP 4500, encrypted
    networks) with its SPI, sequence number and length.

    ``during`` (e.g. a ping) runs once the capture listens; its text comes first. The
    capture ends after ``count`` packets or ``seconds``, whichever comes first. ESP
    packets are matched to the network and key of ``host``'s SAs where it knows them.
    """
    lab.host(host)
    if count < 1:
        raise LabError(f"capture count must be >= 1, not {count}")
    ifname = lab.underlay.interfaces(host)[0]
    argv = [
        "timeout", "-s", "INT", f"{seconds:g}",
        "tcpdump", "-i", ifname, "-n", "-U", "-s", "256", "-c", str(count),
        "-w", "-", "udp", "port", str(VXLAN_PORT), "or", "udp", "port", str(ESP_PORT),
    ]  # fmt: skip
    proc = lab.underlay.popen(
        host, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    head = []
    try:
        err = _wait_listening(proc)
        if during is not None:
            head.append(during())
        out, rest = proc.communicate(timeout=seconds + 5)
        err += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    try:
        frames = read_pcap(out)
    except ValueError as exc:
        raise LabError(f"capture on {host}: {exc}; tcpdump said: {err.decode().strip()}") from None
    vxlan = [p for p in (decode(f) for f in frames) if p is not None]
    esp = [p for p in (decode_esp(f) for f in frames) if p is not None]
    where = f"on {host} {ifname}"
    if esp and vxlan:
        title = (
            f"{len(vxlan) + len(esp)} packet(s) {where}: {len(vxlan)} VXLAN (UDP {VXLAN_PORT}), "
            f"{len(esp)} ESP (UDP {ESP_PORT}):"
        )
    elif esp:
        title = f"{len(esp)} ESP packet(s) {where} (UDP {ESP_PORT}):"
    else:
        title = f"{len(vxlan)} VXLAN packet(s) {where} (UDP {VXLAN_PORT}):"
    lines = [*head, title]
    lines += [f"  {p.line()}" for p in vxlan]
    sas = _sa_names(lab, host) if esp else {}
    lines += [f"  {p.line()}{sas.get(p.spi, '')}" for p in esp]
    if esp:
        lines.append("  (ESP: the frames inside are sealed; only SPI and sequence are in clear)")
    if not vxlan and not esp:
        lines.append("  (none: is traffic crossing this host? try 'capture h2 4 while c1 ping c2')")
    return "\n".join(lines)


def _sa_names(lab: Lab, host: str) -> dict[int, str]:
    """SPI -> ", network N, key 0x..." for the SAs ``host``'s agent holds (both ways)."""
    if host in lab.crashed:
        return {}
    try:
        state = lab.testbed.call(host, "crypto")
    except Exception:  # noqa: BLE001 - naming SAs is a courtesy; the capture stands alone
        return {}
    names = {}
    for net, info in (state.get("networks") or {}).items():
        for sa in info["sas"]["outbound"] + info["sas"]["inbound"]:
            names[int(sa["spi"])] = f", network {net}, key {_tag(sa['tag'])}"
    return names


def _wait_listening(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> bytes:
    """Wait for tcpdump's "listening on" line, so no traffic starts before the capture.

    Returns what was read from its stderr (kept for error messages).
    """
    import select

    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while b"listening on" not in seen and proc.poll() is None:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stderr], [], [], left)[0]:
            break
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    return seen


# -- encryption -------------------------------------------------------------------------

#: Drop reasons of the encrypted data path, in the order ``crypto`` prints them: the
#: sender's side first (nothing to send it to, too big, out of sequence space), then
#: what the receiver refused.
_DROPS = (
    ("drop_no_route", "no route"), ("drop_flood", "flood"), ("drop_oversize", "oversize"),
    ("drop_rekey", "rekey"), ("drop_send_error", "send error"),
    ("drop_bad_packet", "malformed"), ("drop_auth_failed", "auth failed"),
    ("drop_replay", "replay"), ("drop_unknown_spi", "unknown SPI"),
)  # fmt: skip


def _tag(tag: int | None) -> str:
    return "-" if tag is None else f"{int(tag):#010x}"


def crypto(lab: Lab, host: str) -> str:
    """``host``'s encrypted data path: keys, and per encrypted network its TAP, frames and
    bytes sealed and opened, every drop reason, and cleartext VXLAN dropped for its VNI."""
    state = lab.testbed.call(lab.live_host(host), "crypto")
    if not state.get("port"):
        return (
            f"{host} has no encrypted data path: it holds no network keys yet (it fetches "
            f"them with its first container on an encrypted network)"
        )
    keys = [int(k) for k in state.get("keys") or []]
    primary = state.get("primary")
    ring = ", ".join(_tag(k) + (" (primary)" if k == primary else "") for k in keys)
    lines = [
        f"encrypted data path on {host} (ESP in UDP {state['port']}, AES-GCM-128):",
        f"  keys: generation {state.get('generation')}, primary {_tag(primary)}; "
        f"ring, oldest first: {ring or 'empty'}",
    ]
    clear = {int(k): int(v) for k, v in (state.get("clear_vxlan_dropped") or {}).items()}
    nets = state.get("networks") or {}
    if not nets:
        lines.append("  (no container on an encrypted network here: no TAP, nothing sealed)")
    attributed = dict.fromkeys(("drop_unknown_spi", "drop_bad_packet"), 0)
    for name, net in sorted(nets.items()):
        c = net["counters"]
        peers = sorted({sa["peer"] for sa in net["sas"]["outbound"]})
        lines += [
            f"  network {name} (VNI {net['vni']}), TAP {net['tap']}, "
            f"peers {', '.join(peers) or 'none yet'}:",
            f"    sealed  {c['tx_frames']:>9} frames {c['tx_bytes']:>13,} bytes",
            f"    opened  {c['rx_frames']:>9} frames {c['rx_bytes']:>13,} bytes",
            f"    ARP answered locally {c['arp_proxied']}",
            "    drops   " + ", ".join(f"{label} {c[k]}" for k, label in _DROPS[:5]),
            "            " + ", ".join(f"{label} {c[k]}" for k, label in _DROPS[5:]),
            f"    cleartext VXLAN with VNI {net['vni']} dropped: {clear.get(net['vni'], 0)}",
        ]
        for k in attributed:
            attributed[k] += c[k]
    total = state.get("counters") or {}
    lines.append(
        "  no network's SPI (dropped before any network): unknown SPI "
        f"{total.get('drop_unknown_spi', 0) - attributed['drop_unknown_spi']}, malformed "
        f"{total.get('drop_bad_packet', 0) - attributed['drop_bad_packet']}"
    )
    return "\n".join(lines)


def rotate(lab: Lab) -> str:
    """Rotate the network keys at the manager, then have every running agent fetch the
    new ring at once, so this rotation is finished everywhere before the next one.

    The former ``next`` key becomes primary (every agent has received with it since the
    last rotation); a new key becomes ``next``; the oldest is retired.
    """
    tb = lab.testbed
    if tb.manager_host in lab.crashed:
        raise LabError(f"the manager's host {tb.manager_host} is crashed; restart it first")
    old = tb.manager_call("keys")
    hosts = [h for h in lab.hosts if h not in lab.crashed and h in tb.running()]
    new, answers = tb.rotate_keys(hosts)
    retired = {k["tag"] for k in old["keys"]} - {k["tag"] for k in new["keys"]}
    lines = [
        f"keys rotated at the manager: generation {old['generation']} -> "
        f"{new['generation']}, primary {_tag(old['primary'])} -> {_tag(new['primary'])} "
        f"(new next key {_tag(new['keys'][-1]['tag'])}, retired "
        f"{', '.join(_tag(t) for t in sorted(retired)) or 'none'})"
    ]
    for h, a in answers.items():
        late = "" if a["generation"] == new["generation"] else "  (not the new ring: retry)"
        lines.append(
            f"  {h}: installed generation {a['generation']}, primary {_tag(a['primary'])}{late}"
        )
    lines += [f"  {h}: crashed, fetches the ring when restarted" for h in sorted(lab.crashed)]
    if not any(n.get("encrypted") for n in tb.manager_call("network_ls")):
        lines.append("  (no encrypted network yet: nothing is sealed with these keys)")
    return "\n".join(lines)


# -- breaking things --------------------------------------------------------------------


def loss(lab: Lab, percent: float) -> str:
    """Drop ``percent`` % of packets arriving at every host (0 removes it)."""
    if percent == 0:
        lab.impairments.clear()
        return "loss removed: every packet is delivered again"
    if percent > 99.99:
        # The random-drop rule compares a number in [0, 10000) with percent * 100, so
        # its largest threshold is 9999; cutting hosts off entirely is 'partition'.
        raise LabError(f"loss {percent:g}: at most 99.99 %; to cut hosts off use 'partition'")
    lab.impairments.loss(percent)
    return (
        f"loss {percent:g}%: each packet is dropped with that probability on arrival at its "
        f"destination host (nftables random drop on the underlay)"
    )


def partition(lab: Lab, groups: Sequence[Sequence[str]]) -> str:
    """Split the hosts into ``groups``; hosts in no group are cut off from everyone."""
    if not groups or not all(groups):
        raise LabError("partition needs groups of hosts, e.g. 'partition h1,h2 h3'")
    for g in groups:
        for h in g:
            lab.host(h)
    lab.impairments.partition([list(g) for g in groups])
    named = {h for g in groups for h in g}
    alone = [h for h in lab.hosts if h not in named]
    text = "partitioned: " + " | ".join(",".join(g) for g in groups)
    return text + (f" (isolated: {','.join(alone)})" if alone else "")


def heal(lab: Lab) -> str:
    """End the partition."""
    lab.impairments.heal()
    return "healed: every host reaches every other again"


def crash(lab: Lab, host: str) -> str:
    """SIGKILL ``host``'s agent and silence its underlay links (a machine that died).

    Its containers go with it; the others notice through failure detection.
    """
    lab.live_host(host)
    crash_host(lab.testbed, host)
    lab.crashed.add(host)
    gone = sorted(n for n, c in lab.containers.items() if c.host == host)
    for name in gone:
        del lab.containers[name]
    note = f"; containers gone with it: {', '.join(gone)}" if gone else ""
    warn = ""
    if host == lab.testbed.manager_host:
        warn = " (it served the manager: networks and addresses are lost until restart)"
    return f"{host} crashed: agent killed, links silenced{note}{warn}"


def restart(lab: Lab, host: str) -> str:
    """Restore ``host``'s links and start a new boot of its agent (it rejoins)."""
    lab.host(host)
    if host not in lab.crashed:
        raise LabError(f"{host} is running; 'crash {host}' first")
    tb = lab.testbed
    seeds = seed_hosts(host, tb.managers, [h for h in lab.hosts if h not in lab.crashed])
    restart_host(tb, host, seeds)
    lab.crashed.discard(host)
    return f"{host} restarted (boot {tb.agents[host].boot}): it rejoins through {','.join(seeds)}"


def wait_members(
    lab: Lab, host: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> dict[str, Any]:
    """Poll ``host``'s membership view until ``predicate`` holds (for tests and scripts)."""
    deadline = time.monotonic() + timeout
    while True:
        view = lab.testbed.call(host, "members")
        if predicate(view) or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def _in_container(
    lab: Lab, c: Container, argv: Sequence[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    if c.host in lab.crashed:
        raise LabError(f"{c.name} is gone: its host {c.host} is crashed")
    return lab.underlay.cmd(c.host, ["ip", "netns", "exec", c.netns, *argv], timeout=timeout)
