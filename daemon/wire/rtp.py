"""RTP packets (RFC 3550) with RFC 8285 header extensions and the RFC 6464 audio level.

:class:`RtpPacket` parses and builds complete packets (the client side, before SRTP protection
and after unprotection). :func:`peek_media` is the forwarder's fast path: it reads the flow id
and the clear RTP header of a media datagram without building any packet object, which works on
SRTP packets too because SRTP leaves the header, header extensions included, unencrypted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import WireError

RTP_VERSION = 2
RTP_HEADER_LENGTH = 12
RTP_MAX_CSRC = 15

# RFC 8285: the "defined by profile" values of the two header extension forms. The two-byte
# form keeps 4 application bits in the low nibble, which this protocol neither sets nor reads.
ONE_BYTE_EXTENSION_PROFILE = 0xBEDE
TWO_BYTE_EXTENSION_PROFILE = 0x1000
TWO_BYTE_EXTENSION_PROFILE_MASK = 0xFFF0
ONE_BYTE_EXTENSION_MAX_ID = 14
ONE_BYTE_EXTENSION_MAX_LENGTH = 16
TWO_BYTE_EXTENSION_MAX_ID = 255
TWO_BYTE_EXTENSION_MAX_LENGTH = 255
# In the one-byte form, id 15 ends the extension block (RFC 8285, section 4.2).
ONE_BYTE_EXTENSION_STOP_ID = 15

OPUS_PAYLOAD_TYPE = 111
OPUS_CLOCK_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
AUDIO_LEVEL_EXTENSION_ID = 1
SILENCE_LEVEL = 127  # -127 dBov, the quietest level RFC 6464 can express

_HEADER = struct.Struct("!BBHII")
_unpack_header = _HEADER.unpack_from
_unpack_extension_header = struct.Struct("!HH").unpack_from
_unpack_uint16 = struct.Struct("!H").unpack_from
_unpack_uint32 = struct.Struct("!I").unpack_from
_unpack_uint64 = struct.Struct("!Q").unpack_from
# The header our own senders produce: no CSRC, a one-byte extension block whose first element is
# the audio level. Reading it with one call makes the forwarder's common case much cheaper.
_TYPICAL_HEADER = struct.Struct("!BBHIIHHBB")
_unpack_typical_header = _TYPICAL_HEADER.unpack_from
_TYPICAL_HEADER_LENGTH = _TYPICAL_HEADER.size


# --------------------------------------------------------------------------- sequence arithmetic


def uint16_add(a: int, b: int) -> int:
    """``a + b`` modulo 2**16 (sequence numbers)."""
    return (a + b) & 0xFFFF


def uint16_gt(a: int, b: int) -> bool:
    """Whether sequence number ``a`` comes after ``b``, allowing for wraparound."""
    half = 0x8000
    return (a < b and b - a > half) or (a > b and a - b < half)


def uint16_gte(a: int, b: int) -> bool:
    """Whether sequence number ``a`` is ``b`` or comes after it."""
    return a == b or uint16_gt(a, b)


def uint32_add(a: int, b: int) -> int:
    """``a + b`` modulo 2**32 (timestamps)."""
    return (a + b) & 0xFFFFFFFF


def uint32_gt(a: int, b: int) -> bool:
    """Whether timestamp ``a`` comes after ``b``, allowing for wraparound."""
    half = 0x80000000
    return (a < b and b - a > half) or (a > b and a - b < half)


def uint32_gte(a: int, b: int) -> bool:
    """Whether timestamp ``a`` is ``b`` or comes after it."""
    return a == b or uint32_gt(a, b)


# --------------------------------------------------------------------------- audio level


def pack_audio_level(voice: bool, level: int) -> bytes:
    """The RFC 6464 extension value: the V (voice activity) bit and the level in -dBov (0..127)."""
    if not 0 <= level <= SILENCE_LEVEL:
        raise WireError(f"audio level {level} is out of range 0..127")
    return bytes(((0x80 if voice else 0) | level,))


def unpack_audio_level(value: bytes) -> tuple[bool, int]:
    """Read an RFC 6464 extension value as ``(voice, level)``."""
    if len(value) != 1:
        raise WireError(f"audio level extension has {len(value)} bytes instead of 1")
    return bool(value[0] & 0x80), value[0] & 0x7F


# --------------------------------------------------------------------------- header extensions


@dataclass
class HeaderExtension:
    """One RFC 8285 header extension element: local ``id`` and raw ``value``."""

    id: int
    value: bytes


def _padding_length(length: int) -> int:
    return -length % 4


def pack_header_extensions(extensions: list[HeaderExtension]) -> tuple[int, bytes]:
    """Encode ``extensions`` as ``(profile, block)``, the block padded to 32-bit words.

    The one-byte form is used when every element fits it (id 1..14, 1..16 bytes), the two-byte
    form otherwise (id 1..255, 0..255 bytes). No extensions give ``(0, b"")``.
    """
    if not extensions:
        return 0, b""
    one_byte = True
    for extension in extensions:
        length = len(extension.value)
        if not 1 <= extension.id <= TWO_BYTE_EXTENSION_MAX_ID:
            raise WireError(f"RTP header extension id {extension.id} is out of range 1..255")
        if length > TWO_BYTE_EXTENSION_MAX_LENGTH:
            raise WireError(f"RTP header extension value of {length} bytes exceeds 255")
        if (
            extension.id > ONE_BYTE_EXTENSION_MAX_ID
            or length == 0
            or length > ONE_BYTE_EXTENSION_MAX_LENGTH
        ):
            one_byte = False

    block = bytearray()
    if one_byte:
        profile = ONE_BYTE_EXTENSION_PROFILE
        for extension in extensions:
            block.append((extension.id << 4) | (len(extension.value) - 1))
            block += extension.value
    else:
        profile = TWO_BYTE_EXTENSION_PROFILE
        for extension in extensions:
            block.append(extension.id)
            block.append(len(extension.value))
            block += extension.value
    block += bytes(_padding_length(len(block)))
    if len(block) // 4 > 0xFFFF:
        raise WireError(f"RTP header extensions of {len(block)} bytes do not fit the header")
    return profile, bytes(block)


def unpack_header_extensions(profile: int, block: bytes) -> list[HeaderExtension]:
    """Decode an extension ``block``; a profile other than RFC 8285's yields no extensions."""
    extensions: list[HeaderExtension] = []
    pos = 0
    end = len(block)
    if profile == ONE_BYTE_EXTENSION_PROFILE:
        while pos < end:
            byte = block[pos]
            extension_id = byte >> 4
            if extension_id == 0:
                # Padding may sit between elements as well as after the last one.
                pos += 1
                continue
            if extension_id == ONE_BYTE_EXTENSION_STOP_ID:
                break
            length = (byte & 0x0F) + 1
            pos += 1
            if pos + length > end:
                raise WireError("RTP one-byte header extension element is truncated")
            extensions.append(HeaderExtension(extension_id, block[pos : pos + length]))
            pos += length
    elif profile & TWO_BYTE_EXTENSION_PROFILE_MASK == TWO_BYTE_EXTENSION_PROFILE:
        while pos < end:
            extension_id = block[pos]
            if extension_id == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise WireError("RTP two-byte header extension element is truncated")
            length = block[pos + 1]
            pos += 2
            if pos + length > end:
                raise WireError("RTP two-byte header extension element is truncated")
            extensions.append(HeaderExtension(extension_id, block[pos : pos + length]))
            pos += length
    return extensions


# --------------------------------------------------------------------------- packets


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise WireError(f"RTP {name} {value} is out of range 0..{maximum}")


@dataclass
class RtpPacket:
    """An RTP packet; ``padding_size`` counts the padding bytes, the count byte included."""

    payload_type: int = 0
    marker: bool = False
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    csrc: list[int] = field(default_factory=list)
    extensions: list[HeaderExtension] = field(default_factory=list)
    payload: bytes = b""
    padding_size: int = 0

    @property
    def audio_level(self) -> tuple[bool, int] | None:
        """``(voice, level)`` of the audio level extension, or None without a valid one."""
        for extension in self.extensions:
            if extension.id == AUDIO_LEVEL_EXTENSION_ID:
                if len(extension.value) != 1:
                    return None
                return unpack_audio_level(extension.value)
        return None

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse a complete (unprotected) RTP packet."""
        length = len(data)
        if length < RTP_HEADER_LENGTH:
            raise WireError(f"RTP packet of {length} bytes is shorter than its 12-byte header")
        first, second, sequence_number, timestamp, ssrc = _unpack_header(data)
        version = first >> 6
        if version != RTP_VERSION:
            raise WireError(f"RTP version {version} is not supported")
        csrc_count = first & 0x0F
        pos = RTP_HEADER_LENGTH + 4 * csrc_count
        if pos > length:
            raise WireError("RTP packet has truncated CSRC")
        csrc = list(struct.unpack_from(f"!{csrc_count}I", data, RTP_HEADER_LENGTH))

        extensions: list[HeaderExtension] = []
        if first & 0x10:
            if pos + 4 > length:
                raise WireError("RTP header extension is truncated")
            profile, words = _unpack_extension_header(data, pos)
            pos += 4
            end = pos + 4 * words
            if end > length:
                raise WireError("RTP header extension is truncated")
            extensions = unpack_header_extensions(profile, data[pos:end])
            pos = end

        padding_size = 0
        if first & 0x20:
            padding_size = data[-1]
            if padding_size == 0 or padding_size > length - pos:
                raise WireError(f"RTP padding length {padding_size} is invalid")
        return cls(
            payload_type=second & 0x7F,
            marker=bool(second & 0x80),
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
            csrc=csrc,
            extensions=extensions,
            payload=data[pos : length - padding_size],
            padding_size=padding_size,
        )

    def serialize(self) -> bytes:
        """Encode the packet; raises :class:`WireError` if a field is out of range."""
        _check_range("payload type", self.payload_type, 0x7F)
        _check_range("sequence number", self.sequence_number, 0xFFFF)
        _check_range("timestamp", self.timestamp, 0xFFFFFFFF)
        _check_range("SSRC", self.ssrc, 0xFFFFFFFF)
        _check_range("padding size", self.padding_size, 0xFF)
        if len(self.csrc) > RTP_MAX_CSRC:
            raise WireError(f"RTP packet has {len(self.csrc)} CSRCs, at most 15 fit")
        for csrc in self.csrc:
            _check_range("CSRC", csrc, 0xFFFFFFFF)
        profile, block = pack_header_extensions(self.extensions)

        first = (RTP_VERSION << 6) | len(self.csrc)
        if self.padding_size:
            first |= 0x20
        if block:
            first |= 0x10
        parts = [
            _HEADER.pack(
                first,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if block:
            parts.append(struct.pack("!HH", profile, len(block) // 4))
            parts.append(block)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(bytes(self.padding_size - 1))
            parts.append(bytes((self.padding_size,)))
        return b"".join(parts)


def audio_level(packet: RtpPacket) -> tuple[bool, int] | None:
    """``(voice, level)`` carried by ``packet``, or None (see :attr:`RtpPacket.audio_level`)."""
    return packet.audio_level


# --------------------------------------------------------------------------- forwarder fast path


@dataclass(slots=True)
class MediaHeader:
    """What the forwarder needs from a media datagram; ``level`` is 0 (loud) to 127 or None."""

    flow_id: int
    ssrc: int
    sequence_number: int
    timestamp: int
    level: int | None


def peek_media(datagram: bytes) -> MediaHeader:
    """Read the flow id and clear RTP header of a media datagram (``varint || SRTP``).

    Only what is read is validated: the flow id, the fixed header, the CSRC list, the extension
    block's bounds and the extension elements, one-byte or two-byte form (RFC 8285), up to the
    audio level (id 1, in any position). The payload and padding are encrypted by SRTP and are
    not looked at. An audio level element not exactly one byte long gives ``level=None``.
    """
    length = len(datagram)
    if not length:
        raise WireError("datagram is empty")
    first = datagram[0]
    prefix = first >> 6
    if prefix == 0:
        flow_id = first
        pos = 1
    elif prefix == 1:
        if length < 2:
            raise WireError("datagram flow id is truncated")
        flow_id = _unpack_uint16(datagram)[0] & 0x3FFF
        pos = 2
    elif prefix == 2:
        if length < 4:
            raise WireError("datagram flow id is truncated")
        flow_id = _unpack_uint32(datagram)[0] & 0x3FFFFFFF
        pos = 4
    else:
        if length < 8:
            raise WireError("datagram flow id is truncated")
        flow_id = _unpack_uint64(datagram)[0] & 0x3FFFFFFFFFFFFFFF
        pos = 8

    if length - pos >= _TYPICAL_HEADER_LENGTH:
        first, _, sequence_number, timestamp, ssrc, profile, words, element, value = (
            _unpack_typical_header(datagram, pos)
        )
        # Version 2, any padding bit, extension bit, no CSRC; audio level first, 1 byte long.
        if (
            first & 0xDF == 0x90
            and profile == ONE_BYTE_EXTENSION_PROFILE
            and element == 0x10
            and words
            and pos + RTP_HEADER_LENGTH + 4 + 4 * words <= length
        ):
            return MediaHeader(flow_id, ssrc, sequence_number, timestamp, value & 0x7F)

    if length - pos < RTP_HEADER_LENGTH:
        raise WireError("RTP header is truncated")
    first, _, sequence_number, timestamp, ssrc = _unpack_header(datagram, pos)
    if first >> 6 != RTP_VERSION:
        raise WireError(f"RTP version {first >> 6} is not supported")
    pos += RTP_HEADER_LENGTH + 4 * (first & 0x0F)
    if pos > length:
        raise WireError("RTP packet has truncated CSRC")

    level = None
    if first & 0x10:
        if pos + 4 > length:
            raise WireError("RTP header extension is truncated")
        profile, words = _unpack_extension_header(datagram, pos)
        pos += 4
        end = pos + 4 * words
        if end > length:
            raise WireError("RTP header extension is truncated")
        if profile == ONE_BYTE_EXTENSION_PROFILE:
            while pos < end:
                byte = datagram[pos]
                if byte < 0x10:  # id 0: padding
                    pos += 1
                    continue
                extension_id = byte >> 4
                if extension_id == ONE_BYTE_EXTENSION_STOP_ID:
                    break
                next_pos = pos + 2 + (byte & 0x0F)
                if next_pos > end:
                    raise WireError("RTP one-byte header extension element is truncated")
                if extension_id == AUDIO_LEVEL_EXTENSION_ID:
                    if byte & 0x0F == 0:
                        level = datagram[pos + 1] & 0x7F
                    break
                pos = next_pos
        elif profile & TWO_BYTE_EXTENSION_PROFILE_MASK == TWO_BYTE_EXTENSION_PROFILE:
            # RFC 8285 section 4.3: id byte, length byte, value; a zero byte is padding.
            while pos < end:
                extension_id = datagram[pos]
                if extension_id == 0:
                    pos += 1
                    continue
                if pos + 2 > end:
                    raise WireError("RTP two-byte header extension element is truncated")
                value_length = datagram[pos + 1]
                next_pos = pos + 2 + value_length
                if next_pos > end:
                    raise WireError("RTP two-byte header extension element is truncated")
                if extension_id == AUDIO_LEVEL_EXTENSION_ID:
                    if value_length == 1:
                        level = datagram[pos + 2] & 0x7F
                    break
                pos = next_pos
    return MediaHeader(flow_id, ssrc, sequence_number, timestamp, level)
