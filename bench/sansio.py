"""The forwarding cost without sockets: CPU per copy of aioquic's send path and of the fast path.

Two ``QuicConnection`` objects in one process, packets moved by hand, the clock passed in (the
aioquic test style): the server sends one audio datagram every 20 ms of simulated time, the
client (stock aioquic, acknowledging after ``ack_delay``) receives it and sends its ACKs back.
The process's own CPU time is measured around the server's two jobs, per copy:

- sending: aioquic's ``send_datagram_frame`` + ``datagrams_to_send`` (what the naive forwarder
  runs), or :class:`~salon.quic.fastpath.DatagramFastPath` (what salond runs);
- acknowledgements: ``receive_datagram`` of the client's ACK packets.

The second table (:func:`measure_flush`) is salond's send side over many connections at once
(``--listeners``, 200 by default): ``ServerProtocol.transmit`` for each listener under a held
``BatchingTransport`` whose ``sendmmsg`` is a list, and the listeners' ACKs through the ACK
fast path. With many connections their state no longer sits in the CPU's caches, which one
pair hides; several speakers' datagrams leave in one or several flushes per 20 ms.

No system call is inside the measured code, so the figures hold up on a busy machine better
than the load runs' (which add ``sendto``/``recvfrom`` and the event loop).

Run alone: ``python bench/sansio.py``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from bench.common import media_datagram
from salon.daemon.tls import ensure_certificate
from salon.quic import ackpath, fastpath, medialink
from salon.quic.ackpath import AckFastPath
from salon.quic.fastpath import DatagramFastPath, SendResult
from salon.quic.protocol import CLIENT_ACK_DELAY, delay_acks

CLIENT_ADDR = ("10.0.0.2", 40000)
SERVER_ADDR = ("10.0.0.1", 4460)
FRAME = 0.020


class Pair:
    """A connected client and server ``QuicConnection``, handshake done, nothing in flight."""

    def __init__(self, tls_dir: Path, ack_delay: float, client_addr: Any = CLIENT_ADDR) -> None:
        self.client_addr = client_addr
        tls = ensure_certificate(tls_dir, "localhost")
        client_config = QuicConfiguration(
            alpn_protocols=["salon/1"], is_client=True, max_datagram_frame_size=65536
        )
        client_config.verify_mode = 0  # ssl.CERT_NONE
        server_config = QuicConfiguration(
            alpn_protocols=["salon/1"], is_client=False, max_datagram_frame_size=65536
        )
        server_config.load_cert_chain(str(tls.certificate), str(tls.private_key))
        self.now = 1000.0
        self.client = QuicConnection(configuration=client_config)
        delay_acks(self.client, ack_delay)
        self.server = QuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client.original_destination_connection_id,
        )
        self.client.connect(SERVER_ADDR, now=self.now)
        for _ in range(20):
            self.exchange()
            self.now += 0.05
            for connection in (self.client, self.server):
                timer = connection.get_timer()
                if timer is not None and timer <= self.now:
                    connection.handle_timer(self.now)
        while self.client.next_event() is not None:
            pass
        while self.server.next_event() is not None:
            pass
        if not (self.server._handshake_confirmed and self.server._loss.bytes_in_flight == 0):
            raise RuntimeError("the in-memory handshake did not settle")

    def exchange(self) -> None:
        for data, _ in self.client.datagrams_to_send(self.now):
            self.server.receive_datagram(data, self.client_addr, self.now)
        for data, _ in self.server.datagrams_to_send(self.now):
            self.client.receive_datagram(data, SERVER_ADDR, self.now)


def measure(
    path: str, ack_delay: float, copies: int = 5000, acks: str = "aioquic", speakers: int = 1
) -> dict[str, Any]:
    """CPU µs per copy of ``path`` with the client's ``ack_delay``: "aioquic", "fast" (sealing
    in C when the extension was built), "fast, Python crypto" (sealing with ``cryptography``
    called from Python) or "fast, aioquic crypto" (through aioquic's ``encrypt_packet``); the
    server applies ACKs through ``acks`` ("aioquic"; "fast", the ACK fast path, opening
    packets in C when the extension was built; "fast, aioquic crypto", opening them with
    aioquic's ``decrypt_packet``; "fast, full check", the ACK fast path followed by a full
    check of the connection every time, as before 2026-12-03's second round); "fast, aioquic
    bookkeeping" seals in C but records each packet through aioquic's loss recovery and pacer
    methods instead of the fast path's inlined bookkeeping."""
    c_seal, inline, c_open = fastpath.C_SEAL, fastpath.INLINE_CRYPTO, ackpath.C_OPEN
    recovery = fastpath.INLINE_RECOVERY
    fastpath.C_SEAL = c_seal and path in ("fast", "fast, aioquic bookkeeping")
    fastpath.INLINE_CRYPTO = path != "fast, aioquic crypto"
    fastpath.INLINE_RECOVERY = path != "fast, aioquic bookkeeping"
    ackpath.C_OPEN = c_open and acks == "fast"
    try:
        return _measure(path, ack_delay, copies, acks, speakers)
    finally:
        fastpath.C_SEAL, fastpath.INLINE_CRYPTO, ackpath.C_OPEN = c_seal, inline, c_open
        fastpath.INLINE_RECOVERY = recovery


def _measure(path: str, ack_delay: float, copies: int, acks: str, speakers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="salon-sansio-") as tmp:
        pair = Pair(Path(tmp), ack_delay)
    server, client = pair.server, pair.client
    fast = DatagramFastPath(server) if path.startswith("fast") else None
    ack_path = AckFastPath(server) if acks.startswith("fast") else None
    wire: list[bytes] = []

    def sendto(data: bytes, addr: Any) -> None:
        wire.append(data)

    clock = time.process_time
    send_cpu = ack_cpu = 0.0
    ack_packets = 0
    ticks = max(1, copies // speakers)
    for seq in range(ticks):
        pair.now += FRAME
        now = pair.now
        # One datagram per speaker in each 20 ms tick: a conference's listener gets them
        # together (several share one QUIC packet).
        datagrams = [media_datagram(5, 0x1234 + s, 0, seq, 0) for s in range(speakers)]
        started = clock()
        if fast is not None:
            if not fast.quic.fast_clean:
                fast.refresh()
            if fast.send(collections.deque(datagrams), 1200, now, sendto) != SendResult.SENT:
                raise RuntimeError("the fast path did not send")
        else:
            for data in datagrams:
                server.send_datagram_frame(data)
            for packet, _ in server.datagrams_to_send(now):
                wire.append(packet)
        send_cpu += clock() - started
        for packet in wire:
            client.receive_datagram(packet, SERVER_ADDR, now)
        wire.clear()
        while client.next_event() is not None:
            pass
        timer = client.get_timer()
        if timer is not None and timer <= now:
            client.handle_timer(now)
        replies = client.datagrams_to_send(now)
        started = clock()
        for packet, _ in replies:
            if ack_path is None or not ack_path.receive(packet, CLIENT_ADDR, now):
                server.receive_datagram(packet, CLIENT_ADDR, now)
            elif fast is not None and (acks == "fast, full check" or not fast.clean_after_ack()):
                # As salond does after a fast ACK: a full check before the next send,
                # unless only fast packets were in flight ("fast, full check": always).
                fast.quic.fast_clean = False
            ack_packets += 1
        while server.next_event() is not None:
            pass
        ack_cpu += clock() - started
    copies = ticks * speakers
    return {
        "path": path,
        "acks": acks,
        "speakers": speakers,
        "ack_delay": ack_delay,
        "send_us": send_cpu / copies * 1e6,
        "ack_us": ack_cpu / copies * 1e6,
        "acks_per_copy": ack_packets / copies,
    }


class _Clock:
    """The loop a bench ``ServerProtocol`` sees: simulated time, timers never fire."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any, *args: Any) -> Any:
        return _NoTimer()

    def call_soon(self, callback: Any, *args: Any) -> Any:
        return _NoTimer()


class _NoTimer:
    def cancel(self) -> None:
        pass


class _Wire:
    """The socket under a :class:`BatchingTransport`: keeps what is sent, no system call."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def send(self, packets: list[bytes], addrs: list[Any]) -> tuple[int, int]:
        self.sent.extend(zip(packets, addrs, strict=True))
        return len(packets), 0

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


def measure_flush(
    listeners: int, speakers: int, ticks: int, flushes: int = 1, link: str = "off"
) -> dict[str, Any]:
    """CPU µs per copy of salond's flush (``ServerProtocol.transmit`` of every listener with
    media queued, under a held :class:`~salon.quic.sendbatch.BatchingTransport` whose
    ``sendmmsg`` is replaced by a list: no system call) over ``listeners`` connections, and
    of their ACKs through ``ServerProtocol.datagram_received`` (the ACK fast path). Each tick
    queues one datagram per speaker on every listener, as the forwarder does, in ``flushes``
    flushes spread over the 20 ms (speakers' datagrams arrive at different moments: one
    flush for all of them is what ``tuning.media_flush_interval`` can make of it).

    ``link``: "off" (the Python fast paths), "per listener" (each listener's media link,
    :mod:`salon.quic.medialink`, through its own ``transmit``) or "one call" (every loaded
    link in one ``flush_links`` call, as salond's flush does)."""
    import asyncio

    from salon.quic.medialink import flush_links
    from salon.quic.protocol import ServerProtocol
    from salon.quic.sendbatch import BatchingTransport

    class Listener(ServerProtocol):
        closed = False

        def __init__(self, quic: QuicConnection) -> None:
            super().__init__(quic, media_link=link != "off")
            self.queue: collections.deque[bytes] = collections.deque()
            self.peer_max_datagram = 1200
            self.sent_count = 0

        def media_queue(self) -> collections.deque[bytes] | None:
            return self.queue

        def media_sent(self, count: int) -> None:
            self.sent_count += count

    clock = _Clock()
    wire = _Wire()
    transport = BatchingTransport(wire, lambda packets, size: None, wire)  # type: ignore[arg-type]
    pairs: list[Pair] = []
    protocols: list[Listener] = []

    async def connect() -> None:
        # aioquic's protocol takes the running loop; the bench then gives it the clock.
        with tempfile.TemporaryDirectory(prefix="salon-sansio-") as tmp:
            for _ in range(listeners):
                pair = Pair(Path(tmp), CLIENT_ACK_DELAY, ("10.0.1.1", 30000 + len(pairs)))
                protocol = Listener(pair.server)
                protocol._loop = clock  # type: ignore[assignment]
                protocol.timers = None  # armed on the clock, which never fires them
                protocol._transport = transport  # type: ignore[assignment]
                pairs.append(pair)
                protocols.append(protocol)

    asyncio.run(connect())
    # Every pair's clock runs together (they started at the same simulated time).
    start = max(pair.now for pair in pairs)
    cpu = time.process_time
    send_cpu = ack_cpu = 0.0
    for seq in range(ticks):
        now = start + (seq + 1) * FRAME
        clock.now = now
        datagrams = [media_datagram(5, 0x1234 + s, 0, seq, 0) for s in range(speakers)]
        for group in range(flushes):
            clock.now = now + group * FRAME / flushes
            for protocol in protocols:
                protocol.queue.extend(datagrams[group::flushes])
            started = cpu()
            transport.hold()
            lists = transport.batch_lists()
            if link == "one call" and lists is not None:
                rest, sent = flush_links(protocols, clock.now, *lists)
                protocols[0].sent_count += sent
                for item in rest:
                    if type(item) is tuple:
                        item[0].after_link_send(item[1], item[2], item[3])
                    else:
                        item.transmit()
            else:
                for protocol in protocols:
                    protocol.transmit()
            transport.release()
            send_cpu += cpu() - started
        now = clock.now
        by_addr: dict[Any, list[bytes]] = collections.defaultdict(list)
        for data, addr in wire.sent:
            by_addr[addr].append(data)
        wire.sent = []
        replies: list[tuple[Listener, bytes]] = []
        for protocol, pair in zip(protocols, pairs, strict=True):
            client = pair.client
            for data in by_addr.get(pair.client_addr, ()):
                client.receive_datagram(data, SERVER_ADDR, now)
            while client.next_event() is not None:
                pass
            timer = client.get_timer()
            if timer is not None and timer <= now:
                client.handle_timer(now)
            replies.extend((protocol, data) for data, _ in client.datagrams_to_send(now))
        started = cpu()
        for protocol, data in replies:
            protocol.datagram_received(data, protocol.peer_address)
        ack_cpu += cpu() - started
    copies = ticks * speakers * listeners
    delivered = sum(protocol.sent_count for protocol in protocols)
    if delivered != copies:
        raise RuntimeError(f"{delivered} of {copies} copies sent")
    return {
        "listeners": listeners,
        "speakers": speakers,
        "flushes": flushes,
        "link": link,
        "link_loads": sum(p.fastpath.link_loads for p in protocols if p.fastpath is not None),
        "send_us": send_cpu / copies * 1e6,
        "ack_us": ack_cpu / copies * 1e6,
    }


CONFIGURATIONS: list[tuple[str, float, str, int]] = [
    ("aioquic", 0.020, "aioquic", 1),
    ("aioquic", CLIENT_ACK_DELAY, "aioquic", 1),
    ("fast", 0.020, "aioquic", 1),
    ("fast", CLIENT_ACK_DELAY, "aioquic", 1),
    ("fast", 0.020, "fast", 1),
    ("fast", CLIENT_ACK_DELAY, "fast, full check", 1),
    ("fast", CLIENT_ACK_DELAY, "fast, aioquic crypto", 1),
    ("fast, aioquic crypto", CLIENT_ACK_DELAY, "fast", 1),
    ("fast, Python crypto", CLIENT_ACK_DELAY, "fast", 1),
    ("fast, aioquic bookkeeping", CLIENT_ACK_DELAY, "fast", 1),
    ("fast", CLIENT_ACK_DELAY, "fast", 1),
    ("aioquic", CLIENT_ACK_DELAY, "aioquic", 4),
    ("fast, Python crypto", CLIENT_ACK_DELAY, "fast", 4),
    ("fast", CLIENT_ACK_DELAY, "fast", 4),
]
"""(send path, listener ACK delay, ACK path, speakers): the naive combination (aioquic's
path, ACK after 20 ms), salond's (the last of the one-speaker rows), the combinations between
them (each change on its own), and a 4-speaker conference's listener (4 datagrams a tick)."""


def run(copies: int = 5000, repeat: int = 1) -> list[dict[str, Any]]:
    """Every configuration ``repeat`` times, interleaved (so that a busy spell of the machine
    spreads over all of them); each figure is the best of its runs (the least disturbed by
    other work: CPU time only grows when the machine is shared)."""
    runs: list[list[dict[str, Any]]] = [[] for _ in CONFIGURATIONS]
    for _ in range(repeat):
        for index, (path, ack_delay, acks, speakers) in enumerate(CONFIGURATIONS):
            runs[index].append(measure(path, ack_delay, copies, acks=acks, speakers=speakers))
    results = []
    for samples in runs:
        result = dict(samples[0])
        for key in ("send_us", "ack_us", "acks_per_copy"):
            result[key] = min(sample[key] for sample in samples)
        result["runs"] = len(samples)
        results.append(result)
    return results


FLUSH_CONFIGURATIONS: list[tuple[bool, str, int, int]] = [
    (False, "off", 1, 1),
    (True, "off", 1, 1),
    (True, "per listener", 1, 1),
    (True, "one call", 1, 1),
    (True, "off", 4, 4),
    (True, "one call", 4, 4),
    (True, "off", 4, 2),
    (True, "one call", 4, 2),
    (True, "off", 4, 1),
    (True, "one call", 4, 1),
]
"""(inlined bookkeeping, media link, speakers, flushes per 20 ms) of :func:`measure_flush`:
one speaker with aioquic's bookkeeping methods, with the inlined one, and through the media
link (each listener's transmit, or one ``flush_links`` call for all); four speakers whose
datagrams leave in four flushes (each on its own, as with ``media_flush_interval = 0`` and
speakers 5 ms apart), two (the 10 ms default) or one, without and with the link."""


def run_flush(listeners: int, ticks: int, repeat: int = 1) -> list[dict[str, Any]]:
    """:data:`FLUSH_CONFIGURATIONS` over ``listeners`` connections, best of ``repeat``."""
    runs: list[list[dict[str, Any]]] = [[] for _ in FLUSH_CONFIGURATIONS]
    recovery = fastpath.INLINE_RECOVERY
    try:
        for _ in range(repeat):
            for index, (inline, link, speakers, flushes) in enumerate(FLUSH_CONFIGURATIONS):
                if link != "off" and not medialink.available():
                    continue
                fastpath.INLINE_RECOVERY = inline
                result = measure_flush(
                    listeners, speakers, max(1, ticks // speakers), flushes, link
                )
                result["bookkeeping"] = "inlined" if inline else "aioquic's methods"
                runs[index].append(result)
    finally:
        fastpath.INLINE_RECOVERY = recovery
    results = []
    for samples in runs:
        if not samples:
            continue
        result = dict(samples[0])
        for key in ("send_us", "ack_us"):
            result[key] = min(sample[key] for sample in samples)
        results.append(result)
    return results


def flush_summary_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| listeners | bookkeeping | media link | speakers | flushes per 20 ms | send µs/copy"
        " | ACK µs/copy | total µs/copy |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result['listeners']} | {result['bookkeeping']} | {result['link']}"
            f" | {result['speakers']}"
            f" | {result['flushes']} | {result['send_us']:.1f} | {result['ack_us']:.1f}"
            f" | {result['send_us'] + result['ack_us']:.1f} |"
        )
    return lines


def summary_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| send path | ACK path | speakers | listener ACK delay | send µs/copy | ACK µs/copy"
        " | ACKs/copy | total µs/copy |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        lines.append(
            f"| {result['path']} | {result['acks']} | {result['speakers']}"
            f" | {result['ack_delay'] * 1000:.0f} ms"
            f" | {result['send_us']:.1f}"
            f" | {result['ack_us']:.1f} | {result['acks_per_copy']:.2f}"
            f" | {result['send_us'] + result['ack_us']:.1f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=5000)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each configuration (the best printed)"
    )
    parser.add_argument(
        "--listeners",
        type=int,
        default=200,
        help="connections of the flush table (salond's transmit over many; 0: skip it)",
    )
    parser.add_argument("--ticks", type=int, default=200, help="20 ms ticks per flush run")
    args = parser.parse_args(argv)
    print("\n".join(summary_lines(run(args.copies, args.repeat))))
    if args.listeners:
        print()
        print("\n".join(flush_summary_lines(run_flush(args.listeners, args.ticks, args.repeat))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
