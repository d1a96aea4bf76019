"""One client connection: the aioquic protocol glue between a QUIC connection and the server.

This module and :mod:`salon.daemon.net.server` are the only places that import aioquic. The
protocol does no policy: it reassembles control messages, hands them and media datagrams to
the server, and keeps the connection's outgoing datagram queue short.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events

from salon.daemon.core import Identity, Outlet
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.framing import MessageReader, frame_message

if TYPE_CHECKING:
    from salon.daemon.net.server import SalonServer

log = logging.getLogger("salon.net")

# How many datagrams may wait inside aioquic for one connection. aioquic's own queue is
# unbounded and never drops, so audio would pile up behind a congested path; we keep it
# short and let the core's bounded outlet queue (which drops the oldest) absorb the rest.
AIOQUIC_DATAGRAM_BACKLOG = 8


class CloseCode:
    """QUIC application close codes of ``salon/1`` (see PROTOCOL.md)."""

    NO_ERROR = 0x0
    PROTOCOL_VIOLATION = 0x1
    HELLO_TIMEOUT = 0x2
    SERVER_SHUTDOWN = 0x3
    RATE_ABUSE = 0x5


class TokenBucket:
    """Message rate limiter: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SessionProtocol(QuicConnectionProtocol):
    """A client's QUIC connection, bound to a session id of the server."""

    server: SalonServer
    session_id: int

    def __init__(self, *args: object, server: SalonServer, session_id: int, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.server = server
        self.session_id = session_id
        self.identity: Identity | None = None
        self.control_stream_id: int | None = None
        self.reader = MessageReader()
        self.outlet: Outlet | None = None
        self.peer_max_datagram = 0
        self.closed = False
        self.address: str = ""
        self.rate = TokenBucket(
            server.config.limits.message_rate, server.config.limits.message_burst, self._loop.time()
        )
        self.rate_strikes = 0

    # -- aioquic callbacks

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.DatagramFrameReceived):
            self.server.on_datagram(self, event.data)
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, events.HandshakeCompleted):
            remote = self._quic._remote_max_datagram_frame_size
            # A peer that did not enable DATAGRAM must never be sent one: aioquic would
            # send it anyway and the peer would close the connection.
            self.peer_max_datagram = min(remote or 0, self.server.config.server.max_datagram_size)
            addr = self._quic._network_paths[0].addr if self._quic._network_paths else None
            self.address = str(addr[0]) if addr else ""
            self.server.on_handshake(self)
        elif isinstance(event, events.ConnectionTerminated) and not self.closed:
            self.closed = True
            self.server.on_closed(self, event.reason_phrase or str(event.error_code))

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        if self.control_stream_id is None:
            # The control stream is the client's first bidirectional stream.
            if event.stream_id % 4 != 0:
                self.close_with(
                    CloseCode.PROTOCOL_VIOLATION, "control stream must be bidirectional"
                )
                return
            self.control_stream_id = event.stream_id
        if event.stream_id != self.control_stream_id:
            self.server.stats.count_drop("extra_stream")
            return
        try:
            messages = self.reader.feed(event.data)
        except WireError as exc:
            self.server.stats.count_drop("control_framing")
            self.close_with(CloseCode.PROTOCOL_VIOLATION, str(exc))
            return
        for payload in messages:
            self.server.on_control_message(self, payload)
        if event.end_stream:
            self.close_with(CloseCode.NO_ERROR, "control stream closed")

    # -- sending

    def send_control(self, framed: bytes) -> None:
        """Queue an already framed control message; the server flushes once per loop tick."""
        if self.control_stream_id is None or self.closed:
            return
        self._quic.send_stream_data(self.control_stream_id, framed)

    def send_message_payload(self, payload: bytes) -> None:
        self.send_control(frame_message(payload))

    def close_with(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.on_closed(self, reason)
        self.close(error_code=code, reason_phrase=reason)

    def transmit(self) -> None:
        """Move queued audio into aioquic (bounded), then let aioquic send packets."""
        outlet = self.outlet
        if outlet is not None and outlet.queue:
            self._move_outlet_to_quic(outlet)
        super().transmit()

    def _move_outlet_to_quic(self, outlet: Outlet) -> None:
        queue = outlet.queue
        if self.peer_max_datagram == 0:
            self.server.stats.count_drop("peer_no_datagrams", len(queue))
            queue.clear()
            return
        pending = self._quic._datagrams_pending
        room = AIOQUIC_DATAGRAM_BACKLOG - len(pending)
        limit = self.peer_max_datagram
        moved = 0
        while queue and moved < room:
            data = queue.popleft()
            if len(data) > limit:
                self.server.stats.count_drop("peer_limit")
                continue
            pending.append(data)
            moved += 1
        self.server.stats.datagrams_out += moved
