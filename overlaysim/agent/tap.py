"""TAP devices with virtio-net headers and offloads, and sockets opened in a namespace.

A TAP device opened here lives as long as its file descriptor: when the agent exits,
however it exits, the kernel removes the device. ``IFF_VNET_HDR`` plus ``TUNSETOFFLOAD``
(checksum, TSO4, TSO6) let the kernel hand over GSO super-frames of up to ~64 KB with
a partial checksum, so the user-space loop handles one frame per ~40 TCP segments.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from typing import TypeVar

from overlaysim.agent.ownthread import call_in_own_thread

T = TypeVar("T")

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class TapError(OSError):
    """The TAP device or the namespace could not be set up."""


def in_netns(path: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn()`` in network namespace ``path`` (``None``: here) and return its result.

    Runs in a short-lived thread that enters the namespace (``setns`` changes only the
    calling thread), so sockets and devices it creates belong to that namespace while
    the rest of the process stays where it is.
    """
    if path is None:
        return fn()

    def run() -> T:
        fd = os.open(path, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise TapError(err, f"setns({path}): {os.strerror(err)}")
        finally:
            os.close(fd)
        return fn()

    return call_in_own_thread(run, "netns-helper")


def open_tap(name: str, netns: str | None = None, *, offload: bool = True) -> int:
    """Create TAP device ``name`` in ``netns`` and return its non-blocking descriptor.

    The descriptor reads and writes frames prefixed with a 10-byte virtio-net header.
    ``offload`` asks for checksum and TCP segmentation offload (GSO super-frames).
    """
    if len(name.encode()) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 bytes")

    def create() -> int:
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TapError(
                exc.errno, f"/dev/net/tun: {exc.strerror} (is the tun module loaded?)"
            ) from None
        try:
            ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            if offload:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError as exc:
            os.close(fd)
            raise TapError(exc.errno, f"TAP {name}: {exc.strerror}") from None
        return fd

    return in_netns(netns, create)


SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def udp_socket(
    addr: str, port: int, netns: str | None = None, *, buffers: int = 8 << 20
) -> socket.socket:
    """A non-blocking UDP socket bound to ``addr:port`` in ``netns`` with large buffers.

    The buffers are forced past ``net.core.rmem_max`` when we may (root), because a
    burst of 64 KB datagrams overflows the default 208 KB receive buffer at once.
    """

    def create() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for forced, plain in (
                (SO_RCVBUFFORCE, socket.SO_RCVBUF),
                (SO_SNDBUFFORCE, socket.SO_SNDBUF),
            ):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, forced, buffers)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, buffers)
            sock.bind((addr, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    return in_netns(netns, create)
