"""UDP segmentation offload on both ends of the encrypted path, and sends that survive a
full socket buffer.

Send: a run of equal-size packets (all but the last) goes to the kernel in one
``sendmsg`` with ``UDP_SEGMENT``, which splits it into datagrams. Receive: with
``UDP_GRO`` on, one ``recvmsg`` returns a run of packets and a control message giving
their size, split back here. Kernels or paths without UDP GSO refuse the send with one
of :data:`NO_GSO`; the caller then sends packet by packet.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
from collections.abc import Callable

#: Largest UDP payload over IPv4.
MAX_UDP_PAYLOAD = 65507
#: Linux UDP socket options (``linux/udp.h``): GSO size on send, GRO on receive.
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: Most packets one ``UDP_SEGMENT`` send may carry (the kernel's ``UDP_MAX_SEGMENTS``
#: is 64 on older kernels, 128 on newer ones).
GSO_MAX_SEGMENTS = 64

#: Errors of a ``UDP_SEGMENT`` send that mean the kernel or device has no UDP GSO (EIO:
#: no checksum offload on the way out), as opposed to a full buffer or a lost route.
NO_GSO = (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)


def enable_gro(sock: socket.socket) -> None:
    """Receive runs of packets per ``recvmsg`` (raises ``OSError`` where unsupported)."""
    sock.setsockopt(SOL_UDP, UDP_GRO, 1)


def gro_packets(data: bytes, anc: list[tuple[int, int, bytes]]) -> list[bytes] | list[memoryview]:
    """The packets of one ``recvmsg``: ``data`` split at the GRO segment size its
    ancillary data ``anc`` gives (one packet when there is none)."""
    step = 0
    for level, kind, value in anc:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            step = struct.unpack("=i", value[:4])[0]
    if 0 < step < len(data):
        view = memoryview(data)
        return [view[i : i + step] for i in range(0, len(data), step)]
    return [data]


def send_each(sock: socket.socket, packets: list[bytes], addr: tuple[str, int]) -> tuple[int, int]:
    """One ``sendto`` per packet: how many left (the rest failed), in how many calls."""
    for i, packet in enumerate(packets):
        if retry(sock, lambda p=packet: sock.sendto(p, addr)):
            return i, i + 1
    return len(packets), len(packets)


def send_segmented(
    sock: socket.socket, packets: list[bytes], addr: tuple[str, int]
) -> tuple[int, int, int]:
    """Runs of up to :data:`GSO_MAX_SEGMENTS` packets per ``sendmsg`` with ``UDP_SEGMENT``.

    All packets but the last must have the same length (full segments, same padding),
    which is what ``UDP_SEGMENT`` needs. Returns how many packets left, in how many
    calls, and the error number that stopped the rest (0: none).
    """
    size = len(packets[0])
    step = min(GSO_MAX_SEGMENTS, MAX_UDP_PAYLOAD // size)
    cmsg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
    calls = 0
    for i in range(0, len(packets), step):
        calls += 1
        run = packets[i : i + step]
        err = retry(sock, lambda r=run: sock.sendmsg(r, cmsg, 0, addr))
        if err:
            return i, calls, err
    return len(packets), calls, 0


def retry(sock: socket.socket, send: Callable[[], object]) -> int:
    """``send()``, once more after waiting up to 100 ms if the socket buffer is full.
    Returns 0, or the error number of the failure (the caller counts the loss)."""
    try:
        send()
        return 0
    except BlockingIOError:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        poller.poll(100)
        try:
            send()
            return 0
        except OSError as exc:
            return exc.errno or errno.EIO
    except OSError as exc:
        return exc.errno or errno.EIO
