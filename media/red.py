"""RFC 2198 redundant audio (RED) payloads carrying earlier Opus frames next to the current one.

A RED payload is a list of block headers then the blocks, oldest first, the primary (current)
frame last. A redundant block's header is 4 bytes: ``F=1 | block PT (7 bits)``, a 14-bit
timestamp offset (how far before the packet's RTP timestamp the block's frame starts) and a
10-bit block length; the primary's header is one byte ``F=0 | block PT``.

Salon's profile (PROTOCOL.md, "Redundant audio"): RTP payload type :data:`RED_PAYLOAD_TYPE`,
every block is Opus (payload type 111), and a sender puts in only frames it sent in the packets
right before this one with no gap, so the block at offset ``k * 960`` is the packet with sequence
number ``seq - k``. The whole RED payload is inside SRTP like any payload; the RTP header (and
its audio level extension) is unchanged, so the forwarder reads and forwards it as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from salon.daemon.wire.rtp import FRAME_SAMPLES, OPUS_PAYLOAD_TYPE

RED_PAYLOAD_TYPE = 63
"""RTP payload type of a RED packet (dynamic; fixed by the protocol, not negotiated)."""
MAX_REDUNDANCY = 2
"""Most earlier frames a RED packet carries in this protocol."""
_MAX_OFFSET = (1 << 14) - 1
_MAX_BLOCK = (1 << 10) - 1


class RedError(ValueError):
    """A RED payload is malformed."""


@dataclass(frozen=True)
class RedundantBlock:
    """An earlier frame: ``offset`` samples before the packet's timestamp."""

    offset: int
    payload: bytes

    @property
    def distance(self) -> int:
        """How many packets before the one carrying it (offset in 20 ms frames)."""
        return self.offset // FRAME_SAMPLES


def pack_red(primary: bytes, redundant: list[RedundantBlock]) -> bytes:
    """A RED payload: ``redundant`` (oldest first) then ``primary``, all Opus."""
    headers = bytearray()
    blocks = bytearray()
    for block in redundant:
        if not 0 < block.offset <= _MAX_OFFSET or len(block.payload) > _MAX_BLOCK:
            raise RedError(f"redundant block out of range: offset {block.offset}")
        word = (block.offset << 10) | len(block.payload)
        headers.append(0x80 | OPUS_PAYLOAD_TYPE)
        headers += word.to_bytes(3, "big")
        blocks += block.payload
    headers.append(OPUS_PAYLOAD_TYPE)
    return bytes(headers + blocks + primary)


def unpack_red(payload: bytes) -> tuple[bytes, list[RedundantBlock]]:
    """The primary Opus frame and the redundant blocks (oldest first) of a RED payload.

    Raises :class:`RedError` for anything but this profile: more than
    :data:`MAX_REDUNDANCY` blocks, a block that is not Opus, lengths past the payload, an
    offset that is not a positive whole number of frames, or an empty primary.
    """
    position = 0
    headers: list[tuple[int, int]] = []
    size = len(payload)
    while True:
        if position >= size:
            raise RedError("RED payload ends inside its headers")
        first = payload[position]
        if first & 0x7F != OPUS_PAYLOAD_TYPE:
            raise RedError(f"RED block of payload type {first & 0x7F}, expected Opus")
        if not first & 0x80:
            position += 1
            break
        if len(headers) == MAX_REDUNDANCY:
            raise RedError("too many redundant blocks")
        if position + 4 > size:
            raise RedError("RED payload ends inside a block header")
        word = int.from_bytes(payload[position + 1 : position + 4], "big")
        offset, length = word >> 10, word & _MAX_BLOCK
        if offset == 0 or offset % FRAME_SAMPLES:
            raise RedError(f"redundant block offset {offset} is not a whole number of frames")
        headers.append((offset, length))
        position += 4
    blocks = []
    for offset, length in headers:
        if position + length > size:
            raise RedError("redundant block runs past the payload")
        if length:
            blocks.append(RedundantBlock(offset, payload[position : position + length]))
        position += length
    primary = payload[position:]
    if not primary:
        raise RedError("empty primary block")
    return primary, blocks


def primary_opus(payload_type: int, payload: bytes) -> bytes:
    """The current Opus frame of an RTP payload of type 111 (itself) or 63 (its primary block).

    Raises :class:`RedError` for another payload type, a malformed RED payload or an empty one;
    for server features that decode audio (recording, loudness) and need no redundancy.
    """
    if payload_type == RED_PAYLOAD_TYPE:
        return unpack_red(payload)[0]
    if payload_type != OPUS_PAYLOAD_TYPE or not payload:
        raise RedError(f"payload type {payload_type} is neither Opus nor RED")
    return payload
