"""User-space encrypted data path: TAP frames sealed as ESP-in-UDP between VTEPs.

For each encrypted network on a host the sandbox bridge gets a TAP port instead of a
VXLAN device. Frames the bridge sends to the TAP are read here, looked up by
destination MAC (the static FDB the endpoint tables give us), sealed with the
network's :class:`~overlaysim.core.esp.Keyring` and sent as one UDP datagram to the
peer VTEP's ESP port. The peer opens them and writes the frame into its own TAP.

* One UDP socket per host (port :data:`ESP_PORT`), one receive thread; one send
  thread per network. Threads block in ``poll`` and then drain their descriptor
  until it is empty.
* Every SPI is derived with the network's VNI as scope, so the SPI alone names the
  network on receive; no header beyond ESP is needed and analysers decode it as is.
* GSO super-frames (up to ~64 KB) leave in one of two ways (:data:`SEND_MODES`):
  sealed whole as one datagram that the underlay IP-fragments (``whole``, the
  default), or cut into the TCP segments TSO would make (:mod:`overlaysim.agent.segment`),
  each sealed as its own ESP packet that fits the underlay MTU and handed to the kernel
  up to 64 at a time in one ``sendmsg`` with UDP GSO (``UDP_SEGMENT``; ``gso``). The
  receiving socket has ``UDP_GRO`` on, so one ``recvmsg`` returns a run of packets;
  their segments are merged back into one super-frame per flow and written to the TAP
  as GSO. The receiver takes every mode. ``whole`` is the default because in CPython
  the per-packet work of ``gso`` (~45 AEAD calls and header rewrites per 64 KB) costs
  more than the kernel's fragmentation it saves (docs/encryption.md, Performance).
* ARP requests for known remote endpoints are answered locally (proxy ARP, as the
  VXLAN device does for plain networks). Other broadcast and unknown unicast frames
  are dropped and counted: nothing is ever flooded in clear or sealed.
* Fail closed: anything that does not open (bad format, wrong or retired key,
  replay, tampering) is dropped and counted per reason, never delivered. An nftables
  rule in the host namespace drops and counts cleartext VXLAN carrying the VNI of an
  encrypted network (:class:`~overlaysim.agent.vxlan_guard.ClearVxlanGuard`). UDP GSO/GRO
  and sends that survive a full buffer are :mod:`overlaysim.agent.udp_gso`.

Key changes come from the agent (:meth:`EspTunnel.install_keys`); SAs of keys that
stay keep their sequence numbers and replay windows.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from overlaysim.agent import frames, segment, udp_gso
from overlaysim.agent.tap import open_tap, udp_socket
from overlaysim.agent.vxlan_guard import ClearVxlanGuard, GuardError
from overlaysim.core import esp

log = logging.getLogger(__name__)

#: UDP port of ESP-in-UDP (RFC 3948's NAT-traversal port; analysers decode it as ESP).
ESP_PORT = 4500
#: Largest frame that still fits one sealed datagram.
MAX_FRAME = udp_gso.MAX_UDP_PAYLOAD - esp.OVERHEAD_MAX
#: Read size: a GSO super-frame plus its virtio-net header.
_READ = 65536 + frames.VNET_HDR_LEN + 64
#: Replay window: wide enough for reordering among the packets of back-to-back frames.
WINDOW = 256
#: Receive size: a whole GRO run of packets (the kernel caps it at 64 KB).
_RECV = 65536

#: How super-frames leave (the benchmark switches modes to measure each step):
#: ``whole`` seals the super-frame as one datagram that the underlay fragments (~45
#: fragments to send and reassemble per 64 KB; the default, fastest here); ``gso`` cuts
#: it into segments, seals each and sends up to 64 packets per system call
#: (``UDP_SEGMENT``), so nothing is fragmented; ``segments`` does the same with one
#: ``sendto`` per packet.
SEND_GSO, SEND_SEGMENTS, SEND_WHOLE = "gso", "segments", "whole"
SEND_MODES = (SEND_GSO, SEND_SEGMENTS, SEND_WHOLE)

#: Counter names (per network, and summed in :meth:`EspTunnel.counters`).
COUNTERS = (
    "tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "arp_proxied",
    "drop_no_route", "drop_flood", "drop_oversize", "drop_rekey", "drop_send_error",
    "drop_bad_packet", "drop_auth_failed", "drop_replay", "drop_unknown_spi",
    "tx_calls", "rx_calls", "tx_next_key",
)  # fmt: skip
# tx_frames/rx_frames count ESP packets (one frame or TCP segment each); tx_calls and
# rx_calls the send and receive system calls that carried them (rx_calls: host-wide);
# tx_next_key the ESP packets sealed with the next key because the primary's SA was spent.

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
        max_seq: int = esp.MAX_SEQ,
        on_rekey: Callable[[], None] | None = None,
    ) -> None:
        self.local = local
        # Called (from a send thread) when an SA runs out of sequence numbers: seal with
        # the next key and ask for a rotation. None: drop until the rotation timer (the
        # ``docker`` variant, moby#52005).
        self._on_rekey = on_rekey
        self._rekey_asked: int | None = None  # primary tag a rotation was asked for
        #: Highest sequence number of each outbound SA (:data:`esp.MAX_SEQ` unless lowered).
        self.max_seq = esp.check_max_seq(max_seq)
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
        #: One of :data:`SEND_MODES`; read for every frame, so it may change at any time.
        self.send_mode = SEND_WHOLE
        #: Merge received segments back into super-frames before the TAP (user-space GRO).
        self.coalesce = True

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
        try:
            self.guard.add(vni)
        except GuardError as exc:
            raise TunnelError(str(exc)) from exc
        try:
            fd = open_tap(ifname, sandbox)
        except OSError as exc:
            raise TunnelError(f"TAP for VNI {vni}: {exc}") from exc
        ring = esp.Keyring(
            self.local,
            window=WINDOW,
            scope=vni,
            iv_prefix=self._iv_prefix,
            max_seq=self.max_seq,
        )
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
        try:  # a run of packets per recvmsg; without it, one each (still correct)
            udp_gso.enable_gro(self._sock)
        except OSError as exc:
            log.info("UDP GRO not available (%s): receiving packet by packet", exc)
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
        hdr_len = frames.VNET_HDR_LEN
        cut = segment.tcp_segments
        vnet_unpack = frames.VNET_HDR.unpack_from
        tcp_gso = (frames.GSO_TCPV4, frames.GSO_TCPV6)
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
                mode = self.send_mode
                pieces = None
                if mode != SEND_WHOLE and buf[1] & 0x7F in tcp_gso:
                    pieces = cut(frame, vnet_unpack(buf)[3])  # gso_size: the segment size
                if pieces is None:
                    if len(frame) > MAX_FRAME:
                        stats["drop_oversize"] += 1
                        continue
                    pieces = [frame]
                try:
                    packets = net.keyring.seal_many(vtep, pieces)
                except esp.RekeyRequired:
                    packets = self._seal_next_key(net, vtep, pieces)
                    if packets is None:
                        stats["drop_rekey"] += 1
                        continue
                    stats["tx_next_key"] += len(packets)
                except esp.EspUsageError:  # peer removed between lookup and seal
                    stats["drop_no_route"] += 1
                    continue
                sent, calls = self._send(packets, vtep, mode == SEND_GSO)
                stats["tx_calls"] += calls
                stats["tx_frames"] += sent
                stats["tx_bytes"] += sum(len(p) for p in pieces[:sent])
                if sent < len(packets):
                    stats["drop_send_error"] += len(packets) - sent

    def _seal_next_key(self, net: _Net, vtep: str, pieces: list[bytes]) -> list[bytes] | None:
        """The primary's SA to ``vtep`` is spent: seal with the next key and ask for a
        rotation (once per primary), or ``None`` (drop) when that is off or impossible."""
        if self._on_rekey is None:
            return None
        primary = net.keyring.primary
        if self._rekey_asked != primary:
            self._rekey_asked = primary
            self._on_rekey()
        try:
            return net.keyring.seal_many_next_key(vtep, pieces)
        except esp.EspUsageError:  # no next key, it is spent too, or the peer went
            return None

    def _send(self, packets: list[bytes], vtep: str, gso: bool) -> tuple[int, int]:
        """Send ``packets`` to ``vtep``: how many left (the rest failed), in how many
        system calls."""
        sock = self._sock
        assert sock is not None
        addr = (vtep, self.port)
        if len(packets) == 1 or not gso:
            return udp_gso.send_each(sock, packets, addr)
        sent, calls, err = udp_gso.send_segmented(sock, packets, addr)
        if err and sent == 0 and self.send_mode == SEND_GSO and err in udp_gso.NO_GSO:
            # No UDP GSO in this kernel or on this path, or packets larger than the
            # underlay MTU (EINVAL): one packet per system call from now on.
            self._on_error(
                f"UDP GSO send refused ({errno.errorcode.get(err, err)}: no UDP GSO, "
                f"or {len(packets[0])}-byte packets above the underlay MTU): sending one by one"
            )
            self.send_mode = SEND_SEGMENTS
            return self._send(packets, vtep, False)
        return sent, calls

    def _rx_loop(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        recvmsg = sock.recvmsg
        cmsg_space = socket.CMSG_SPACE(4)
        parse = esp.parse_header
        gro_packets = udp_gso.gro_packets
        rx_header = frames.rx_vnet_header
        merge = segment.coalesce
        host_stats = self._host_stats
        while not self._stopping:
            poller.poll(1000)
            while True:
                try:
                    data, anc, _, _ = recvmsg(_RECV, cmsg_space)
                except BlockingIOError:
                    break
                except OSError:
                    if self._stopping:
                        return
                    continue  # ICMP errors of earlier sends surface here
                host_stats["rx_calls"] += 1
                packets = gro_packets(data, anc)
                opened: dict[_Net, list[bytes]] = {}
                for packet in packets:
                    try:
                        spi, _ = parse(packet)
                    except esp.BadPacket:
                        host_stats["drop_bad_packet"] += 1
                        continue
                    net = self._by_spi.get(spi)
                    if net is None:
                        host_stats["drop_unknown_spi"] += 1
                        continue
                    try:
                        frame = net.keyring.inbound(spi).open(packet)
                    except esp.EspError as exc:
                        net.stats[_RX_REASON.get(type(exc), "drop_bad_packet")] += 1
                        continue
                    if len(frame) < frames.ETH_LEN:
                        net.stats["drop_bad_packet"] += 1
                        continue
                    opened.setdefault(net, []).append(frame)
                for net, got in opened.items():
                    merged = (
                        merge(got) if self.coalesce and len(got) > 1 else [(b"", f) for f in got]
                    )
                    for vnet, frame in merged:
                        try:
                            os.writev(net.fd, [vnet or rx_header(frame, net.mtu), frame])
                        except OSError:
                            if not net.closed:
                                net.stats["drop_send_error"] += 1
                    net.stats["rx_frames"] += len(got)
                    net.stats["rx_bytes"] += sum(len(f) for f in got)


def _wake(fd: int) -> None:
    """Make a loop's ``poll`` return (the loop then sees its stop flag)."""
    try:
        os.write(fd, b"x")
    except BlockingIOError:
        pass  # a byte is already waiting: the loop will wake anyway
