"""Micro-benchmarks behind the "what was measured" notes of BENCHMARKS.md.

Each prints its figures and the comparison it was made for, in the same run:

- ``receive-loop``: CPU per datagram of the QUIC socket's receive loop alone, asyncio's reader
  against salond's batch reader (``quic/traffic.py``), at a steady rate from a sender
  process (``--rate`` datagrams per second, ``--seconds``). The receiver does nothing with a
  datagram but count it, so the figure is the loop's own cost per packet.
- ``gc-pause``: how long one full collection of the cyclic garbage collector stops the loop
  with ``--connections`` established aioquic connections alive, with Python's defaults
  and after ``gc.freeze()`` (what ``tune_garbage_collector`` does after start-up).
- ``sendto``: CPU per send of a 118-byte datagram on loopback through the asyncio transport's
  ``sendto`` (what salond uses) and through the socket's own ``sendto``.

- ``fast-send``: CPU of one fast-path send of one audio datagram in one process (no socket),
  packed and sealed by the C extension against the Python packing loop with ``cryptography``,
  and what building the sent packet's record costs (a dict literal, a template's copy, and the
  slotted ``QuicSentPacket`` subclass the fast path uses).

Run: ``python bench/micro.py receive-loop`` (or ``gc-pause``, ``sendto``, ``fast-send``,
``all``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAYLOAD = b"\x01" * 118
"""The size of a real audio datagram (see BENCHMARKS.md, Load)."""


# ---------------------------------------------------------------------------------- receive


def _send_steadily(port: int, rate: int, seconds: float) -> None:
    """The sender process: ``rate`` datagrams per second in 1 ms ticks, then a stop byte."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    per_tick = max(1, rate // 1000)
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        for _ in range(per_tick):
            sock.sendto(PAYLOAD, ("127.0.0.1", port))
        tick += 1
        delay = start + tick / 1000 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    for _ in range(20):
        sock.sendto(b"", ("127.0.0.1", port))


async def _receive(batch: bool, rate: int, seconds: float) -> dict[str, Any]:
    from salon.daemon.config import TuningConfig
    from salon.quic.traffic import UdpTraffic

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    counted = [0]

    class Receiver(asyncio.DatagramProtocol):
        """Stands in for aioquic's QuicServer: no connection, every datagram to it."""

        _transport: Any = None
        _protocols: dict[bytes, Any] = {}
        _configuration = QuicConfiguration()

        def datagram_received(self, data: bytes, addr: Any) -> None:
            if not data:
                if not done.done():
                    done.set_result(None)
                return
            counted[0] += 1

    transport, receiver = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    receiver._transport = transport
    # What salond does with [tuning] read_batch (its default) against 1 (asyncio's reader).
    UdpTraffic().attach(receiver, read_batch=TuningConfig().read_batch if batch else 1)
    port = transport.get_extra_info("sockname")[1]
    sender = subprocess.Popen(
        [sys.executable, __file__, "_send", str(port), str(rate), str(seconds)]
    )
    cpu0 = time.process_time()
    await asyncio.wait_for(done, seconds + 30)
    cpu = time.process_time() - cpu0
    sender.wait(30)
    transport.close()
    return {
        "reader": "batch" if batch else "asyncio",
        "datagrams": counted[0],
        "cpu_us_per_datagram": cpu / max(1, counted[0]) * 1e6,
    }


def receive_loop(rate: int, seconds: float, rounds: int) -> list[str]:
    results: dict[str, list[float]] = {"asyncio": [], "batch": []}
    for _ in range(rounds):
        for batch in (False, True):
            result = asyncio.run(_receive(batch, rate, seconds))
            results[result["reader"]].append(result["cpu_us_per_datagram"])
    plain, batched = results["asyncio"], results["batch"]
    return [
        f"- receive loop at {rate} datagrams/s, {rounds} x {seconds:g} s each:"
        f" asyncio's reader {_span(plain)} µs CPU per datagram,"
        f" batch reader {_span(batched)} µs"
        f" (ratio {statistics.median(batched) / statistics.median(plain):.2f})"
    ]


# ---------------------------------------------------------------------------------- gc


def gc_pause(connections: int) -> list[str]:
    from bench.sansio import Pair

    with tempfile.TemporaryDirectory(prefix="salon-gc-") as tmp:
        # Both ends of each pair live here: half as many pairs as connections.
        pairs = [Pair(Path(tmp) / "tls", 0.1) for _ in range(max(1, connections // 2))]

        def full_collections(count: int = 5) -> list[float]:
            pauses = []
            for _ in range(count):
                started = time.perf_counter()
                gc.collect()
                pauses.append((time.perf_counter() - started) * 1000)
            return pauses

        default = full_collections()
        tracked = len(gc.get_objects())
        gc.freeze()
        frozen = full_collections()
        gc.unfreeze()
        del pairs
    return [
        f"- full garbage collection with {connections} aioquic connections alive"
        f" ({tracked:,} tracked objects): {_span(default)} ms with Python's defaults,"
        f" {_span(frozen)} ms after gc.freeze()"
    ]


# ---------------------------------------------------------------------------------- sendto


async def _sendto(count: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    address = sink.getsockname()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    sock = transport._sock  # type: ignore[attr-defined]  # the socket itself, not its wrapper

    def drain() -> None:
        try:
            while True:
                sink.recv(2048)
        except BlockingIOError:
            pass

    def timed(send: Any) -> float:
        total = 0.0
        for _ in range(count // 100):  # in bursts the receive buffer takes
            cpu0 = time.process_time()
            for _ in range(100):
                send(PAYLOAD, address)
            total += time.process_time() - cpu0
            drain()
        return total / count * 1e6

    transport_cost = timed(transport.sendto)
    socket_cost = timed(sock.sendto)
    transport.close()
    sink.close()
    return transport_cost, socket_cost


def sendto(count: int, rounds: int) -> list[str]:
    via_transport, via_socket = [], []
    for _ in range(rounds):
        a, b = asyncio.run(_sendto(count))
        via_transport.append(a)
        via_socket.append(b)
    return [
        f"- sendto of a 118-byte datagram on loopback, {rounds} x {count:,} sends:"
        f" asyncio transport {_span(via_transport)} µs CPU per send,"
        f" socket's own {_span(via_socket)} µs"
    ]


# ---------------------------------------------------------------------------------- entry


# ---------------------------------------------------------------------------------- fast send


def fast_send(sends: int, rounds: int) -> list[str]:
    """One datagram per send on an established in-memory connection, the congestion state
    reset between sends (no ACKs needed): C sealing against Python, best of ``rounds``."""
    import collections

    from aioquic.quic.packet_builder import QuicSentPacket

    from bench.common import media_datagram
    from bench.sansio import Pair
    from salon.quic import fastpath
    from salon.quic.fastpath import DatagramFastPath, SendResult

    with tempfile.TemporaryDirectory(prefix="salon-micro-") as tmp:
        pair = Pair(Path(tmp), 0.1)
    fast = DatagramFastPath(pair.server)
    data = media_datagram(5, 0x1234, 0, 1, 0)
    space = pair.server._spaces[fastpath.ONE_RTT]
    cc = pair.server._loss._cc

    def ignore(packet: bytes, addr: Any) -> None:
        pass

    def timed(c_seal: bool) -> float:
        fastpath.C_SEAL = c_seal and fastpath.speedups_available()
        pair.server.fast_clean = False
        fast.refresh()
        assert (fast._sealer is not None) == fastpath.C_SEAL
        now = pair.now
        started = time.process_time()
        for _ in range(sends):
            now += 0.0001
            if fast.send(collections.deque((data,)), 1200, now, ignore) != SendResult.SENT:
                raise RuntimeError("the fast path did not send")
            space.sent_packets.clear()
            space.ack_eliciting_in_flight = 0
            cc.bytes_in_flight = 0
        pair.now = now
        return (time.process_time() - started) / sends * 1e6

    template = {
        "epoch": fastpath.ONE_RTT,
        "in_flight": True,
        "is_ack_eliciting": True,
        "is_crypto_packet": False,
        "packet_number": 0,
        "packet_type": fastpath.ONE_RTT_PACKET,
        "sent_time": 0.0,
        "sent_bytes": 0,
        "delivery_handlers": fastpath.NO_HANDLERS,
        "quic_logger_frames": fastpath.NO_HANDLERS,
    }

    def slotted() -> float:
        # What the fast path builds: fastpath.FastSentPacket, three slots.
        new = fastpath.new_object
        record_type = fastpath.FastSentPacket
        started = time.process_time()
        for number in range(sends):
            sent = new(record_type)
            sent.packet_number = number
            sent.sent_time = 1.0
            sent.sent_bytes = 100
        return (time.process_time() - started) / sends * 1e6

    def record(copy: bool) -> float:
        new = fastpath.new_object
        started = time.process_time()
        for number in range(sends):
            sent = new(QuicSentPacket)
            if copy:
                fields = template.copy()
                fields["packet_number"] = number
                fields["sent_time"] = 1.0
                fields["sent_bytes"] = 100
                sent.__dict__ = fields
            else:
                sent.__dict__ = {
                    "epoch": fastpath.ONE_RTT,
                    "in_flight": True,
                    "is_ack_eliciting": True,
                    "is_crypto_packet": False,
                    "packet_number": number,
                    "packet_type": fastpath.ONE_RTT_PACKET,
                    "sent_time": 1.0,
                    "sent_bytes": 100,
                    "delivery_handlers": fastpath.NO_HANDLERS,
                    "quic_logger_frames": fastpath.NO_HANDLERS,
                }
        return (time.process_time() - started) / sends * 1e6

    saved = fastpath.C_SEAL
    runs: dict[str, list[float]] = {
        "C": [],
        "Python": [],
        "literal": [],
        "template": [],
        "slots": [],
    }
    try:
        for _ in range(rounds):
            runs["C"].append(timed(True))
            runs["Python"].append(timed(False))
            runs["literal"].append(record(False))
            runs["template"].append(record(True))
            runs["slots"].append(slotted())
    finally:
        fastpath.C_SEAL = saved
    best = {name: min(values) for name, values in runs.items()}
    c_label = "C extension" if fastpath.speedups_available() else "C extension (not built)"
    return [
        f"fast send of one datagram: {best['C']:.2f} µs with the {c_label},"
        f" {best['Python']:.2f} µs packed and sealed in Python (best of {rounds})",
        f"sent-packet record: {best['literal']:.2f} µs as a dict literal,"
        f" {best['template']:.2f} µs as a template's copy,"
        f" {best['slots']:.2f} µs as the fast path's slotted subclass",
    ]


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.1f}" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}-{high:.1f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_send":
        _send_steadily(int(argv[1]), int(argv[2]), float(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["receive-loop", "gc-pause", "sendto", "fast-send", "all"])
    parser.add_argument("--rate", type=int, default=4000, help="datagrams per second")
    parser.add_argument("--seconds", type=float, default=3.0, help="per receive-loop run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--sends", type=int, default=20000)
    args = parser.parse_args(argv)
    lines: list[str] = []
    if args.what in ("receive-loop", "all"):
        lines += receive_loop(args.rate, args.seconds, args.rounds)
    if args.what in ("gc-pause", "all"):
        lines += gc_pause(args.connections)
    if args.what in ("sendto", "all"):
        lines += sendto(args.sends, args.rounds)
    if args.what in ("fast-send", "all"):
        lines += fast_send(args.sends, max(args.rounds, 5))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
