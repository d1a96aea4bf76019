"""UDP packet and byte counters of the QUIC socket, for the admin API and the metrics endpoint.

aioquic keeps no byte counters once a path is validated, so the server counts at the socket:
every datagram the QUIC server receives and every one any connection sends, whatever it carries
(media, control, acknowledgements, handshakes). Counting costs one call and two additions per
packet.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from aioquic.quic.packet import PACKET_FIXED_BIT

from salon.quic.fastpath import speedups_available
from salon.quic.sendbatch import BatchingTransport, MMsgSender, sendmmsg_available

log = logging.getLogger("salon.net")

SHORT_HEADER_BITS = 0x80 | PACKET_FIXED_BIT
"""The header form bit (clear in a short header) and the fixed bit (always set)."""

SOCKET_BUFFER_BYTES = 1024 * 1024
"""Receive and send buffer asked for on the QUIC socket.

One socket carries every listener's ACKs: with the kernel's default buffer (about 200 KiB,
a few hundred small packets at the kernel's per-packet accounting) a pause of the event loop of
a few tens of milliseconds at a few thousand packets per second overflows it, and the packets
dropped then include the speakers' audio. The kernel caps the request at ``net.core.rmem_max``
/ ``wmem_max``.
"""


def enlarge_socket_buffers(transport: Any, size: int = SOCKET_BUFFER_BYTES) -> tuple[int, int]:
    """Ask for ``size``-byte buffers on ``transport``'s socket; returns what the kernel gave."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return (0, 0)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError as exc:  # a platform without the option: keep the default
            log.debug("cannot set socket buffer: %s", exc)
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )


class UdpTraffic:
    """Packets and bytes in and out of one UDP socket since start."""

    __slots__ = ("bytes_in", "bytes_out", "packets_in", "packets_out")

    def __init__(self) -> None:
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def count_sent(self, packets: int, size: int) -> None:
        self.packets_out += packets
        self.bytes_out += size

    def attach(
        self,
        quic_server: Any,
        read_batch: int = 1,
        send_batch: str = "sendto",
        read_interval: float = 0.0,
    ) -> BatchingTransport | None:
        """Count what ``quic_server`` (an aioquic ``QuicServer``) receives and sends, read up
        to ``read_batch`` datagrams per loop iteration (1: asyncio's own reader), and send
        with ``sendmmsg`` while the returned transport is held (``send_batch="sendmmsg"``);
        while datagrams keep coming, read the socket every ``read_interval`` seconds instead of
        at each readiness event (0: at each event; see :func:`_read_in_batches`).

        Must run before the first connection exists: each connection keeps the transport it
        was given, so the server's transport is replaced by a counting one here.
        """
        transport = quic_server._transport
        if transport is None or isinstance(transport, BatchingTransport):
            return None
        if not speedups_available():
            log.info(
                "C extension salon.quic._speedups not in use (not built, or"
                " SALON_C_EXTENSION=0): packets are sealed and opened in Python and sendmmsg"
                " called through ctypes (a C compiler and OpenSSL's headers at install build it)"
            )
        sender = None
        if send_batch == "sendmmsg":
            sock = transport.get_extra_info("socket")
            if sock is not None and sendmmsg_available():
                sender = MMsgSender(sock)
            else:
                log.warning("send_batch: sendmmsg is not available here, sending one by one")
        batching = BatchingTransport(transport, self.count_sent, sender)
        quic_server._transport = batching
        received = quic_server.datagram_received
        connections = quic_server._protocols
        cid_end = 1 + quic_server._configuration.connection_id_length

        def datagram_received(data: bytes, addr: Any) -> None:
            self.packets_in += 1
            self.bytes_in += len(data)
            # A short-header packet (form bit clear, fixed bit set) of a known connection
            # goes straight to it: what aioquic's server does after parsing the header into
            # an object, for nearly every packet salond receives.
            if data and data[0] & SHORT_HEADER_BITS == PACKET_FIXED_BIT:
                connection = connections.get(data[1:cid_end])
                if connection is not None:
                    connection.datagram_received(data, addr)
                    return
            received(data, addr)

        # asyncio looks the method up on the protocol for each datagram.
        quic_server.datagram_received = datagram_received
        if read_batch > 1:
            _read_in_batches(transport, datagram_received, read_batch, batching, read_interval)
        return batching


def server_transport(quic_server: Any) -> Any:
    """The datagram transport of an aioquic ``QuicServer`` (None before it is bound)."""
    return quic_server._transport


def _read_in_batches(
    transport: Any,
    received: Callable[[bytes, Any], None],
    batch: int,
    sending: BatchingTransport | None = None,
    interval: float = 0.0,
) -> bool:
    """Read up to ``batch`` datagrams per event-loop iteration instead of one.

    asyncio's selector datagram transport reads one datagram per readiness event, so each of
    the listeners' ACK packets costs a whole loop iteration (a ``select`` and the loop's
    bookkeeping). This replaces its reader with one that drains the socket in batches; the
    connections touched by a batch are still flushed once at the end of the tick, and what
    they send while the batch is read leaves in one ``sendmmsg`` (``sending``). Transports
    that are not asyncio's selector transport (uvloop batches already) are left alone.

    With ``interval``, once a read found datagrams the socket leaves the selector and is read
    again by a loop timer ``interval`` seconds later, and so on while datagrams keep coming;
    a read that finds none gives the socket back to the selector. The listeners' ACKs come
    one by one, spread over time: each used to wake the loop (a ``select``, the loop's
    bookkeeping, a read that finds nothing more), and now one wake-up per interval reads
    them all. A speaker's packet waits up to ``interval`` longer.
    """
    sock = getattr(transport, "_sock", None)
    loop: Any = getattr(transport, "_loop", None)
    fd = getattr(transport, "_sock_fd", None)
    if sock is None or fd is None or not hasattr(loop, "_add_reader"):
        return False
    if not hasattr(transport, "_conn_lost") or not hasattr(transport, "max_size"):
        return False
    recvfrom = sock.recvfrom
    max_size = transport.max_size
    protocol = transport._protocol

    def read_ready() -> None:
        count = read_held()
        if count and interval:
            loop._remove_reader(fd)
            read_again(count)

    def read_again(count: int) -> None:
        # A full batch may have left more behind: read on in the next loop iteration, so
        # that the interval never caps how many datagrams a second the socket can take.
        if count >= batch:
            loop.call_soon(read_later)
        else:
            loop.call_later(interval, read_later)

    def read_later() -> None:
        if transport._conn_lost or transport.is_closing():
            return
        count = read_held()
        if count:
            read_again(count)
        else:
            loop._add_reader(fd, read_ready)

    def read_held() -> int:
        if sending is None:
            return read()
        sending.hold()
        try:
            return read()
        finally:
            sending.release()

    def read() -> int:
        """Datagrams read (up to ``batch``); 0 also when the transport is lost."""
        for index in range(batch):
            if transport._conn_lost:
                return 0
            try:
                data, addr = recvfrom(max_size)
            except (BlockingIOError, InterruptedError):
                return index
            except OSError as exc:
                protocol.error_received(exc)
                return index
            received(data, addr)
        return batch

    # Replaces the transport's own reader on the same file descriptor.
    loop._add_reader(fd, read_ready)
    return True
