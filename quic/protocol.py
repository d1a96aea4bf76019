"""The QUIC protocols of salond and the client: aioquic's, with the internals Salon relies on.

:class:`SalonQuicProtocol` is what both sides share (the connection, the loop, the peer's
limits, the ACK-state PING); :class:`ServerProtocol` adds the server's transmit (the datagram
fast path, its timer, the bounded hand-over to aioquic's datagram queue) and
:class:`ClientProtocol` the client's delayed ACKs. Subclasses use only public names.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_transport_parameters, push_quic_transport_parameters
from aioquic.tls import Epoch

from salon.quic.ackpath import AckFastPath
from salon.quic.fastpath import DatagramFastPath, SendResult
from salon.quic.medialink import APPLIED, FALLBACK
from salon.quic.sendbatch import BatchingTransport
from salon.quic.timers import ConnectionTimers, connection_timers

ACK_STATE_CHECK = 64
"""Every this many datagrams received, :meth:`SalonQuicProtocol.release_ack_state` runs."""
ACK_STATE_LIMIT = 64
"""Sent packets waiting for an acknowledgement above which a PING goes out."""

AIOQUIC_DATAGRAM_BACKLOG = 8
"""How many datagrams may wait inside aioquic for one connection. aioquic's own queue is
unbounded and never drops, so audio would pile up behind a congested path; it is kept short and
the caller's bounded queue (which drops the oldest) absorbs the rest."""


class SalonQuicProtocol(QuicConnectionProtocol):
    """aioquic's connection protocol with the internals both sides read under public names."""

    datagrams_received = 0

    @property
    def quic(self) -> QuicConnection:
        """The connection (sans-I/O) this protocol drives."""
        return self._quic

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def remote_max_datagram_frame_size(self) -> int:
        """The largest DATAGRAM frame the peer accepts; 0 if it did not enable DATAGRAM."""
        return self._quic._remote_max_datagram_frame_size or 0

    @property
    def peer_address(self) -> Any:
        """The peer's (host, port, ...) on the connection's first path; None before one."""
        paths = self._quic._network_paths
        return paths[0].addr if paths else None

    def peer_certificate(self) -> Any:
        """The certificate the peer presented in the handshake (a ``cryptography`` object)."""
        return self._quic.tls._peer_certificate

    def stream_send_backlog(self, stream_id: int) -> int | None:
        """Bytes written to ``stream_id`` and not yet acknowledged; None for no such stream."""
        stream = self._quic._streams.get(stream_id)
        if stream is None:
            return None
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)

    def count_datagram_received(self) -> None:
        """Count one datagram received; every :data:`ACK_STATE_CHECK`, release ACK state.

        A connection that only receives audio answers it with ACK-only packets, which the peer
        never acknowledges (RFC 9000 13.2.4), and aioquic keeps every sent packet until it is
        acknowledged: memory would grow by 50 packets a second for as long as audio flows. A
        PING when more than :data:`ACK_STATE_LIMIT` sent packets wait gets them all
        acknowledged.
        """
        self.datagrams_received += 1
        if self.datagrams_received % ACK_STATE_CHECK == 0:
            space = self._quic._spaces.get(Epoch.ONE_RTT)
            if space is not None and len(space.sent_packets) > ACK_STATE_LIMIT:
                self._quic.send_ping(0)


class ServerProtocol(SalonQuicProtocol):
    """The server side: queued media leaves by the datagram fast path when it can.

    A subclass gives :meth:`media_queue`, :meth:`media_sent` and :meth:`media_dropped`, and sets
    :attr:`peer_max_datagram` once the handshake is done.
    """

    def __init__(
        self,
        *args: Any,
        fast_path: bool = True,
        ack_fast_path: bool = True,
        shared_timers: bool = True,
        media_link: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.timers: ConnectionTimers | None = (
            connection_timers(self._loop) if shared_timers else None
        )
        """Where the connection's timer is armed (:mod:`salon.quic.timers`); None: its own
        ``loop.call_at``, as aioquic does."""
        self.peer_max_datagram = 0
        """The largest datagram this peer is sent (0: none, it did not enable DATAGRAM)."""
        self.fastpath: DatagramFastPath | None = (
            DatagramFastPath(self._quic, media_link=media_link and ack_fast_path)
            if fast_path
            else None
        )
        self.ackpath: AckFastPath | None = AckFastPath(self._quic) if ack_fast_path else None
        self.media_link: Any = self.fastpath.link if self.fastpath is not None else None
        """The connection's media link (:mod:`salon.quic.medialink`), or None; the server's
        flush sends through it in C (``_speedups.flush_links``) while it is loaded."""
        self.datagram_prefix = b""
        """What every media datagram to this peer starts with: over WebTransport, the session's
        quarter stream id (RFC 9297); nothing on ``salon/1``."""

    def use_http3_datagrams(self, prefix: bytes, frame_payload_limit: int) -> None:
        """Send media as HTTP/3 datagrams starting with ``prefix`` (a WebTransport session).

        ``frame_payload_limit`` is the largest DATAGRAM frame payload the peer accepts: the
        prefix counts against it, not against :attr:`peer_max_datagram`, the media's own limit.
        The fast path writes bare DATAGRAM frames, so such a connection goes without it.
        """
        self.fastpath = None
        self.media_link = None
        self.datagram_prefix = prefix
        self.peer_max_datagram = min(self.peer_max_datagram, frame_payload_limit - len(prefix))

    # -- receiving

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        """ACK-only packets take the ACK fast path (:mod:`salon.quic.ackpath`); the rest
        aioquic's ``receive_datagram``."""
        fast = self.fastpath
        link = self.media_link
        if link is not None and link.active:
            # Applied in C (salon.quic.medialink), or refused with nothing changed: then the
            # state goes back to aioquic's objects and the packet takes the paths below.
            if link.receive(data, addr, self._loop.time()) == APPLIED:
                if self.media_queue():
                    self.transmit()  # the window may have opened
                self._arm_timer()  # the loss time may have moved earlier
                return
            fast.unload_link()  # type: ignore[union-attr]
        ackpath = self.ackpath
        # Only str from a datagram socket would be a bug in asyncio; the fast path reads bytes.
        if (
            ackpath is not None
            and isinstance(data, bytes)
            and ackpath.receive(data, addr, self._loop.time())
        ):
            fast = self.fastpath
            if fast is not None and not ackpath.accept_datagrams and fast.clean_after_ack():
                # Only fast packets were acknowledged or lost: no event, nothing for
                # aioquic to send; the queue may go out now and the timer may move earlier.
                self.transmit()
                self._arm_timer()
                return
            # The ACK may have released or lost packets aioquic must act on: the send fast
            # path checks the connection again, as after any call into aioquic.
            if fast is not None:
                fast.quic.fast_clean = False
            self._process_events()
            self.transmit()
            return
        super().datagram_received(data, addr)

    # -- what the subclass provides

    def media_queue(self) -> collections.deque[bytes] | None:
        """The bounded queue of media datagrams to send (popped from the left)."""
        return None

    def media_sent(self, count: int) -> None:
        """``count`` datagrams left the queue for the peer."""

    def media_dropped(self, reason: str, count: int) -> None:
        """``count`` datagrams were dropped for ``reason`` (``peer_limit``, ...)."""

    # -- sending

    def transmit(self) -> None:
        """Send queued media and whatever else aioquic has pending.

        A connection with nothing but media to send takes the datagram fast path (see
        :mod:`salon.quic.fastpath`); anything else goes through aioquic's own writer.
        """
        fast = self.fastpath
        if fast is None:
            self._transmit_normal()
            return
        now = self._loop.time()
        rearm = False
        link = self.media_link
        if link is not None and link.active:
            self._transmit_link(link, now)
            return
        if not fast.quic.fast_clean:
            # Something called into aioquic since the last check (a packet, a timer, a send).
            if not fast.refresh() or fast.ack_due(now):
                self._transmit_normal()
                return
            rearm = True
        if fast.link_wanted and fast.load_link():
            self._transmit_link(fast.link, now)
            if rearm:
                self._arm_timer()
            return
        queue = self.media_queue()
        if queue and not self._dropped_for_no_datagrams(queue):
            queued = len(queue)
            dropped = fast.dropped
            result = fast.send(queue, self.peer_max_datagram, now, self._transport.sendto)  # type: ignore[union-attr]
            if fast.dropped != dropped:
                self.media_dropped("peer_limit", fast.dropped - dropped)
            self.media_sent(queued - len(queue) - (fast.dropped - dropped))
            if result == SendResult.FALLBACK:
                self._transmit_normal()
                return
            rearm = rearm or fast.armed_pto
        if rearm:
            self._arm_timer()

    def _transmit_link(self, link: Any, now: float) -> None:
        """Send queued media through the connection's loaded media link."""
        queue = self.media_queue()
        # What the server's flush_links reads (the queue and limit may come after the load).
        link.queue = queue
        link.limit = self.peer_max_datagram
        if not queue or self._dropped_for_no_datagrams(queue):
            return
        transport: Any = self._transport
        lists = transport.batch_lists() if isinstance(transport, BatchingTransport) else None
        packets, addrs = lists if lists is not None else ([], [])
        result, sent, dropped, armed = link.send(queue, self.peer_max_datagram, now, packets, addrs)
        if lists is None:
            for packet, addr in zip(packets, addrs, strict=True):
                transport.sendto(packet, addr)
        if sent:
            self.media_sent(sent)
        self.after_link_send(result, dropped, armed)

    def after_link_send(self, result: int, dropped: int, armed: bool) -> None:
        """What follows a media link's send in Python: counting datagrams it dropped,
        aioquic's writer when the link could not send (pacing, an ACK due), re-arming the
        timer when the first packet went in flight."""
        if dropped:
            self.media_dropped("peer_limit", dropped)
        if result == FALLBACK:
            self._transmit_normal()
        elif armed:
            self._arm_timer()

    def _transmit_normal(self) -> None:
        """Move queued media into aioquic (bounded), then let aioquic send packets."""
        queue = self.media_queue()
        if queue:
            self._move_queue_to_quic(queue)
        if self.timers is None:
            super().transmit()
            return
        # aioquic's transmit, with the timer armed on the shared timers.
        self._transmit_task = None
        transport: Any = self._transport
        for data, addr in self._quic.datagrams_to_send(now=self._loop.time()):
            transport.sendto(data, addr)
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._call_at(timer_at)
        self._timer_at = timer_at

    def _call_at(self, when: float) -> Any:
        """Arm the connection's timer for ``when``: on the shared timers, or the loop."""
        timers = self.timers
        if timers is None:
            return self._loop.call_at(when, self._handle_timer)
        return timers.call_at(when, self._handle_timer)

    def _arm_timer(self) -> None:
        """Re-arm the connection's timer after the fast path, as aioquic's transmit does.

        A timer due earlier than needed is kept: sends only move the loss detection time
        later, and :meth:`_handle_timer` re-arms a timer that fired early, which is cheaper
        than moving the timer on every packet.
        """
        link = self.media_link
        timer_at = link.timer() if link is not None and link.active else self._quic.get_timer()
        if self._timer is not None:
            if timer_at is not None and self._timer_at is not None and self._timer_at <= timer_at:
                return
            self._timer.cancel()
            self._timer = None
        self._timer_at = timer_at
        if timer_at is not None:
            self._timer = self._call_at(timer_at)

    def _handle_timer(self) -> None:
        fast = self.fastpath
        link = self.media_link
        if link is not None and link.active:
            due = link.timer()
            now = max(self._timer_at or 0.0, self._loop.time())
            if due is not None and due > now:
                self._timer = self._call_at(due)
                self._timer_at = due
                return
            fast.unload_link()  # type: ignore[union-attr]
        if self.fastpath is not None:
            # get_timer also refreshes aioquic's loss detection time, which fast sends moved.
            due = self._quic.get_timer()
            now = max(self._timer_at or 0.0, self._loop.time())
            if due is not None and due > now:
                self._timer = self._call_at(due)
                self._timer_at = due
                return
        super()._handle_timer()

    def _dropped_for_no_datagrams(self, queue: collections.deque[bytes]) -> bool:
        """A peer that did not enable DATAGRAM gets no media: the queue is dropped and
        counted (``peer_no_datagrams``). True if that was the case."""
        if self.peer_max_datagram != 0:
            return False
        self.media_dropped("peer_no_datagrams", len(queue))
        queue.clear()
        return True

    def _move_queue_to_quic(self, queue: collections.deque[bytes]) -> None:
        if self._dropped_for_no_datagrams(queue):
            return
        pending = self._quic._datagrams_pending
        room = AIOQUIC_DATAGRAM_BACKLOG - len(pending)
        limit = self.peer_max_datagram
        prefix = self.datagram_prefix
        moved = 0
        while queue and moved < room:
            data = queue.popleft()
            if len(data) > limit:
                self.media_dropped("peer_limit", 1)
                continue
            pending.append(prefix + data if prefix else data)
            moved += 1
        self.media_sent(moved)


# Our clients acknowledge media at most every 100 ms instead of aioquic's 1 ms: each ACK costs
# the server ~29 us to process, about as much as forwarding the audio packet itself, and a
# listener gets 50 of them a second. The delay is advertised to the server as max_ack_delay
# (with ACK_DELAY_MARGIN for a busy client's timer) so that its loss detection waits for the
# ACKs instead of sending probes; control messages are acknowledged at once (see
# ClientProtocol.datagram_received) so that big room states are not slowed down.
CLIENT_ACK_DELAY = 0.100
ACK_DELAY_MARGIN = 0.025


def delay_acks(quic: QuicConnection, seconds: float) -> None:
    """Acknowledge ``quic``'s packets after ``seconds`` and advertise it as ``max_ack_delay``.

    Must run before the connection starts (the transport parameters go in its first packet).
    """
    quic._ack_delay = seconds
    serialize = quic._serialize_transport_parameters

    def serialize_with_delay() -> bytes:
        params = pull_quic_transport_parameters(Buffer(data=serialize()))
        # aioquic advertises 25 ms whatever its _ack_delay; never less than that.
        params.max_ack_delay = max(25, round((seconds + ACK_DELAY_MARGIN) * 1000))
        buffer = Buffer(capacity=4096)
        push_quic_transport_parameters(buffer, params)
        return buffer.data

    quic._serialize_transport_parameters = serialize_with_delay  # type: ignore[method-assign]


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ClientProtocol(SalonQuicProtocol):
    """The client side: media ACKs delayed by ``ack_delay``, control data acknowledged at once."""

    def __init__(self, *args: Any, ack_delay: float = CLIENT_ACK_DELAY, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        delay_acks(self._quic, ack_delay)

    async def wait_connected(self) -> None:
        try:
            await super().wait_connected()
        except asyncio.CancelledError:
            # aioquic shields its private handshake waiter: when a timeout gives up on it, it
            # later fails with a ConnectionError nobody reads ("Future exception was never
            # retrieved"). Reading it here keeps the give-up quiet.
            waiter = self._connected_waiter
            if waiter is not None:
                waiter.add_done_callback(_consume_exception)
            raise

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        quic = self._quic
        now = self._loop.time()
        quic.receive_datagram(data, addr, now=now)  # type: ignore[arg-type]
        if any(isinstance(event, events.StreamDataReceived) for event in quic._events):
            # Control data is acknowledged at once: only media ACKs wait (CLIENT_ACK_DELAY).
            for space in quic._spaces.values():
                if space.ack_at is not None:
                    space.ack_at = now
        self._process_events()
        self.transmit()
