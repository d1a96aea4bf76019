"""The datagram fast path: send media without running aioquic's whole packet writer.

A listener's connection spends most of its life with nothing to send but audio. For such a
connection aioquic still builds a packet builder, walks every frame type, allocates and
flushes for each transmit. The fast path sends the queued media DATAGRAM frames itself, in
short-header packets built with the connection's own 1-RTT keys, and registers them with
aioquic's loss recovery and congestion control exactly as aioquic would (packet number, sent
packets, bytes in flight, PTO, idle timer, pacing). Everything else goes through aioquic.

The rules that keep this correct:

- **Only when nothing else is pending.** :meth:`DatagramFastPath.refresh` checks every source
  of frames ``QuicConnection._write_application`` knows (ACK due, handshake, path validation,
  connection ids, flow control updates, pings and probes, CRYPTO, streams, aioquic's own
  datagram queue, closing, key updates, qlog) and caches the result in ``fast_clean``.
- **The cache dies on every call into aioquic.** :class:`FastQuicConnection` clears
  ``fast_clean`` in each public method that changes state (receiving, timers, sending stream
  data, closing...), so the next transmit checks again.
- **Except after an ACK of fast packets only.** The ACK fast path applies a listener's ACK
  without calling into aioquic's public methods; when nothing but fast packets was in flight
  at the last check the ACK cannot queue anything, and :meth:`DatagramFastPath.clean_after_ack`
  keeps the cache (``ServerProtocol.datagram_received``).
- **The timers stay right.** A fast send that puts the first ack-eliciting packet in flight
  re-arms the loss detection timer; a timer that fires early (because sends moved the PTO
  later) just re-arms itself (see ``ServerProtocol._handle_timer``).
- **Anything unusual falls back** to aioquic's normal path: an ACK due, pacing, a datagram
  aioquic itself holds.
- **Pinned.** The fast path reads aioquic internals; it only switches on for the version it
  was written and tested against (:data:`salon.quic.AIOQUIC_VERSION`), and the configuration
  key ``server.fast_path = false`` turns it off.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

import aioquic
from aioquic.quic.congestion.reno import RenoCongestionControl
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.packet import PACKET_FIXED_BIT, QuicFrameType, QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from salon.quic import AIOQUIC_VERSION, aioquic_matches, load_speedups, medialink
from salon.quic.ckeys import checked_sealer

_speedups = load_speedups()

log = logging.getLogger("salon.net")

INVALIDATING_METHODS = (
    "change_connection_id",
    "close",
    "connect",
    "datagrams_to_send",
    "handle_timer",
    "receive_datagram",
    "request_key_update",
    "reset_stream",
    "send_datagram_frame",
    "send_ping",
    "send_stream_data",
    "stop_stream",
)
"""Public ``QuicConnection`` methods that may change what is pending: each clears the cache."""

READ_ONLY_MEMBERS = (
    "configuration",
    "get_next_available_stream_id",
    "get_peer_address",
    "get_timer",
    "next_event",
    "original_destination_connection_id",
)
"""Public ``QuicConnection`` members that leave the cache valid (``get_timer`` takes the
state back from a media link first, as it reads loss recovery)."""

# Short header: fixed bit, then spin bit, key phase, and a 2-byte packet number (as aioquic).
PACKET_NUMBER_SIZE = 2
AEAD_TAG_SIZE = 16
DATAGRAM_FRAME = bytes((QuicFrameType.DATAGRAM_WITH_LENGTH,))
ONE_RTT = Epoch.ONE_RTT
ONE_RTT_PACKET = QuicPacketType.ONE_RTT
CONNECTED = QuicConnectionState.CONNECTED
NO_HANDLERS: Any = ()
"""Shared by every fast packet: aioquic only iterates over these lists once sent."""
new_object = object.__new__


class FastSentPacket(QuicSentPacket):
    """A fast packet's record in aioquic's loss recovery: a ``QuicSentPacket`` whose fields
    common to every fast packet are class attributes, built without the dataclass
    ``__init__`` (three slots to fill instead of a ten-key dict: a third of the time)."""

    __slots__ = ("packet_number", "sent_bytes", "sent_time")
    epoch = ONE_RTT
    in_flight = True
    is_ack_eliciting = True
    is_crypto_packet = False
    packet_type = ONE_RTT_PACKET
    delivery_handlers = NO_HANDLERS
    quic_logger_frames = NO_HANDLERS


INLINE_CRYPTO = True
"""Seal and protect AES packets by calling ``cryptography`` directly (False: through aioquic's
``CryptoContext.encrypt_packet``; the tests compare both)."""
INLINE_RECOVERY = True
"""Do loss recovery's and the pacer's per-packet bookkeeping in :meth:`DatagramFastPath.send`
where that is exact (Reno); False: call aioquic's methods (the benchmarks compare both)."""
C_SEAL = _speedups is not None
"""Seal and protect AES packets in one call into the C extension ``salon.quic._speedups``
(when it was built; False: :data:`INLINE_CRYPTO`'s Python path; the tests compare both)."""


def speedups_available() -> bool:
    """Whether the optional C extension ``salon.quic._speedups`` was built at install."""
    return _speedups is not None


def supported() -> bool:
    """Whether the fast path may run: aioquic is the release it was written for."""
    if aioquic_matches():
        return True
    log.warning(
        "datagram fast path off: written for aioquic %s, found %s",
        AIOQUIC_VERSION,
        aioquic.__version__,
    )
    return False


class FastQuicConnection(QuicConnection):
    """A ``QuicConnection`` whose state-changing calls clear the fast path's cache."""

    fast_clean = False
    """True while :meth:`DatagramFastPath.refresh` found nothing but datagrams pending and
    no call into aioquic happened since."""
    media_unload: Callable[[], None] | None = None
    """Set while a ``MediaLink`` holds the connection's media state: gives it back to aioquic's
    objects (:mod:`salon.quic.medialink`); every public method calls it first."""

    def get_timer(self) -> float | None:
        unload = self.media_unload
        if unload is not None:
            unload()
        return QuicConnection.get_timer(self)


def _invalidating(name: str) -> Callable[..., Any]:
    original = getattr(QuicConnection, name)

    def method(self: FastQuicConnection, *args: Any, **kwargs: Any) -> Any:
        self.fast_clean = False
        unload = self.media_unload
        if unload is not None:
            unload()
        return original(self, *args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"FastQuicConnection.{name}"
    method.__doc__ = original.__doc__
    return method


for _name in INVALIDATING_METHODS:
    setattr(FastQuicConnection, _name, _invalidating(_name))


def adopt(quic: QuicConnection) -> FastQuicConnection:
    """Give an existing connection the invalidating methods (its state is untouched)."""
    quic.__class__ = FastQuicConnection
    assert isinstance(quic, FastQuicConnection)
    quic.fast_clean = False
    quic.media_unload = None
    return quic


class SendResult:
    """What :meth:`DatagramFastPath.send` did with the queue."""

    SENT = 0
    """The queue is empty (everything sent or dropped)."""
    BLOCKED = 1
    """The congestion window is full: the rest waits in the queue for the next ACK."""
    FALLBACK = 2
    """The normal path must run (pacing, an ACK due, or the cache is stale)."""


class DatagramFastPath:
    """Sends one connection's queued media datagrams (see the module docstring)."""

    __slots__ = (
        "_addr",
        "_cc",
        "_crypto",
        "_first_byte",
        "_header_start",
        "_hp_mask",
        "_inline_recovery",
        "_iv",
        "_loss",
        "_max_payload",
        "_only_fast",
        "_pacer",
        "_path",
        "_peer_cid",
        "_seal",
        "_sealer",
        "_sealer_cache",
        "_space",
        "_spin",
        "armed_pto",
        "dropped",
        "link",
        "link_acks",
        "link_foreign",
        "link_loads",
        "link_opener",
        "link_opener_key",
        "link_packets",
        "link_wanted",
        "packets",
        "quic",
        "refreshes",
    )

    record_type = FastSentPacket

    def __init__(self, quic: QuicConnection, media_link: bool = False) -> None:
        self.quic = adopt(quic)
        self.link: Any = medialink.new_link() if media_link else None
        """The connection's ``MediaLink`` (:mod:`salon.quic.medialink`), or None: the C
        extension was not built, or the link is off."""
        self.link_wanted = False
        """Whether the last check found the connection in a state the link covers."""
        self.link_loads = 0
        """How many times the link took the connection's media state."""
        self.link_acks = 0
        """ACK-only packets the link applied (counted when it gives the state back)."""
        self.link_packets = 0
        """Packets the link sent (counted when it gives the state back; also in
        :attr:`packets`)."""
        self.link_foreign: dict[int, Any] = {}
        self.link_opener: Any = None
        self.link_opener_key: Any = None
        self.packets = 0
        """Packets sent by the fast path."""
        self.refreshes = 0
        """Full checks of the connection state (one per call into aioquic at most)."""
        self.dropped = 0
        """Datagrams over the peer's limit or too large for one QUIC packet."""
        self.armed_pto = False
        """Set by :meth:`send` when it put the first ack-eliciting packet in flight: the
        caller must re-arm the connection's timer."""
        self._space: Any = None
        self._loss: Any = None
        self._cc: Any = None
        self._pacer: Any = None
        self._crypto: Any = None
        self._seal: Any = None
        self._hp_mask: Any = None
        self._sealer: Any = None
        self._sealer_cache: Any = None
        self._iv = 0
        self._path: Any = None
        self._addr: Any = None
        self._peer_cid = b""
        self._first_byte = 0
        self._header_start = b""
        self._inline_recovery = False
        self._max_payload = 0
        self._only_fast = False
        self._spin = False

    # ------------------------------------------------------------------ the check

    def refresh(self) -> bool:
        """Check that aioquic has nothing but datagrams to send; cache what sending needs."""
        self.refreshes += 1
        quic = self.quic
        quic.fast_clean = False
        if (
            quic._state is not CONNECTED
            or quic._close_pending
            or not quic._handshake_confirmed
            or quic._quic_logger is not None
            or quic._datagrams_pending
            or quic._handshake_done_pending
            or quic._ping_pending
            or quic._probe_pending
            or quic._retire_connection_ids
            or quic._streams_blocked_pending
            or quic._key_update_pending
            or len(quic._network_paths) != 1
            or (quic._is_client and quic._remote_preferred_address is not None)
        ):
            return False
        crypto = quic._cryptos.get(ONE_RTT)
        if crypto is None or not crypto.send.is_valid() or crypto._update_key_requested:
            return False
        path = quic._network_paths[0]
        if not path.is_validated or path.remote_challenges:
            return False
        for connection_id in quic._host_cids:
            if not connection_id.was_sent:
                return False
        if not quic._crypto_streams[ONE_RTT].sender.buffer_is_empty:
            return False
        max_data = quic._local_max_data
        if max_data.used * 2 > max_data.value or max_data.value != max_data.sent:
            return False
        for limit in (quic._local_max_streams_bidi, quic._local_max_streams_uni):
            # aioquic batches MAX_STREAMS: it waits while the peer has enough streams left.
            if limit.value != limit.sent and limit.sent - limit.used < limit.value - limit.sent:
                return False
        for stream in quic._streams.values():
            sender = stream.sender
            local = stream.max_stream_data_local
            if (
                not sender.buffer_is_empty
                or sender.reset_pending
                or stream.receiver.stop_pending
                or stream.is_finished
                or (local and stream.receiver.highest_offset * 2 > local)
                or stream.max_stream_data_local_sent != local
            ):
                return False

        peer_cid = quic._peer_cid.cid
        self._space = quic._spaces[ONE_RTT]
        self._loss = quic._loss
        self._cc = quic._loss._cc
        self._pacer = quic._loss._pacer
        self._crypto = crypto.send
        self._seal = self._hp_mask = None
        self._sealer = self._c_sealer(crypto.send) if C_SEAL else None
        if INLINE_CRYPTO:
            # AES-GCM and AES header protection called directly (see _protect).
            send: Any = crypto.send
            aead = getattr(send.aead, "_aead", None)
            if isinstance(aead, AESGCM) and not getattr(send.hp, "_is_chacha20", True):
                self._seal = aead.encrypt
                self._iv = send.aead._iv
                self._hp_mask = send.hp._encryptor.update
        self._path = path
        self._addr = path.addr
        self._peer_cid = peer_cid
        self._first_byte = (
            PACKET_FIXED_BIT
            | (quic._spin_bit << 5)
            | (crypto.key_phase << 2)
            | (PACKET_NUMBER_SIZE - 1)
        )
        self._header_start = bytes((self._first_byte,)) + peer_cid
        self._max_payload = (
            quic._max_datagram_size - 1 - len(peer_cid) - PACKET_NUMBER_SIZE - AEAD_TAG_SIZE
        )
        loss = quic._loss
        # send() does loss recovery's and the pacer's bookkeeping itself for the congestion
        # controllers whose on_packet_sent only counts bytes in flight (Reno, Salon's
        # MediaReno); for others it calls aioquic's methods.
        self._inline_recovery = (
            INLINE_RECOVERY
            and loss.handshake_confirmed
            and loss._quic_logger is None
            and type(loss._cc).on_packet_sent is RenoCongestionControl.on_packet_sent
        )
        # Packets with delivery handlers (stream data, ACKs, PINGs aioquic sent) change
        # connection state when acknowledged or lost; the fast path's own have none. Until
        # the next call into aioquic only fast packets join them (see clean_after_ack).
        self._only_fast = not any(
            packet.delivery_handlers for packet in self._space.sent_packets.values()
        )
        self._spin = quic._spin_bit
        self.link_wanted = self.link is not None and self._only_fast and self._inline_recovery
        quic.fast_clean = True
        return True

    def clean_after_ack(self) -> bool:
        """Whether the last check still holds after the ACK fast path applied an ACK: it
        did if nothing but the fast path's own packets were in flight at that check (an
        ACK of them, or their loss, runs no delivery handler and queues nothing). The cached
        header's spin bit follows the peer's (as a fresh check would). The ACK did change
        loss recovery and congestion state, which :meth:`send` reads each time, and possibly
        the loss detection time (the caller re-arms the timer)."""
        if not (self.quic.fast_clean and self._only_fast):
            return False
        self.follow_spin()
        return True

    def follow_spin(self) -> None:
        """The cached header's spin bit follows the connection's (as a fresh check would)."""
        spin = self.quic._spin_bit
        if spin != self._spin:
            self._spin = spin
            self._first_byte ^= 1 << 5
            self._header_start = bytes((self._first_byte,)) + self._peer_cid

    @staticmethod
    def new_record(packet_number: int, sent_time: float, sent_bytes: int) -> FastSentPacket:
        """A fast packet's record for aioquic's loss recovery."""
        sent = new_object(FastSentPacket)
        sent.packet_number = packet_number
        sent.sent_time = sent_time
        sent.sent_bytes = sent_bytes
        return sent

    def load_link(self) -> bool:
        """Hand the connection's media state to the link (:func:`salon.quic.medialink.load`);
        False if the connection is not in a state it covers (tried again after the next
        check)."""
        if medialink.load(self):
            return True
        self.link_wanted = False
        return False

    def unload_link(self) -> None:
        """Take the state back from the link into aioquic's objects (if the link has it)."""
        medialink.unload(self)

    def _c_sealer(self, send: Any) -> Any:
        """A C ``PacketSealer`` for ``send``'s keys (kept while aioquic keeps its AEAD object:
        deriving the keys costs more than a hundred packets), or None for a suite it does not
        do or refused by the check (:mod:`salon.quic.ckeys`)."""
        cached = self._sealer_cache
        if cached is not None and cached[0] is send.aead:
            return cached[1]
        self._sealer_cache = (send.aead, checked_sealer(_speedups, send))
        return self._sealer_cache[1]

    def ack_due(self, now: float) -> bool:
        """Whether aioquic owes the peer an ACK now (only the normal path writes ACKs)."""
        ack_at = self._space.ack_at
        return ack_at is not None and ack_at <= now

    # ------------------------------------------------------------------ sending

    def protect(self, header: bytes, payload: bytes, packet_number: int) -> bytes:
        """The packet of ``header`` (2-byte packet number) and ``payload``, sealed and
        header-protected: ``CryptoContext.encrypt_packet``, with AES called directly."""
        sealer = self._sealer
        if sealer is not None:
            return sealer.protect(header, payload, packet_number)
        seal = self._seal
        if seal is None:
            return bytes(self._crypto.encrypt_packet(header, payload, packet_number))
        # RFC 9001 5.3 and 5.4 for AES with a 2-byte packet number, without aioquic's four
        # Python calls and two copies per packet.
        protected = seal((self._iv ^ packet_number).to_bytes(12, "big"), payload, header)
        mask = self._hp_mask(protected[2:18])
        return b"".join(
            (
                bytes((header[0] ^ (mask[0] & 0x1F),)),
                header[1:-2],
                bytes((header[-2] ^ mask[1], header[-1] ^ mask[2])),
                protected,
            )
        )

    def send(
        self,
        queue: collections.deque[bytes],
        limit: int,
        now: float,
        sendto: Callable[[bytes, Any], None],
    ) -> int:
        """Send the datagrams of ``queue`` (popping them), several per packet when they fit.

        ``limit`` is the largest datagram the peer accepts; larger ones are dropped and
        counted in :attr:`dropped`. Returns a :class:`SendResult` value.
        """
        quic = self.quic
        if not quic.fast_clean or quic._datagrams_pending:
            return SendResult.FALLBACK
        space = self._space
        ack_at = space.ack_at
        if ack_at is not None and ack_at <= now:
            return SendResult.FALLBACK
        cc = self._cc
        pacer = self._pacer
        sealer = self._sealer
        inline = self._inline_recovery
        self.armed_pto = space.ack_eliciting_in_flight == 0
        while queue:
            packet_time = pacer.packet_time
            if packet_time is not None and not inline:
                if pacer.next_send_time(now) is not None:
                    return SendResult.FALLBACK
            elif packet_time is not None:
                # QuicPacketPacer.next_send_time, inlined (one packet costs two calls there).
                bucket = pacer.bucket_time
                evaluated = pacer.evaluation_time
                if now > evaluated:
                    bucket += now - evaluated
                    bucket_max = pacer.bucket_max
                    if bucket > bucket_max:
                        bucket = bucket_max
                    pacer.bucket_time = bucket
                    pacer.evaluation_time = now
                if bucket <= 0:
                    return SendResult.FALLBACK
            first = len(queue[0])
            if first > limit or first + 3 > self._max_payload:
                # Over the peer's limit, or too large for any packet (aioquic would block
                # its queue on it forever): drop it.
                queue.popleft()
                self.dropped += 1
                continue
            packet_number = quic._packet_number
            if sealer is not None:
                # Packed (as many datagrams as fit), sealed and protected in one C call.
                packet, count = sealer.seal_datagrams(
                    self._header_start, packet_number, queue, limit, self._max_payload
                )
            else:
                packet, count = self._seal_python(queue, limit, packet_number)
            sent_bytes = len(packet)
            if cc.bytes_in_flight + sent_bytes > cc.congestion_window:
                return SendResult.BLOCKED  # the rest waits in the queue for the next ACK
            if count == 1:
                queue.popleft()
            else:
                for _ in range(count):
                    queue.popleft()
            quic._packet_number = packet_number + 1
            sent = new_object(FastSentPacket)
            sent.packet_number = packet_number
            sent.sent_time = now
            sent.sent_bytes = sent_bytes
            if inline:
                # QuicPacketRecovery.on_packet_sent and Reno's, inlined: the handshake is
                # confirmed and there is no qlog (checked by refresh).
                space.sent_packets[packet_number] = sent
                space.ack_eliciting_in_flight += 1
                self._loss._time_of_last_sent_ack_eliciting_packet = now
                cc.bytes_in_flight += sent_bytes
                if packet_time is not None:
                    # QuicPacketPacer.update_after_send (the bucket was brought to now above).
                    bucket = pacer.bucket_time
                    pacer.bucket_time = 0.0 if bucket < packet_time else bucket - packet_time
            else:
                self._loss.on_packet_sent(packet=sent, space=space)
                pacer.update_after_send(now)
            # As aioquic's _flush_builder: the first ack-eliciting packet since the last one
            # received restarts the idle timer (RFC 9000 section 10.1).
            if not quic._ack_eliciting_sent_since_receipt:
                quic._close_at = now + quic._idle_timeout()
                quic._ack_eliciting_sent_since_receipt = True
            self._path.bytes_sent += sent_bytes
            self.packets += 1
            sendto(packet, self._addr)
        return SendResult.SENT

    def _seal_python(
        self, queue: collections.deque[bytes], limit: int, packet_number: int
    ) -> tuple[bytes, int]:
        """What the C ``seal_datagrams`` does: as many datagrams from the front of ``queue``
        as fit in one packet (up to the first over ``limit``), sealed; the queue untouched."""
        frames: list[bytes] = []
        size = 0
        max_payload = self._max_payload
        for data in queue:
            length = len(data)
            frame_size = length + (3 if length >= 64 else 2)
            if length > limit or size + frame_size > max_payload:
                break
            if length >= 64:
                frames.append(DATAGRAM_FRAME + (0x4000 | length).to_bytes(2, "big") + data)
            else:
                frames.append(DATAGRAM_FRAME + bytes((length,)) + data)
            size += frame_size
        header = self._header_start + (packet_number & 0xFFFF).to_bytes(2, "big")
        return self.protect(header, b"".join(frames), packet_number), len(frames)
