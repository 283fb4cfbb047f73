"""User-space encrypted data path: TAP frames sealed as ESP-in-UDP between VTEPs.

For each encrypted network on a host the sandbox bridge gets a TAP port instead of a
VXLAN device. Frames the bridge sends to the TAP are read here, looked up by
destination MAC (the static FDB the endpoint tables give us), sealed with the
network's :class:`~overlaysim.core.esp.Keyring` and sent as one UDP datagram to the
peer VTEP's ESP port. The peer opens them and writes the frame into its own TAP.

* One UDP socket per host (port :data:`ESP_PORT`), one receive thread; one send
  thread per network. Threads block in ``poll`` and then drain their descriptor
  until it is empty, so a busy path makes one system call per frame.
* Every SPI is derived with the network's VNI as scope, so the SPI alone names the
  network on receive; no header beyond ESP is needed and analysers decode it as is.
* GSO super-frames (up to ~64 KB) travel as one sealed datagram that the underlay
  fragments; the receiver hands them to its TAP as GSO again (see
  :func:`overlaysim.agent.frames.rx_vnet_header`).
* ARP requests for known remote endpoints are answered locally (proxy ARP, as the
  VXLAN device does for plain networks). Other broadcast and unknown unicast frames
  are dropped and counted: nothing is ever flooded in clear or sealed.
* Fail closed: anything that does not open (bad format, wrong or retired key,
  replay, tampering) is dropped and counted per reason, never delivered. An nftables
  rule in the host namespace drops and counts cleartext VXLAN carrying the VNI of an
  encrypted network (:class:`ClearVxlanGuard`).

Key changes come from the agent (:meth:`EspTunnel.install_keys`); SAs of keys that
stay keep their sequence numbers and replay windows.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from overlaysim.agent import frames, names
from overlaysim.agent.tap import open_tap, udp_socket
from overlaysim.core import esp

log = logging.getLogger(__name__)

#: UDP port of ESP-in-UDP (RFC 3948's NAT-traversal port; analysers decode it as ESP).
ESP_PORT = 4500
#: Largest UDP payload over IPv4.
MAX_UDP_PAYLOAD = 65507
#: Largest frame that still fits one sealed datagram.
MAX_FRAME = MAX_UDP_PAYLOAD - esp.OVERHEAD_MAX
#: Read size: a GSO super-frame plus its virtio-net header.
_READ = 65536 + frames.VNET_HDR_LEN + 64
#: Replay window: wide enough for reordering among fragments of back-to-back frames.
WINDOW = 256

#: Counter names (per network, and summed in :meth:`EspTunnel.counters`).
COUNTERS = (
    "tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "arp_proxied",
    "drop_no_route", "drop_flood", "drop_oversize", "drop_rekey", "drop_send_error",
    "drop_bad_packet", "drop_auth_failed", "drop_replay", "drop_unknown_spi",
)  # fmt: skip

_RX_REASON = {
    esp.BadPacket: "drop_bad_packet",
    esp.AuthFailed: "drop_auth_failed",
    esp.Replay: "drop_replay",
    esp.UnknownSpi: "drop_unknown_spi",
}


class TunnelError(RuntimeError):
    """The encrypted data path could not be set up (the network must be refused)."""


@dataclass(eq=False)
class _Net:
    vni: int
    mtu: int
    ifname: str
    fd: int
    keyring: esp.Keyring
    fdb: dict[bytes, str] = field(default_factory=dict)  # MAC -> VTEP
    neigh: dict[bytes, bytes] = field(default_factory=dict)  # IPv4 -> MAC
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    thread: threading.Thread | None = None
    closed: bool = False
    # Its own wake-up pipe: written once to stop this send loop. Shared with other
    # loops, the unread byte would keep every poll() returning at once (a busy spin).
    wake: tuple[int, int] = field(default_factory=lambda: os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))


class ClearVxlanGuard:
    """nftables table :data:`~overlaysim.agent.names.ESP_TABLE` that drops and counts cleartext VXLAN per VNI.

    An encrypted network has no VXLAN device, so the kernel would drop such packets
    anyway, silently; this makes the drop explicit and countable. ``netns`` is a
    namespace path (``None``: the caller's).
    """

    TABLE = names.ESP_TABLE

    def __init__(self, vxlan_port: int, netns: str | None = None) -> None:
        self.vxlan_port = vxlan_port
        self.netns = netns
        self._vnis: set[int] = set()
        self._made = False

    def _nft(self, script: str, *args: str) -> str:
        nft = shutil.which("nft")
        if nft is None:
            raise TunnelError("nft (nftables) is not installed: cannot guard encrypted VNIs")
        cmd = [nft, *args] if args else [nft, "-f", "-"]
        if self.netns is not None:
            cmd = ["nsenter", f"--net={self.netns}", *cmd]
        proc = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            raise TunnelError(f"nft {' '.join(args) or '-f'}: {proc.stderr.strip()}")
        return proc.stdout

    def add(self, vni: int) -> None:
        """Drop cleartext VXLAN with ``vni`` from now on."""
        if vni in self._vnis:
            return
        lines = []
        if not self._made:
            lines += [
                f"add table inet {self.TABLE}",
                f"add chain inet {self.TABLE} input {{ type filter hook input priority -10; }}",
            ]
        # VNI = 24 bits at bit 96 of the transport header (UDP 8 bytes, VXLAN flags 4).
        lines += [
            f"add counter inet {self.TABLE} clear_vxlan_{vni}",
            f"add rule inet {self.TABLE} input udp dport {self.vxlan_port} @th,96,24 {vni} "
            f'counter name "clear_vxlan_{vni}" drop',
        ]
        self._nft("\n".join(lines) + "\n")
        self._made = True
        self._vnis.add(vni)

    def dropped(self) -> dict[int, int]:
        """Packets dropped per VNI so far."""
        if not self._made:
            return {}
        out = json.loads(self._nft("", "-j", "list", "counters", "table", "inet", self.TABLE))
        counts = {}
        for item in out.get("nftables", []):
            c = item.get("counter")
            if c and c.get("name", "").startswith("clear_vxlan_"):
                counts[int(c["name"].rpartition("_")[2])] = int(c.get("packets", 0))
        return counts

    def close(self) -> None:
        """Delete the table (idempotent; a namespace already gone is fine)."""
        if self._made:
            try:
                self._nft(f"delete table inet {self.TABLE}\n")
            except (TunnelError, OSError) as exc:
                log.debug("nft cleanup: %s", exc)
            self._made = False
            self._vnis.clear()


class EspTunnel:
    """The encrypted data path of one host (see the module docstring).

    ``local`` is the host's underlay IPv4 address (its VTEP); ``netns`` a namespace
    path for the socket and the nftables guard (``None``: the caller's namespace).
    Nothing touches the kernel until the first :meth:`add_network`.
    """

    def __init__(
        self,
        *,
        local: str,
        port: int = ESP_PORT,
        vxlan_port: int = 4789,
        netns: str | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.local = local
        self.port = port
        self.netns = netns
        self.guard = ClearVxlanGuard(vxlan_port, netns)
        self._on_error = on_error or (lambda text: log.warning("%s", text))
        self._nets: dict[int, _Net] = {}
        self._by_spi: dict[int, _Net] = {}
        self._keys: tuple[list[esp.Key], int] | None = None
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._rx: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        # High half of every IV this boot sends: sequence numbers restart at 1 after a
        # crash, the prefix does not repeat (random), so no nonce is used twice.
        self._iv_prefix = int.from_bytes(os.urandom(4), "big")
        # Drops no network can be charged with, plus the counts of removed networks, so
        # the host's totals never go down.
        self._host_stats = dict.fromkeys(COUNTERS, 0)

    # --- keys --------------------------------------------------------------------------

    @property
    def has_keys(self) -> bool:
        """True once a key ring was installed."""
        return self._keys is not None

    @property
    def ring(self) -> tuple[list[int], int | None]:
        """Tags of the installed keys (oldest first) and the primary tag."""
        if self._keys is None:
            return [], None
        return [k.tag for k in self._keys[0]], self._keys[1]

    def install_keys(self, keys: list[esp.Key], primary: int) -> None:
        """Install the cluster's ring (oldest first) on every network, now and later."""
        self._keys = (list(keys), primary)
        with self._lock:
            for net in self._nets.values():
                net.keyring.install(keys, primary)
            self._reindex()

    # --- networks --------------------------------------------------------------------

    def add_network(self, vni: int, ifname: str, mtu: int, sandbox: str) -> None:
        """Create TAP ``ifname`` in namespace path ``sandbox`` and start its send loop.

        The caller enslaves the TAP to the sandbox bridge. Raises :class:`TunnelError`
        when no keys are installed or the kernel refuses: the network must then be
        refused, never run in clear.
        """
        if self._keys is None:
            raise TunnelError("no network keys: the manager has not handed this node any")
        if vni in self._nets:
            raise TunnelError(f"VNI {vni} already has an encrypted path here")
        self._start()
        self.guard.add(vni)
        try:
            fd = open_tap(ifname, sandbox)
        except OSError as exc:
            raise TunnelError(f"TAP for VNI {vni}: {exc}") from exc
        ring = esp.Keyring(self.local, window=WINDOW, scope=vni, iv_prefix=self._iv_prefix)
        ring.install(*self._keys)
        net = _Net(vni=vni, mtu=mtu, ifname=ifname, fd=fd, keyring=ring)
        with self._lock:
            self._nets[vni] = net
            self._reindex()
        net.thread = threading.Thread(target=self._tx_loop, args=(net,), name=f"esp-tx-{vni}")
        net.thread.daemon = True
        net.thread.start()

    def remove_network(self, vni: int) -> None:
        """Stop the network's send loop and close its TAP (the device goes with it)."""
        with self._lock:
            net = self._nets.pop(vni, None)
            self._reindex()
        if net is None:
            return
        net.closed = True
        _wake(net.wake[1])
        if net.thread is not None:
            net.thread.join(timeout=5)
        for fd in (net.fd, *net.wake):
            os.close(fd)
        for k, v in net.stats.items():
            self._host_stats[k] += v

    def set_remote(self, vni: int, fdb: dict[str, str], neigh: dict[str, str]) -> None:
        """Replace the network's forwarding state: ``{mac: vtep}`` and ``{ip: mac}``."""
        net = self._nets.get(vni)
        if net is None:
            return
        new_fdb = {frames.mac_bytes(mac): vtep for mac, vtep in fdb.items()}
        new_neigh = {socket.inet_aton(ip): frames.mac_bytes(mac) for ip, mac in neigh.items()}
        peers = set(new_fdb.values())
        with self._lock:
            for gone in net.keyring.peers - peers:
                net.keyring.remove_peer(gone)
            for peer in peers - net.keyring.peers:
                net.keyring.add_peer(peer)
            self._reindex()
            net.fdb, net.neigh = new_fdb, new_neigh  # swapped whole: the loops never see a mix

    def reset_peer(self, vtep: str) -> None:
        """VTEP ``vtep`` restarted (its sequence numbers begin again): fresh replay
        windows for it on every network; our own counters towards it continue."""
        with self._lock:
            for net in self._nets.values():
                if vtep in net.keyring.peers:
                    net.keyring.reset_peer(vtep)
            self._reindex()

    def entries(self, vni: int) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """Forwarding state of ``vni``: ``{(mac, vtep)}``, ``{(ip, mac)}``."""
        net = self._nets.get(vni)
        if net is None:
            return set(), set()
        fdb = {(frames.mac_text(m), v) for m, v in net.fdb.items()}
        neigh = {(socket.inet_ntoa(i), frames.mac_text(m)) for i, m in net.neigh.items()}
        return fdb, neigh

    def counters(self, vni: int | None = None) -> dict[str, int]:
        """Counters of network ``vni``, or the host's totals since start (``None``)."""
        if vni is not None:
            net = self._nets.get(vni)
            return dict(net.stats) if net else dict.fromkeys(COUNTERS, 0)
        out = dict(self._host_stats)
        for net in list(self._nets.values()):
            for k, v in net.stats.items():
                out[k] += v
        return out

    def spis(self, vni: int) -> dict[str, list[dict[str, object]]]:
        """Outbound and inbound SAs of ``vni`` (SPI, peer, key tag) for analysers."""
        net = self._nets[vni]
        ring = net.keyring
        out: dict[str, list[dict[str, object]]] = {"outbound": [], "inbound": []}
        for peer in sorted(ring.peers):
            for key in ring.keys:
                out["outbound"].append(
                    {
                        "peer": peer,
                        "tag": key.tag,
                        "spi": esp.derive_spi(self.local, peer, key.tag, vni),
                    }
                )
                out["inbound"].append(
                    {
                        "peer": peer,
                        "tag": key.tag,
                        "spi": esp.derive_spi(peer, self.local, key.tag, vni),
                    }
                )
        return out

    # --- lifecycle -----------------------------------------------------------------------

    def _start(self) -> None:
        if self._sock is not None:
            return
        try:
            self._sock = udp_socket(self.local, self.port, self.netns)
        except OSError as exc:
            raise TunnelError(f"ESP socket {self.local}:{self.port}: {exc}") from exc
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._rx = threading.Thread(target=self._rx_loop, name="esp-rx", daemon=True)
        self._rx.start()

    def close(self) -> None:
        """Stop every loop, close every TAP and the socket, remove the nft table."""
        self._stopping = True
        for vni in list(self._nets):
            self.remove_network(vni)
        if self._wake_w >= 0:
            _wake(self._wake_w)
        if self._rx is not None:
            self._rx.join(timeout=5)
            self._rx = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self.guard.close()

    def _reindex(self) -> None:
        # Caller holds the lock. Built aside and swapped, so the receive loop never waits.
        index: dict[int, _Net] = {}
        for net in self._nets.values():
            for spi in net.keyring.inbound_spis():
                if spi in index:
                    self._on_error(f"SPI {spi:#010x} of VNI {net.vni} collides; packets dropped")
                index[spi] = net
        self._by_spi = index

    # --- packet loops ----------------------------------------------------------------------

    def _tx_loop(self, net: _Net) -> None:
        poller = select.poll()
        poller.register(net.fd, select.POLLIN)
        poller.register(net.wake[0], select.POLLIN)
        read, fd, stats = os.read, net.fd, net.stats
        sock, port, hdr_len = self._sock, self.port, frames.VNET_HDR_LEN
        assert sock is not None
        while not (net.closed or self._stopping):
            poller.poll(1000)
            while True:
                try:
                    buf = read(fd, _READ)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in (errno.EBADF, errno.EIO) or net.closed:
                        return
                    raise
                frame = buf[hdr_len:]
                dst = frame[:6]
                if dst[0] & 1:
                    target = frames.arp_target(frame)
                    mac = net.neigh.get(target) if target is not None else None
                    if mac is None:
                        stats["drop_flood"] += 1
                        continue
                    reply = frames.arp_reply(frame, mac)
                    os.write(fd, bytes(hdr_len) + reply)
                    stats["arp_proxied"] += 1
                    continue
                vtep = net.fdb.get(dst)
                if vtep is None:
                    stats["drop_no_route"] += 1
                    continue
                if len(frame) > MAX_FRAME:
                    stats["drop_oversize"] += 1
                    continue
                try:
                    packet = net.keyring.seal(vtep, frame)
                except esp.RekeyRequired:
                    stats["drop_rekey"] += 1
                    continue
                except esp.EspUsageError:  # peer removed between lookup and seal
                    stats["drop_no_route"] += 1
                    continue
                try:
                    sock.sendto(packet, (vtep, port))
                except BlockingIOError:
                    poller_out = select.poll()
                    poller_out.register(sock, select.POLLOUT)
                    poller_out.poll(100)
                    try:
                        sock.sendto(packet, (vtep, port))
                    except OSError:
                        stats["drop_send_error"] += 1
                        continue
                except OSError:
                    stats["drop_send_error"] += 1
                    continue
                stats["tx_frames"] += 1
                stats["tx_bytes"] += len(frame)

    def _rx_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        recv = sock.recv
        parse = esp.parse_header
        rx_header = frames.rx_vnet_header
        host_stats = self._host_stats
        while not self._stopping:
            poller.poll(1000)
            while True:
                try:
                    data = recv(MAX_UDP_PAYLOAD)
                except BlockingIOError:
                    break
                except OSError:
                    if self._stopping:
                        return
                    continue  # ICMP errors of earlier sends surface here
                try:
                    spi, _ = parse(data)
                except esp.BadPacket:
                    host_stats["drop_bad_packet"] += 1
                    continue
                net = self._by_spi.get(spi)
                if net is None:
                    host_stats["drop_unknown_spi"] += 1
                    continue
                try:
                    frame = net.keyring.inbound(spi).open(data)
                except esp.EspError as exc:
                    net.stats[_RX_REASON.get(type(exc), "drop_bad_packet")] += 1
                    continue
                if len(frame) < frames.ETH_LEN:
                    net.stats["drop_bad_packet"] += 1
                    continue
                try:
                    os.writev(net.fd, [rx_header(frame, net.mtu), frame])
                except OSError:
                    if net.closed:
                        continue
                    net.stats["drop_send_error"] += 1
                    continue
                net.stats["rx_frames"] += 1
                net.stats["rx_bytes"] += len(frame)


def _wake(fd: int) -> None:
    """Make a loop's ``poll`` return (the loop then sees its stop flag)."""
    try:
        os.write(fd, b"x")
    except BlockingIOError:
        pass  # a byte is already waiting: the loop will wake anyway
