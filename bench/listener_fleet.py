"""Cheap listeners for the load benchmarks: many QUIC connections on one socket, one loop.

A full client per listener (aioquic's receive machinery, an asyncio transport and timer per
connection) costs more CPU per copy than salond spends forwarding it, so on a small machine the
load generator, not the server, was what saturated. The fleet keeps what the server sees and
drops what it does not:

- **Set-up is the real client's.** Every connection does its handshake, ``hello`` and ``join``
  with aioquic (the bench's :class:`~bench.common.BenchProtocol`), all of one process's
  connections sharing one UDP socket (:class:`SharedEndpoint` routes by connection id).
- **Then each connection is adopted** (:meth:`FastListener.adopt`): its 1-RTT keys, packet
  numbers, received ranges and pending ACK are copied out of aioquic, which is never called
  again. :class:`Fleet` reads the socket many datagrams per wake-up, removes header protection
  and decrypts, reads the bench fields of each DATAGRAM frame (send time) and skips the audio,
  and seals its ACK packets.
- **The loop runs in salond's C extension** (``salon.quic._speedups.FleetReceiver``): epoll,
  ``recvmmsg``, routing, opening, the latency record, the bookkeeping of an audio packet that
  arrives in order, the delayed ACK's packet and a ``sendmmsg`` of what is due. A packet with
  anything else (control data, the server's ACKs or PINGs, a gap, an ACK-state check, a
  packet it cannot open) goes to :meth:`FastListener.receive`, which is the reference: both
  share the listener's attributes. Without the extension, or with ``SALON_C_EXTENSION=0``,
  the same loop runs in Python (AES-GCM through ``cryptography``, the mask in Python).
- **It acknowledges exactly as the reference client does** (aioquic with
  ``salon.quic.protocol.CLIENT_ACK_DELAY``): an ACK-only packet ``ack_delay`` after the first
  ack-eliciting packet since the last ACK, the same ACK frame (ranges, ACK delay field), the
  ranges the server has acknowledged dropped (aioquic's ACK-of-ACK), the ACK-state PING every
  :data:`ACK_STATE_CHECK` datagrams when more than :data:`ACK_STATE_LIMIT` sent packets wait,
  the ACK-of-ACK PING of aioquic's writer. ``tests/test_listener_fleet.py`` feeds the same
  packets at the same times to an aioquic client and to a fleet listener and compares what
  comes back; the bench prints ACK packets per received packet for both generators.

Anything the fleet does not read (a STREAM frame, a key update, a long header) is counted in
:attr:`FastListener.unusual` and acknowledged like any ack-eliciting packet.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import select
import socket
import struct
from collections.abc import Callable
from time import monotonic_ns as time_ns
from typing import Any

from aioquic.quic.connection import QuicConnection
from aioquic.quic.recovery import MAX_ACK_RANGES
from aioquic.tls import Epoch
from cryptography.exceptions import InvalidTag

from salon.quic import load_speedups
from salon.quic.ckeys import checked_opener, checked_sealer
from salon.quic.protocol import ACK_STATE_CHECK, ACK_STATE_LIMIT

_speedups = load_speedups()

ONE_RTT = Epoch.ONE_RTT
CID_LENGTH = 8
PN_OFFSET = 1 + CID_LENGTH
"""Connection ids aioquic gives a client (``QuicConfiguration.connection_id_length``)."""
PACKET_NUMBER_SIZE = 2
ACK_DELAY_EXPONENT = 3
"""aioquic's ``_local_ack_delay_exponent``: the ACK delay field counts units of 8 µs."""
DATAGRAM = 0x30
DATAGRAM_WITH_LENGTH = 0x31
PING_FRAME = b"\x01"
SEND_TIME = struct.Struct("!q")


def varint(value: int) -> bytes:
    """QUIC's variable-length integer (RFC 9000 16)."""
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


def read_varint(data: bytes, offset: int) -> tuple[int, int]:
    """(value, next offset) of the variable-length integer at ``offset``."""
    first = data[offset]
    size = 1 << (first >> 6)
    value = first & 0x3F
    for index in range(offset + 1, offset + size):
        value = (value << 8) | data[index]
    return value, offset + size


class FastListener:
    """One adopted connection: receives audio and acknowledges it as aioquic would.

    Sans-I/O: :meth:`receive` takes a packet and a time (monotonic ns), :meth:`ack_packet`
    returns the ACK packet due; ``send`` (given at adoption) puts packets on the wire.
    """

    __slots__ = (
        "_on_media",
        "_open",
        "_opener",
        "_recv_hp",
        "_recv_iv",
        "_seal",
        "_sealer",
        "_send",
        "_send_hp",
        "_send_iv",
        "ack_at_ns",
        "ack_delay_ns",
        "acks_sent",
        "datagrams_received",
        "host_cid",
        "key_phase",
        "largest_received",
        "largest_received_ns",
        "packet_number",
        "peer_cid",
        "pings_received",
        "pings_sent",
        "ranges",
        "sent",
        "spin_bit",
        "spin_highest",
        "stream_frames",
        "stream_received",
        "undecryptable",
        "unusual",
        "unusual_frames",
    )

    def __init__(
        self,
        *,
        host_cid: bytes,
        peer_cid: bytes,
        open_: Callable[[bytes, bytes, bytes], bytes],
        recv_iv: int,
        recv_hp: Callable[[bytes], bytes],
        seal: Callable[[bytes, bytes, bytes], bytes],
        send_iv: int,
        send_hp: Callable[[bytes], bytes],
        key_phase: int,
        packet_number: int,
        largest_received: int,
        largest_received_ns: int,
        ranges: list[list[int]],
        ack_at_ns: int | None,
        ack_delay_ns: int,
        sent: dict[int, int],
        spin_bit: bool,
        spin_highest: int,
        datagrams_received: int,
        stream_received: dict[int, int],
        send: Callable[[bytes], None],
        on_media: Callable[[bytes, int, int], None],
        opener: Any = None,
        sealer: Any = None,
    ) -> None:
        self.host_cid = host_cid
        self.peer_cid = peer_cid
        self._open = open_
        self._recv_iv = recv_iv
        self._recv_hp = recv_hp
        self._seal = seal
        self._send_iv = send_iv
        self._send_hp = send_hp
        self._opener = opener
        """The C extension's ``PacketOpener`` for the receive keys (None: the Python path)."""
        self._sealer = sealer
        """The C extension's ``PacketSealer`` for the send keys (None: the Python path)."""
        self.key_phase = key_phase
        self.packet_number = packet_number
        self.largest_received = largest_received
        self.largest_received_ns = largest_received_ns
        self.ranges = ranges
        """Packet numbers received and not yet known to be acknowledged: [start, stop) pairs,
        oldest first (aioquic's ``ack_queue``)."""
        self.ack_at_ns = ack_at_ns
        self.ack_delay_ns = ack_delay_ns
        self.sent = sent
        """Packets sent and not yet acknowledged or lost: number -> the largest packet number
        their ACK frame acknowledged (-1 without an ACK frame)."""
        self.spin_bit = spin_bit
        self.spin_highest = spin_highest
        self.datagrams_received = datagrams_received
        self._send = send
        self._on_media = on_media
        self.unusual = 0
        """Packets with something the fleet does not read (counted, acknowledged)."""
        self.unusual_frames: dict[int, int] = {}
        """Frame types the fleet stopped reading a packet at: type -> packets."""
        self.undecryptable = 0
        self.stream_frames = 0
        self.stream_received = stream_received
        """Per stream, the data received in order so far (bytes)."""
        self.acks_sent = 0
        self.pings_sent = 0
        self.pings_received = 0
        """PING frames from the server: its loss-detection probes (PTO) on a clean path."""

    # ------------------------------------------------------------------ adoption

    @classmethod
    def adopt(
        cls,
        quic: QuicConnection,
        now_ns: int,
        loop_time: float,
        send: Callable[[bytes], None],
        on_media: Callable[[bytes, int, int], None],
    ) -> FastListener:
        """Take over ``quic``'s 1-RTT state (aioquic must not be called for it afterwards).

        ``loop_time`` is aioquic's clock (the event loop's) at ``now_ns``: its times are
        carried over to the fleet's monotonic nanoseconds.
        """
        q: Any = quic
        crypto = q._cryptos[ONE_RTT]
        for context in (crypto.recv, crypto.send):
            if getattr(context.hp, "_is_chacha20", True) or context.aead is None:
                raise RuntimeError("the listener fleet handles AES header protection only")
        space = q._spaces[ONE_RTT]

        def to_ns(when: float) -> int:
            return now_ns + int((when - loop_time) * 1e9)

        ranges = [[r.start, r.stop] for r in space.ack_queue]
        sent: dict[int, int] = {}
        for number, packet in space.sent_packets.items():
            highest = -1
            for handler, args in packet.delivery_handlers:
                if getattr(handler, "__name__", "") == "_on_ack_delivery":
                    highest = args[1]
            sent[number] = highest
        return cls(
            host_cid=q.host_cid,
            peer_cid=q._peer_cid.cid,
            open_=crypto.recv.aead._aead.decrypt,
            recv_iv=crypto.recv.aead._iv,
            recv_hp=crypto.recv.hp._encryptor.update,
            seal=crypto.send.aead._aead.encrypt,
            send_iv=crypto.send.aead._iv,
            send_hp=crypto.send.hp._encryptor.update,
            key_phase=crypto.recv.key_phase,
            packet_number=q._packet_number,
            largest_received=space.largest_received_packet,
            largest_received_ns=(
                to_ns(space.largest_received_time)
                if space.largest_received_time is not None
                else now_ns
            ),
            ranges=ranges,
            ack_at_ns=None if space.ack_at is None else to_ns(space.ack_at),
            ack_delay_ns=int(q._ack_delay * 1e9),
            sent=sent,
            spin_bit=q._spin_bit,
            spin_highest=q._spin_highest_pn,
            datagrams_received=0,
            stream_received={
                stream_id: stream.receiver.starting_offset()
                for stream_id, stream in q._streams.items()
            },
            send=send,
            on_media=on_media,
            opener=checked_opener(_speedups, crypto.recv),
            sealer=checked_sealer(_speedups, crypto.send),
        )

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes, now: int) -> bool:
        """Take one short-header packet; True if an ACK became due later (see ack_at_ns)."""
        opener = self._opener
        # None from the C opener (too short, another key phase, not authentic): the Python
        # path says which, and counts it.
        opened = (
            None
            if opener is None
            else opener.open(data, PN_OFFSET, self.largest_received + 1, self.key_phase)
        )
        if opened is None:
            opened = self._open_in_python(data)
            if opened is None:
                return False
        first, payload, number = opened
        # The frames: DATAGRAM (the audio), ACK (of our ACKs and PINGs), PADDING, PING.
        eliciting = False
        immediate = False
        position = 0
        end = len(payload)
        media = 0
        try:
            while position < end:
                kind = payload[position]
                if kind == DATAGRAM_WITH_LENGTH:
                    byte = payload[position + 1]
                    if byte >> 6 == 1:  # a 2-byte length, as audio frames have
                        length = ((byte & 0x3F) << 8) | payload[position + 2]
                        start = position + 3
                    else:
                        length, start = read_varint(payload, position + 1)
                    position = start + length
                    self._on_media(payload, start, now)
                    media += 1
                    eliciting = True
                elif kind == 0:
                    rest = payload[position:]
                    position += len(rest) - len(rest.lstrip(b"\x00"))
                elif kind == DATAGRAM:
                    self._on_media(payload, position + 1, now)
                    media += 1
                    eliciting = True
                    position = end
                elif kind == 1:
                    eliciting = True
                    position += 1
                    self.pings_received += 1
                elif kind in (2, 3):
                    position = self._read_ack(payload, position + 1, kind == 3)
                elif 0x08 <= kind <= 0x0F:
                    # Control messages (room events): skipped, acknowledged at once as the
                    # reference client does (ClientProtocol.datagram_received).
                    stream, position = read_varint(payload, position + 1)
                    offset = 0
                    if kind & 0x04:
                        offset, position = read_varint(payload, position)
                    if kind & 0x02:
                        length, position = read_varint(payload, position)
                    else:
                        length = end - position
                    position += length
                    self.stream_frames += 1
                    eliciting = True
                    # Only data not received before makes aioquic report it (a retransmission
                    # does not): then the reference client acknowledges at once.
                    received = self.stream_received.get(stream, 0)
                    if offset <= received < offset + length:
                        self.stream_received[stream] = offset + length
                        immediate = True
                else:
                    self.unusual += 1
                    self.unusual_frames[kind] = self.unusual_frames.get(kind, 0) + 1
                    eliciting = True
                    break
        except IndexError:
            self.unusual += 1
            eliciting = True

        # The received packet's bookkeeping, as aioquic's receive_datagram.
        if number > self.spin_highest:
            self.spin_bit = not (first & 0x20)
            self.spin_highest = number
        if number > self.largest_received:
            self.largest_received = number
            self.largest_received_ns = now
        ranges = self.ranges
        if ranges and number == ranges[-1][1]:
            ranges[-1][1] = number + 1  # the next packet in order: the usual case
        else:
            self._add_received(number)
        armed = False
        if eliciting and self.ack_at_ns is None:
            self.ack_at_ns = now + self.ack_delay_ns
            armed = True
        if immediate:
            self.ack_at_ns = now
            self._transmit(now, ping=False)
            armed = False
        # The ACK-state PING of salon.quic.protocol's count_datagram_received.
        if media:
            before = self.datagrams_received
            self.datagrams_received = before + media
            checks = (before + media) // ACK_STATE_CHECK - before // ACK_STATE_CHECK
            for _ in range(checks):
                if len(self.sent) > ACK_STATE_LIMIT:
                    self._transmit(now, ping=True)
        return armed

    def _open_in_python(self, data: bytes) -> tuple[int, bytes, int] | None:
        """Header protection (RFC 9001 5.4, the 16-byte sample after a 4-byte packet number)
        and AES-GCM, as the C opener does: (first byte, payload, packet number), or None
        (counted as unusual or undecryptable)."""
        pn_offset = PN_OFFSET
        if len(data) < pn_offset + 20 or data[0] & 0x80:
            self.unusual += 1
            return None
        mask = self._recv_hp(data[pn_offset + 4 : pn_offset + 20])
        first = data[0] ^ (mask[0] & 0x1F)
        pn_length = (first & 3) + 1
        payload_offset = pn_offset + pn_length
        if pn_length == 2:  # what salond (aioquic) sends
            high = data[pn_offset] ^ mask[1]
            low = data[pn_offset + 1] ^ mask[2]
            truncated = (high << 8) | low
            header = bytes((first,)) + data[1:pn_offset] + bytes((high, low))
        else:
            truncated = int.from_bytes(data[pn_offset:payload_offset], "big") ^ int.from_bytes(
                mask[1 : 1 + pn_length], "big"
            )
            header = bytes((first,)) + data[1:pn_offset] + truncated.to_bytes(pn_length, "big")
        # The full packet number nearest the expected one (RFC 9000 A.3).
        expected = self.largest_received + 1
        window = 1 << (pn_length * 8)
        number = (expected & ~(window - 1)) | truncated
        if number <= expected - window // 2 and number < (1 << 62) - window:
            number += window
        elif number > expected + window // 2 and number >= window:
            number -= window
        if (first >> 2) & 1 != self.key_phase:
            self.unusual += 1  # a key update: not something salond starts
            return None
        try:
            payload = self._open(
                (self._recv_iv ^ number).to_bytes(12, "big"), data[payload_offset:], header
            )
        except InvalidTag:
            self.undecryptable += 1
            return None
        return first, payload, number

    def _add_received(self, number: int) -> None:
        ranges = self.ranges
        if ranges and number == ranges[-1][1]:
            ranges[-1][1] += 1
            return
        # Out of order or after a gap: insert and merge (aioquic's RangeSet.add).
        for index, (start, stop) in enumerate(ranges):
            if start <= number < stop:
                return
            if number == stop:
                ranges[index][1] += 1
                if index + 1 < len(ranges) and ranges[index + 1][0] == number + 1:
                    ranges[index][1] = ranges.pop(index + 1)[1]
                return
            if number + 1 == start:
                ranges[index][0] = number
                return
            if number < start:
                ranges.insert(index, [number, number + 1])
                break
        else:
            ranges.append([number, number + 1])
        if len(ranges) > MAX_ACK_RANGES:
            ranges.pop(0)

    def _read_ack(self, payload: bytes, position: int, ecn: bool) -> int:
        """Read the server's ACK frame; forget the packets it covers (acknowledged or lost),
        and, for an acknowledged ACK frame of ours, the ranges it carried (ACK-of-ACK)."""
        largest, position = read_varint(payload, position)
        _, position = read_varint(payload, position)  # ACK delay
        count, position = read_varint(payload, position)
        first, position = read_varint(payload, position)
        acked = [(largest - first, largest + 1)]
        low = largest - first
        for _ in range(count):
            gap, position = read_varint(payload, position)
            length, position = read_varint(payload, position)
            high = low - gap - 2
            low = high - length
            acked.append((low, high + 1))
        if ecn:
            for _ in range(3):
                _, position = read_varint(payload, position)
        sent = self.sent
        done = []
        for number, highest in sent.items():  # in the order sent: ascending
            if number > largest:
                break
            done.append(number)
            if highest >= 0 and any(lo <= number < hi for lo, hi in acked):
                self._forget_received(highest)
        for number in done:
            del sent[number]
        return position

    def _forget_received(self, highest: int) -> None:
        ranges = self.ranges
        while ranges and ranges[0][1] <= highest + 1:
            ranges.pop(0)
        if ranges and ranges[0][0] <= highest:
            ranges[0][0] = highest + 1

    # ------------------------------------------------------------------ sending

    def ack_packet_due(self, now: int) -> None:
        """Send the ACK due at ``ack_at_ns`` (the caller checked it is due)."""
        self._transmit(now, ping=False)

    def _transmit(self, now: int, ping: bool) -> None:
        frames = []
        number = self.packet_number
        highest = -1
        if self.ack_at_ns is not None and self.ack_at_ns <= now:
            self.ack_at_ns = None
            if self.ranges:
                frames.append(self._ack_frame(now))
                highest = self.largest_received
                self.acks_sent += 1
                # aioquic's ACK-of-ACK trigger: with several ranges, a PING every 8th packet.
                if len(self.ranges) > 1 and number % 8 == 0:
                    ping = True
        if ping:
            frames.append(PING_FRAME)
            self.pings_sent += 1
        if not frames:
            return
        payload = b"".join(frames)
        if len(payload) < 2:
            payload += b"\x00"  # room for the header protection sample (as aioquic pads)
        self.sent[number] = highest
        self.packet_number = number + 1
        first = 0x40 | (self.spin_bit << 5) | (self.key_phase << 2) | (PACKET_NUMBER_SIZE - 1)
        header = bytes((first,)) + self.peer_cid + (number & 0xFFFF).to_bytes(2, "big")
        if self._sealer is not None:
            self._send(self._sealer.protect(header, payload, number))
            return
        protected = self._seal((self._send_iv ^ number).to_bytes(12, "big"), payload, header)
        mask = self._send_hp(protected[2:18])
        self._send(
            b"".join(
                (
                    bytes((header[0] ^ (mask[0] & 0x1F),)),
                    self.peer_cid,
                    bytes((header[-2] ^ mask[1], header[-1] ^ mask[2])),
                    protected,
                )
            )
        )

    def _ack_frame(self, now: int) -> bytes:
        """aioquic's ACK frame (push_ack_frame): newest range first, delay in 8 µs units."""
        ranges = self.ranges
        delay = ((now - self.largest_received_ns) // 1000) >> ACK_DELAY_EXPONENT
        start, stop = ranges[-1]
        parts = [b"\x02", varint(stop - 1), varint(max(0, delay)), varint(len(ranges) - 1)]
        parts.append(varint(stop - 1 - start))
        for older_start, older_stop in reversed(ranges[:-1]):
            parts.append(varint(start - older_stop - 1))
            parts.append(varint(older_stop - 1 - older_start))
            start = older_start
        return b"".join(parts)


# ---------------------------------------------------------------------------------- set-up


class SharedEndpoint(asyncio.DatagramProtocol):
    """One UDP socket for many client connections, routed by the connection id they own.

    The server addresses each packet to a connection id the client issued (aioquic gives a
    client ids of :data:`CID_LENGTH` bytes); a long header carries its length.
    """

    def __init__(self) -> None:
        self.routes: dict[bytes, Any] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.unrouted = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 1 + CID_LENGTH:
            self.unrouted += 1
            return
        cid = data[6 : 6 + data[5]] if data[0] & 128 else data[1 : 1 + CID_LENGTH]
        protocol = self.routes.get(cid)
        if protocol is None:
            self.unrouted += 1
            return
        protocol.datagram_received(data, addr)
        self.learn(protocol)

    def learn(self, protocol: Any) -> None:
        """Route every connection id ``protocol``'s connection issued to it."""
        for issued in protocol._quic._host_cids:
            self.routes.setdefault(issued.cid, protocol)

    def error_received(self, exc: Exception) -> None:
        pass


# ---------------------------------------------------------------------------------- the fleet


class Fleet:
    """Every adopted listener of one process, served from one socket by one blocking loop.

    Per wake-up it reads every datagram waiting (non-blocking ``recv`` until the socket is
    empty), then sends the ACKs that fell due (with the C extension, :attr:`receiver` runs
    the loop). Records, per listener, the copies whose send
    time lies in the window, their latency and the worst latency per 500 ms of send time,
    and counts the UDP packets in and out while the window is open.
    """

    def __init__(self, sock: socket.socket, server: Any, send_time_offset: int) -> None:
        """``server``: the address ACKs go to; ``send_time_offset``: where a DATAGRAM frame's
        data carries its send time (``bench.common.SEND_TIME_OFFSET``)."""
        self.sock = sock
        self.server = server
        self.send_time_offset = send_time_offset
        self.routes: dict[bytes, FastListener] = {}
        self.listeners: list[FastListener] = []
        self.due: collections.deque[tuple[int, FastListener]] = collections.deque()
        self.window = (0, 0)
        self.received: list[int] = []
        self.latencies: Any = None
        self.worst: dict[int, int] = {}
        self._packets_in = 0
        self._packets_out = 0
        self._unrouted = 0
        self.wakeups = 0
        self.outbox: list[bytes] = []
        """Packets for the server not sent yet (:meth:`flush`)."""
        receiver_type = getattr(_speedups, "FleetReceiver", None)
        self.receiver: Any = (
            None
            if receiver_type is None
            else receiver_type(
                FastListener, send_time_offset, ACK_STATE_CHECK, self.received, self.worst
            )
        )
        """The C extension's loop step (``FleetReceiver``): it reads the socket, and takes
        the usual packet (audio, in order) itself, the others to :meth:`FastListener.receive`
        (None: every packet goes there)."""

    @property
    def packets_in(self) -> int:
        """Datagrams read at a time within the window."""
        return self._packets_in + (0 if self.receiver is None else self.receiver.packets_in)

    @property
    def packets_out(self) -> int:
        """Packets sent at a time within the window."""
        return self._packets_out + (0 if self.receiver is None else self.receiver.packets_out)

    @property
    def unrouted(self) -> int:
        """Datagrams for no connection id of the fleet's."""
        return self._unrouted + (0 if self.receiver is None else self.receiver.unrouted)

    def send(self, packet: bytes) -> None:
        """Queue a packet for the server (:meth:`flush` sends the queue, in order)."""
        if self.window[0] <= time_ns() < self.window[1]:
            self._packets_out += 1
        self.outbox.append(packet)

    def flush(self) -> None:
        """Send the queued packets: one ``sendmmsg`` with the C extension."""
        outbox = self.outbox
        if not outbox:
            return
        sendmmsg = getattr(_speedups, "sendmmsg", None)
        if sendmmsg is None:
            for packet in outbox:
                self.sock.sendto(packet, self.server)
            outbox.clear()
            return
        while outbox:
            sent, error = sendmmsg(
                self.sock.fileno(), self.sock.family, outbox, [self.server] * len(outbox)
            )
            if error or not sent:
                raise OSError(error, os.strerror(error))
            del outbox[:sent]

    def adopt(
        self, quic: QuicConnection, loop_time: float, now_ns: int | None = None
    ) -> FastListener:
        """Take over ``quic`` (see :meth:`FastListener.adopt`; ``now_ns``: the monotonic
        time at ``loop_time``, by default now)."""
        index = len(self.listeners)
        self.received.append(0)
        listener = FastListener.adopt(
            quic,
            time_ns() if now_ns is None else now_ns,
            loop_time,
            self.send,
            self._recorder(index),
        )
        self.listeners.append(listener)
        for issued in quic._host_cids:
            self.routes[issued.cid] = listener
            if self.receiver is not None:
                self.receiver.add(issued.cid, listener, index)
        if listener.ack_at_ns is not None:
            self.due.append((listener.ack_at_ns, listener))
            self.due = collections.deque(sorted(self.due, key=lambda item: item[0]))
        return listener

    def _recorder(self, index: int) -> Callable[[bytes, int, int], None]:
        received = self.received
        worst = self.worst
        offset = self.send_time_offset

        def record(payload: bytes, start: int, now: int) -> None:
            sent = SEND_TIME.unpack_from(payload, start + offset)[0]
            low, high = self.window
            if low <= sent < high:
                latency = (now - sent) // 1000
                self.latencies.append(latency)
                received[index] += 1
                bucket = (sent - low) // 500_000_000
                if latency > worst.get(bucket, 0):
                    worst[bucket] = latency

        return record

    def start(self, window: tuple[int, int]) -> None:
        """Record copies sent within ``window`` (monotonic ns) from now on."""
        self.window = window
        if self.receiver is not None:
            self.receiver.start(*window, self.latencies)

    def acknowledge(self, now: int) -> None:
        """Queue the ACK packets due at ``now`` (:meth:`FastListener.ack_packet_due`)."""
        due = self.due
        if not due or due[0][0] > now:
            return
        if self.receiver is not None:
            self.receiver.acknowledge_due(due, now, self.outbox)
            return
        while due and due[0][0] <= now:
            listener = due.popleft()[1]
            at = listener.ack_at_ns
            if at is not None and at <= now:
                listener.ack_packet_due(now)

    def deliver(self, data: bytes, now: int) -> None:
        """One datagram read from the socket at ``now``: the loop's step for each."""
        if self.receiver is not None:
            due = self.receiver.receive(data, now)
            if due is not None:
                self.due.append(due)
            return
        low, high = self.window
        if low <= now < high:
            self._packets_in += 1
        target = self.routes.get(data[1 : 1 + CID_LENGTH])
        if target is None:
            self._unrouted += 1
            return
        if target.receive(data, now):
            self.due.append((target.ack_at_ns, target))  # type: ignore[arg-type]

    def run(self, window: tuple[int, int], end: int) -> None:
        """Serve until ``end`` (monotonic ns), recording copies sent within ``window``."""
        self.start(window)
        sock = self.sock
        sock.setblocking(False)
        fileno = sock.fileno()
        poller = select.epoll()
        poller.register(fileno, select.EPOLLIN)
        recv = sock.recv
        deliver = self.deliver
        receiver = self.receiver
        # The loop makes no reference cycles: without the collector, the objects of aioquic's
        # set-up (hundreds of connections) are not scanned again and again while it runs.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            if receiver is not None:
                self.wakeups += receiver.run(
                    fileno, self.due, end, self.outbox, self.server, sock.family
                )
                return
            while True:
                now = time_ns()
                self.acknowledge(now)
                # With the ACKs that receiving made due at once (control data).
                self.flush()
                if now >= end:
                    return
                due = self.due
                wake = min(due[0][0], end) if due else end
                poller.poll(max(0, wake - now) / 1e9)
                self.wakeups += 1
                while True:
                    try:
                        data = recv(2048)
                    except BlockingIOError:
                        break
                    deliver(data, time_ns())
        finally:
            gc.enable()
            poller.close()

    def counts(self) -> dict[str, int]:
        """What the fleet did not read, and what it sent, over all its listeners."""
        receiver = self.receiver
        frames: dict[str, int] = {}
        for listener in self.listeners:
            for kind, count in listener.unusual_frames.items():
                frames[f"frame 0x{kind:02x}"] = frames.get(f"frame 0x{kind:02x}", 0) + count
        return {
            **frames,
            "unusual": sum(listener.unusual for listener in self.listeners),
            "undecryptable": sum(listener.undecryptable for listener in self.listeners),
            "acks_sent": sum(listener.acks_sent for listener in self.listeners),
            "stream_frames": sum(listener.stream_frames for listener in self.listeners),
            "pings_sent": sum(listener.pings_sent for listener in self.listeners),
            "server_pings": sum(listener.pings_received for listener in self.listeners),
            "unrouted": self.unrouted,
            "wakeups": self.wakeups,
            "read_in_c": 0 if receiver is None else receiver.in_c,
            "acks_built_in_c": 0 if receiver is None else receiver.acks_in_c,
        }


# ---------------------------------------------------------------------------------- wake-ups


def wakeup_cost(seconds: float = 2.0) -> list[str]:
    """CPU per wake-up of a process that only waits on ``epoll`` (timeouts of 20, 5, 1 ms):
    what each of the fleet's wake-ups costs before it reads anything."""
    import time

    lines = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        poller = select.epoll()
        poller.register(sock.fileno(), select.EPOLLIN)
        for interval in (0.020, 0.005, 0.001):
            rounds = int(seconds / interval)
            started = time.process_time()
            for _ in range(rounds):
                poller.poll(interval)
            cost = (time.process_time() - started) / rounds * 1e6
            lines.append(f"epoll timeout {interval * 1000:.0f} ms: {cost:.1f} µs CPU per wake-up")
        poller.close()
    return lines


if __name__ == "__main__":
    print("\n".join(wakeup_cost()))
