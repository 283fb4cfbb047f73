"""UDP GSO/GRO helpers of the encrypted path: splitting GRO runs, sending over loopback."""

from __future__ import annotations

import socket
import struct

from overlaysim.agent import udp_gso


def test_a_gro_run_splits_at_the_segment_size_the_kernel_reports() -> None:
    data = bytes(range(10)) * 3  # 30 bytes: two 12-byte packets and a 6-byte tail
    anc = [(udp_gso.SOL_UDP, udp_gso.UDP_GRO, struct.pack("=i", 12))]
    packets = [bytes(p) for p in udp_gso.gro_packets(data, anc)]
    assert packets == [data[:12], data[12:24], data[24:]]


def test_without_a_gro_message_the_datagram_is_one_packet() -> None:
    assert udp_gso.gro_packets(b"abc", []) == [b"abc"]
    other = [(socket.SOL_SOCKET, 1, struct.pack("=i", 1))]
    assert udp_gso.gro_packets(b"abc", other) == [b"abc"]


def test_send_each_delivers_every_packet_over_loopback() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        packets = [b"one", b"two", b"three"]
        assert udp_gso.send_each(tx, packets, rx.getsockname()) == (3, 3)
        assert [rx.recv(100) for _ in packets] == packets
