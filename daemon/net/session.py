"""One client connection: the aioquic protocol glue between a QUIC connection and the server.

This module and :mod:`salon.daemon.net.server` are the only places that import aioquic. The
protocol does no policy: it reassembles control messages, hands them and media datagrams to
the server, and keeps the connection's outgoing datagram queue short.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events

from salon.daemon.core import Identity, Outlet
from salon.daemon.net.fastpath import DatagramFastPath, SendResult, enabled_by_environment
from salon.daemon.wire.datagram import payload_limit
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.framing import MessageReader, frame_message

if TYPE_CHECKING:
    from salon.daemon.net.server import SalonServer

log = logging.getLogger("salon.net")

# How many datagrams may wait inside aioquic for one connection. aioquic's own queue is
# unbounded and never drops, so audio would pile up behind a congested path; we keep it
# short and let the core's bounded outlet queue (which drops the oldest) absorb the rest.
AIOQUIC_DATAGRAM_BACKLOG = 8

# How many bytes of control messages may wait, unacknowledged, for one client. A client that
# never reads its control stream (so never grants flow-control credit) would otherwise make the
# server buffer every later event for it; past this it is closed with ``control_backlog``.
MAX_CONTROL_BACKLOG = 1 << 20

# A connection that only receives audio answers it with ACK-only packets, which the peer never
# acknowledges (RFC 9000 13.2.4), and aioquic keeps every sent packet until it is acknowledged:
# a speaker's connection would grow by 50 packets a second for as long as it talks. Every
# ACK_STATE_CHECK datagrams received, a PING goes out if more than ACK_STATE_LIMIT sent packets
# wait; the peer's ACK of it releases them all.
ACK_STATE_CHECK = 64
ACK_STATE_LIMIT = 64

FASTPATH_ENABLED = enabled_by_environment()
"""Whether new sessions use the datagram fast path (``SALON_FASTPATH=0`` turns it off)."""


class CloseCode:
    """QUIC application close codes of ``salon/1`` (see PROTOCOL.md)."""

    NO_ERROR = 0x0
    PROTOCOL_VIOLATION = 0x1
    HELLO_TIMEOUT = 0x2
    SERVER_SHUTDOWN = 0x3
    RATE_ABUSE = 0x5
    CONTROL_BACKLOG = 0x7


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
        self.backlog_exceeded = False
        self.datagrams_received = 0
        self.hello_timer: asyncio.TimerHandle | None = None
        """Closes the session if no hello succeeds in time; cancelled once it is moot."""
        self.fastpath: DatagramFastPath | None = (
            DatagramFastPath(self._quic) if FASTPATH_ENABLED else None
        )

    # -- aioquic callbacks

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.DatagramFrameReceived):
            self.server.on_datagram(self, event.data)
            self.datagrams_received += 1
            if self.datagrams_received % ACK_STATE_CHECK == 0:
                self._release_ack_state()
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, events.HandshakeCompleted):
            remote = self._quic._remote_max_datagram_frame_size
            # A peer that did not enable DATAGRAM must never be sent one: aioquic would
            # send it anyway and the peer would close the connection.
            # The peer bounds the whole frame (RFC 9221), not the payload (PROTOCOL.md 2.2).
            self.peer_max_datagram = min(
                payload_limit(remote or 0), self.server.config.server.max_datagram_size
            )
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

    def _release_ack_state(self) -> None:
        space = self._quic._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and len(space.sent_packets) > ACK_STATE_LIMIT:
            self._quic.send_ping(0)

    # -- sending

    def send_control(self, framed: bytes) -> None:
        """Queue an already framed control message; the server flushes once per loop tick."""
        if self.control_stream_id is None or self.closed or self.backlog_exceeded:
            return
        self._quic.send_stream_data(self.control_stream_id, framed)
        stream = self._quic._streams.get(self.control_stream_id)
        if stream is None:
            return
        sender = stream.sender
        if sender._buffer_stop - sender._buffer_start > MAX_CONTROL_BACKLOG:
            # Closed on the next tick, not here: this may run while the server is delivering
            # an event to several sessions, and closing produces events of its own.
            self.backlog_exceeded = True
            self.server.stats.count_drop("control_backlog")
            self._loop.call_soon(
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

    def transmit(self) -> None:
        """Send queued audio and whatever else aioquic has pending.

        A connection with nothing but audio to send takes the datagram fast path (see
        :mod:`salon.daemon.net.fastpath`); anything else goes through aioquic's own writer.
        """
        fast = self.fastpath
        if fast is None:
            self._transmit_normal()
            return
        now = self._loop.time()
        rearm = False
        if not fast.quic.fast_clean:
            # Something called into aioquic since the last check (a packet, a timer, a send).
            if not fast.refresh() or fast.ack_due(now):
                self._transmit_normal()
                return
            rearm = True
        outlet = self.outlet
        if outlet is not None and outlet.queue:
            queue = outlet.queue
            if self.peer_max_datagram == 0:
                self.server.stats.count_drop("peer_no_datagrams", len(queue))
                queue.clear()
            else:
                queued = len(queue)
                dropped = fast.dropped
                result = fast.send(queue, self.peer_max_datagram, now, self._transport.sendto)  # type: ignore[union-attr]
                if fast.dropped != dropped:
                    self.server.stats.count_drop("peer_limit", fast.dropped - dropped)
                self.server.stats.datagrams_out += queued - len(queue) - (fast.dropped - dropped)
                if result == SendResult.FALLBACK:
                    self._transmit_normal()
                    return
                rearm = rearm or fast.armed_pto
        if rearm:
            self._arm_timer()

    def _transmit_normal(self) -> None:
        """Move queued audio into aioquic (bounded), then let aioquic send packets."""
        outlet = self.outlet
        if outlet is not None and outlet.queue:
            self._move_outlet_to_quic(outlet)
        super().transmit()

    def _arm_timer(self) -> None:
        """Re-arm the connection's timer after the fast path, as aioquic's transmit does.

        A timer due earlier than needed is kept: sends only move the loss detection time
        later, and :meth:`_handle_timer` re-arms a timer that fired early, which is cheaper
        than moving the timer on every packet.
        """
        timer_at = self._quic.get_timer()
        if self._timer is not None:
            if timer_at is not None and self._timer_at is not None and self._timer_at <= timer_at:
                return
            self._timer.cancel()
            self._timer = None
        self._timer_at = timer_at
        if timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)

    def _handle_timer(self) -> None:
        if self.fastpath is not None:
            # get_timer also refreshes aioquic's loss detection time, which fast sends moved.
            due = self._quic.get_timer()
            now = max(self._timer_at or 0.0, self._loop.time())
            if due is not None and due > now:
                self._timer = self._loop.call_at(due, self._handle_timer)
                self._timer_at = due
                return
        super()._handle_timer()

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
