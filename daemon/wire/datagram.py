"""Media datagrams: ``varint(flow_id) || SRTP packet`` in one QUIC DATAGRAM frame.

The flow id names a speaker's media flow (and thereby its SRTP key) so that receivers and the
server never need to look inside the encrypted packet to route it.
"""

from __future__ import annotations

from .errors import WireError
from .varint import decode_varint, encode_varint

# Whole DATAGRAM payload, flow id included. It fits the smallest QUIC path MTU (1200 bytes) with
# room for the QUIC short header, the frame header and the AEAD tag of the QUIC packet.
MAX_DATAGRAM_SIZE = 1100


def payload_limit(max_datagram_frame_size: int) -> int:
    """The largest DATAGRAM payload a peer announcing ``max_datagram_frame_size`` accepts.

    RFC 9221 bounds the whole frame: the frame type byte, the length varint (the frames salond
    sends carry one) and the payload. 0 (DATAGRAM not enabled) and tiny values give 0.
    """
    best = 0
    for length_size in (1, 2, 4, 8):
        # The largest payload whose length fits a varint of length_size bytes, within the frame.
        payload = min(max_datagram_frame_size - 1 - length_size, (1 << (8 * length_size - 2)) - 1)
        best = max(best, payload)
    return best


def pack_datagram(flow_id: int, packet: bytes) -> bytes:
    """Prefix an SRTP ``packet`` with its flow id.

    The size is not checked against :data:`MAX_DATAGRAM_SIZE`: senders compare the result
    themselves, receivers drop what exceeds it.
    """
    if not packet:
        raise WireError("datagram packet is empty")
    return encode_varint(flow_id) + packet


def unpack_datagram(data: bytes) -> tuple[int, bytes]:
    """Split a datagram into ``(flow_id, SRTP packet)``."""
    if not data:
        raise WireError("datagram is empty")
    try:
        flow_id, offset = decode_varint(data)
    except WireError:
        raise WireError("datagram flow id is truncated") from None
    if offset == len(data):
        raise WireError("datagram has no packet after the flow id")
    return flow_id, data[offset:]
