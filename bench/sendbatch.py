"""Sender CPU per packet: one ``sendto`` per packet against one ``sendmmsg`` per batch.

A tick of salond sends one packet per listener. This sends ``--batch`` packets of
``--size`` bytes to 8 loopback sockets (drained between rounds, outside the measured time)
three ways, interleaved: ``sendto`` per packet, ``sendmmsg`` through ``ctypes`` and through the
C extension ``salon.quic._speedups`` (when built), and prints the sender's CPU per packet
(process time), plus the Python/ctypes share of the ``ctypes`` path (the same code with the
system call replaced by a function that returns at once).

Run alone: ``python bench/sendbatch.py``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from salon.quic import sendbatch
from salon.quic.fastpath import speedups_available
from salon.quic.sendbatch import MMsgSender, sendmmsg_available


def measure(kind: str, batch: int, size: int, rounds: int) -> float:
    receivers = []
    for _ in range(8):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setblocking(False)
        receivers.append(sock)
    sender_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender_socket.setblocking(False)
    addrs = [receivers[index % 8].getsockname() for index in range(batch)]
    packets = [os.urandom(size) for _ in range(batch)]
    sender = MMsgSender(sender_socket, use_c=kind == "sendmmsg C") if kind != "sendto" else None
    real = sendbatch._sendmmsg
    if kind == "python part":
        sendbatch._sendmmsg = lambda fd, hdrs, count, flags: count
    cpu = 0.0
    try:
        for _ in range(rounds):
            started = time.process_time()
            if sender is None:
                sendto = sender_socket.sendto
                for packet, addr in zip(packets, addrs, strict=True):
                    sendto(packet, addr)
            else:
                sender.send(packets, addrs)
            cpu += time.process_time() - started
            for sock in receivers:
                try:
                    while True:
                        sock.recv(4096)
                except BlockingIOError:
                    pass
    finally:
        sendbatch._sendmmsg = real
        sender_socket.close()
        for sock in receivers:
            sock.close()
    return cpu / (rounds * batch) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=200, help="packets per tick")
    parser.add_argument("--size", type=int, default=160, help="bytes per packet")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not sendmmsg_available():
        print("sendmmsg is not available here")
        return 1
    kinds: tuple[str, ...] = ("sendto", "sendmmsg", "python part")
    if speedups_available():
        kinds += ("sendmmsg C",)
    figures: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.repeat):
        for kind in kinds:
            figures[kind].append(measure(kind, args.batch, args.size, args.rounds))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.batch} packets of {args.size} bytes")
    print("| send | sender CPU µs/packet (best) | all runs |")
    print("|---|---:|---|")
    for kind in kinds:
        runs = ", ".join(f"{value:.2f}" for value in figures[kind])
        print(f"| {kind} | {min(figures[kind]):.2f} | {runs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
