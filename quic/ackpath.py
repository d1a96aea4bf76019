"""The ACK fast path: a listener's ACK-only packet applied without aioquic's receive machinery.

A listener sends the server little but acknowledgements of the audio it receives. aioquic's
``receive_datagram`` handles such a packet with its general machinery (header parsing into
objects, a receive context, the frame dispatch table, path and migration checks); this module
recognises a short-header packet on an established connection, removes its protection with the
connection's own 1-RTT keys, and when the payload holds nothing but ACK (and PADDING) frames it
applies them exactly as aioquic does: the same calls into aioquic's loss recovery
(``on_ack_received``, so the same acknowledged packets, loss detection and RTT estimate), and
the same bookkeeping of the received packet (expected and largest packet number, ACK queue,
spin bit, idle timer). ``tests/test_ackpath.py`` replays the same traffic into two connections,
one through each path, and compares their state after every packet.

Anything else falls back to ``receive_datagram`` (:meth:`AckFastPath.receive` returns False
before changing any state): long headers, another connection id or address, a key phase
change, reserved bits set, any other frame, a malformed frame, a qlog being written, a
duplicate handled by aioquic. With ``accept_datagrams`` (the benchmarks' listeners, which
only receive audio and acknowledge it) packets of DATAGRAM frames (with length) are taken
too. Decrypting is free of side effects, so the fallback decrypts
again from the same bytes.
"""

from __future__ import annotations

from typing import Any

from aioquic.buffer import Buffer, BufferReadError
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from aioquic.quic.crypto import CryptoError
from aioquic.quic.events import DatagramFrameReceived
from aioquic.quic.packet import PACKET_FIXED_BIT, PACKET_SPIN_BIT, QuicFrameType, pull_ack_frame
from aioquic.quic.recovery import MAX_ACK_RANGES
from aioquic.tls import Epoch

from salon.quic import load_speedups
from salon.quic.ckeys import checked_opener

_speedups = load_speedups()

ONE_RTT = Epoch.ONE_RTT
ZERO_RTT = Epoch.ZERO_RTT
CONNECTED = QuicConnectionState.CONNECTED
ACK = QuicFrameType.ACK
ACK_ECN = QuicFrameType.ACK_ECN
DATAGRAM_WITH_LENGTH = QuicFrameType.DATAGRAM_WITH_LENGTH
PADDING = QuicFrameType.PADDING
SHORT_HEADER_MASK = 0x80 | PACKET_FIXED_BIT
RESERVED_BITS = 0x18
C_OPEN = _speedups is not None
"""Remove header protection and decrypt AES packets in one call into the C extension
``salon.quic._speedups`` (when it was built; False: aioquic's ``decrypt_packet``; the tests
compare both)."""


class AckFastPath:
    """Applies one connection's ACK-only packets (see the module docstring)."""

    __slots__ = ("_opener", "_opener_key", "accept_datagrams", "applied", "fallbacks", "quic")

    def __init__(self, quic: QuicConnection, accept_datagrams: bool = False) -> None:
        self.quic = quic
        self.accept_datagrams = accept_datagrams
        """Also take packets with DATAGRAM frames (a listener receiving audio): each becomes
        a ``DatagramFrameReceived`` event and the packet is acknowledged after aioquic's ACK
        delay, as ``receive_datagram`` does."""
        self.applied = 0
        """Packets applied by the fast path."""
        self.fallbacks = 0
        """Packets handed to aioquic's ``receive_datagram``."""
        self._opener: Any = None
        self._opener_key: Any = None

    def receive(self, data: bytes, addr: Any, now: float) -> bool:
        """Apply ``data`` if it is an ACK-only 1-RTT packet; False (nothing changed) if not."""
        if self._receive(data, addr, now):
            self.applied += 1
            return True
        self.fallbacks += 1
        return False

    def _c_opener(self, recv: Any) -> Any:
        """A C ``PacketOpener`` for ``recv``'s keys (kept while aioquic keeps its AEAD
        object), or None (another suite, or refused by the check: :mod:`salon.quic.ckeys`)."""
        self._opener_key = recv.aead
        self._opener = checked_opener(_speedups, recv)
        return self._opener

    def _receive(self, data: bytes, addr: Any, now: float) -> bool:
        quic: Any = self.quic
        if (
            not data
            or data[0] & SHORT_HEADER_MASK != PACKET_FIXED_BIT
            or quic._state is not CONNECTED
            or quic._quic_logger is not None
            or not quic._handshake_confirmed
            or quic._close_pending
            or quic._close_at is None
            or quic._peer_cid.sequence_number is None
        ):
            return False
        paths = quic._network_paths
        if len(paths) != 1:
            return False
        path = paths[0]
        if path.addr != addr or not path.is_validated:
            return False
        host_cid = quic.host_cid
        cid_end = 1 + len(host_cid)
        if data[1:cid_end] != host_cid or len(data) < cid_end + 20:
            return False
        cryptos = quic._cryptos
        if cryptos[ZERO_RTT].recv.is_valid():
            return False
        recv = cryptos[ONE_RTT].recv
        if not recv.is_valid():
            return False
        space = quic._spaces[ONE_RTT]
        if space.discarded:
            return False
        if not C_OPEN:
            opener = None
        elif recv.aead is self._opener_key:
            opener = self._opener
        else:
            opener = self._c_opener(recv)
        if opener is not None:
            # None: not authentic or another key phase, which aioquic's path handles.
            opened = opener.open(data, cid_end, space.expected_packet_number, recv.key_phase)
            if opened is None:
                return False
            first_byte, payload, packet_number = opened
        else:
            try:
                plain_header, payload, packet_number, key_changed = recv.decrypt_packet(
                    data, cid_end, space.expected_packet_number
                )
            except CryptoError:
                return False  # aioquic drops it (and logs why)
            if key_changed:
                return False
            first_byte = plain_header[0]
        if first_byte & RESERVED_BITS or packet_number in space.received_packets:
            return False

        # Parse every frame before applying any: a packet that is not all ACKs and PADDING
        # goes to aioquic untouched.
        acks = []
        datagrams: list[bytes] = []
        buf = Buffer(data=payload)
        try:
            while not buf.eof():
                frame_type = buf.pull_uint_var()
                if frame_type in (ACK, ACK_ECN):
                    ranges, delay = pull_ack_frame(buf)
                    if frame_type == ACK_ECN:
                        buf.pull_uint_var()
                        buf.pull_uint_var()
                        buf.pull_uint_var()
                    acks.append((ranges, delay))
                elif frame_type == DATAGRAM_WITH_LENGTH and self.accept_datagrams:
                    start = buf.tell()
                    data_frame = buf.pull_bytes(buf.pull_uint_var())
                    limit = quic._configuration.max_datagram_frame_size
                    if limit is None or buf.tell() - start >= limit:
                        return False  # aioquic closes the connection
                    datagrams.append(data_frame)
                elif frame_type == PADDING:
                    position = buf.tell()
                    for byte in buf.data_slice(position, buf.capacity):
                        if byte:
                            break
                        position += 1
                    buf.seek(position)
                else:
                    return False
        except (BufferReadError, ValueError):
            return False
        if not acks and not datagrams:
            return False

        # What receive_datagram does for this packet, in its order.
        if packet_number > space.expected_packet_number:
            space.expected_packet_number = packet_number + 1
        if packet_number > quic._spin_highest_pn:
            spin = bool(first_byte & PACKET_SPIN_BIT)
            if quic._is_client:
                spin = not spin
            if spin != quic._spin_bit:
                quic._spin_bit = spin
            quic._spin_highest_pn = packet_number
        loss = quic._loss
        exponent = quic._remote_ack_delay_exponent
        for ranges, delay in acks:
            if not loss.peer_completed_address_validation:
                loss.peer_completed_address_validation = True
            loss.on_ack_received(
                ack_rangeset=ranges,
                ack_delay=(delay << exponent) / 1000000,
                now=now,
                space=space,
            )
        if datagrams:
            quic._events.extend(DatagramFrameReceived(data=data) for data in datagrams)
        quic._close_at = now + quic._idle_timeout()
        quic._ack_eliciting_sent_since_receipt = False
        if packet_number > space.largest_received_packet:
            space.largest_received_packet = packet_number
            space.largest_received_time = now
        space.ack_queue.add(packet_number)
        space.received_packets.add(packet_number)
        if len(space.ack_queue) > MAX_ACK_RANGES:
            space.ack_queue.shift()
        if datagrams and space.ack_at is None:
            space.ack_at = now + quic._ack_delay
        return True
