"""One client connection: the glue between a QUIC connection and the server.

The protocol does no policy: it reassembles control messages, hands them and media datagrams to
the server, and gives the core's outlet to :class:`salon.quic.protocol.ServerProtocol`, which
sends it (the fast path) and keeps aioquic's own datagram queue short.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from aioquic.h3 import events as h3_events
from aioquic.quic import events

from salon.daemon.core import Identity, Outlet
from salon.daemon.net.webtransport import H3_ALPN, WebTransportGate
from salon.daemon.wire.datagram import payload_limit
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.framing import MessageReader, frame_message
from salon.quic.protocol import ServerProtocol

if TYPE_CHECKING:
    from salon.daemon.net.server import SalonServer

log = logging.getLogger("salon.net")

# How many bytes of control messages may wait, unacknowledged, for one client. A client that
# never reads its control stream (so never grants flow-control credit) would otherwise make the
# server buffer every later event for it; past this it is closed with ``control_backlog``.
MAX_CONTROL_BACKLOG = 1 << 20


class CloseCode:
    """QUIC application close codes of ``salon/1`` (see PROTOCOL.md)."""

    NO_ERROR = 0x0
    PROTOCOL_VIOLATION = 0x1
    HELLO_TIMEOUT = 0x2
    SERVER_SHUTDOWN = 0x3
    RATE_ABUSE = 0x5
    CONTROL_BACKLOG = 0x7
    SERVER_FULL = 0x8


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


class SessionProtocol(ServerProtocol):
    """A client's QUIC connection, bound to a session id of the server."""

    server: SalonServer
    session_id: int

    def __init__(self, *args: object, server: SalonServer, session_id: int, **kwargs: object):
        super().__init__(
            *args,
            fast_path=server.fast_path,
            ack_fast_path=server.ack_fast_path,
            shared_timers=server.config.tuning.shared_timers,
            media_link=server.config.tuning.media_link,
            **kwargs,
        )
        self.server = server
        self.session_id = session_id
        self.identity: Identity | None = None
        self.control_stream_id: int | None = None
        self.reader = MessageReader()
        self.outlet: Outlet | None = None
        self.closed = False
        self.address: str = ""
        self.rate = TokenBucket(
            server.config.limits.message_rate, server.config.limits.message_burst, self.loop.time()
        )
        self.rate_strikes = 0
        self.backlog_exceeded = False
        self.hello_timer: asyncio.TimerHandle | None = None
        """Closes the session if no hello succeeds in time; cancelled once it is moot."""
        self.web: WebTransportGate | None = None
        """HTTP/3 when the client came over WebTransport (ALPN h3); None for ``salon/1``."""
        server.prepare_connection(self.quic)

    # -- aioquic callbacks

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if self.web is not None and not isinstance(
            event, (events.HandshakeCompleted, events.ConnectionTerminated)
        ):
            for web_event in self.web.handle(event):
                self._on_web_event(web_event)
            return
        if isinstance(event, events.DatagramFrameReceived):
            self.server.on_datagram(self, event.data)
            self.count_datagram_received()
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, events.HandshakeCompleted):
            remote = self.remote_max_datagram_frame_size
            # A peer that did not enable DATAGRAM must never be sent one: aioquic would
            # send it anyway and the peer would close the connection.
            # The peer bounds the whole frame (RFC 9221), not the payload (PROTOCOL.md 2.2).
            self.peer_max_datagram = min(
                payload_limit(remote), self.server.config.server.max_datagram_size
            )
            addr = self.peer_address
            self.address = str(addr[0]) if addr else ""
            if event.alpn_protocol == H3_ALPN:
                self.web = WebTransportGate(self.quic)
            self.server.on_handshake(self)
        elif isinstance(event, events.ConnectionTerminated) and not self.closed:
            self.closed = True
            self.server.on_closed(self, event.reason_phrase or str(event.error_code))

    def _on_web_event(self, event: h3_events.H3Event) -> None:
        web = self.web
        assert web is not None
        if isinstance(event, h3_events.DatagramReceived):
            if event.stream_id == web.session_stream_id:
                self.server.on_datagram(self, event.data)
                self.count_datagram_received()
            else:
                self.server.stats.count_drop("malformed")
        elif isinstance(event, h3_events.WebTransportStreamDataReceived):
            if event.session_id == web.session_stream_id:
                self._on_control_data(event.stream_id, event.data, event.stream_ended)
            else:
                self.server.stats.count_drop("extra_stream")
        elif isinstance(event, h3_events.HeadersReceived):
            if web.on_request(event):
                # Media goes out as HTTP/3 datagrams of the session from now on.
                self.use_http3_datagrams(
                    web.datagram_prefix, payload_limit(self.remote_max_datagram_frame_size)
                )
            else:
                self.server.stats.count_drop("webtransport_refused")
        elif (
            isinstance(event, h3_events.DataReceived)
            and event.stream_id == web.session_stream_id
            and event.stream_ended
        ):
            # Ending the CONNECT stream ends the WebTransport session.
            self.close_with(CloseCode.NO_ERROR, "webtransport session closed")

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        self._on_control_data(event.stream_id, event.data, event.end_stream)

    def _on_control_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self.control_stream_id is None:
            # The control stream is the client's first bidirectional stream.
            if stream_id % 4 != 0:
                self.close_with(
                    CloseCode.PROTOCOL_VIOLATION, "control stream must be bidirectional"
                )
                return
            self.control_stream_id = stream_id
        if stream_id != self.control_stream_id:
            self.server.stats.count_drop("extra_stream")
            return
        try:
            messages = self.reader.feed(data)
        except WireError as exc:
            self.server.stats.count_drop("control_framing")
            self.close_with(CloseCode.PROTOCOL_VIOLATION, str(exc))
            return
        for payload in messages:
            self.server.on_control_message(self, payload)
        if end_stream:
            self.close_with(CloseCode.NO_ERROR, "control stream closed")

    # -- sending

    def send_control(self, framed: bytes) -> None:
        """Queue an already framed control message; the server flushes once per loop tick."""
        if self.control_stream_id is None or self.closed or self.backlog_exceeded:
            return
        self.quic.send_stream_data(self.control_stream_id, framed)
        backlog = self.stream_send_backlog(self.control_stream_id)
        if backlog is not None and backlog > MAX_CONTROL_BACKLOG:
            # Closed on the next tick, not here: this may run while the server is delivering
            # an event to several sessions, and closing produces events of its own.
            self.backlog_exceeded = True
            self.server.stats.count_drop("control_backlog")
            self.loop.call_soon(
                self.close_with, CloseCode.CONTROL_BACKLOG, "control stream not read"
            )

    def send_message_payload(self, payload: bytes) -> None:
        self.send_control(frame_message(payload))

    def close_with(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.on_closed(self, reason)
        self.close(error_code=code, reason_phrase=reason)

    # -- the media the fast path sends (salon.quic.protocol.ServerProtocol)

    def media_queue(self) -> collections.deque[bytes] | None:
        outlet = self.outlet
        return outlet.queue if outlet is not None else None

    def media_sent(self, count: int) -> None:
        self.server.stats.datagrams_out += count

    def media_dropped(self, reason: str, count: int) -> None:
        self.server.stats.count_drop(reason, count)
