"""QUIC variable-length integers (RFC 9000, section 16).

The two most significant bits of the first byte give the encoded length (1, 2, 4 or 8 bytes);
the remaining bits hold the value in network byte order.
"""

from __future__ import annotations

from .errors import WireError

VARINT_MAX = 0x3FFFFFFFFFFFFFFF


def encode_varint(value: int) -> bytes:
    """Encode ``value`` (0 to 2**62 - 1) in the shortest form."""
    if value < 0:
        raise WireError(f"varint value {value} is negative")
    if value <= 0x3F:
        return bytes((value,))
    if value <= 0x3FFF:
        return (value | 0x4000).to_bytes(2, "big")
    if value <= 0x3FFFFFFF:
        return (value | 0x80000000).to_bytes(4, "big")
    if value <= VARINT_MAX:
        return (value | 0xC000000000000000).to_bytes(8, "big")
    raise WireError(f"varint value {value} exceeds 2**62 - 1")


def decode_varint(data: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """Decode the varint at ``offset``; return ``(value, offset just past it)``.

    Non-minimal encodings are accepted, as RFC 9000 requires of receivers.
    """
    if offset < 0 or offset >= len(data):
        raise WireError("varint is truncated")
    first = data[offset]
    length = 1 << (first >> 6)
    end = offset + length
    if end > len(data):
        raise WireError("varint is truncated")
    if length == 1:
        return first, end
    value = int.from_bytes(data[offset:end], "big")
    return value & ((1 << (8 * length - 2)) - 1), end


def varint_size(value: int) -> int:
    """Number of bytes :func:`encode_varint` uses for ``value``."""
    if value < 0 or value > VARINT_MAX:
        raise WireError(f"varint value {value} is out of range")
    if value <= 0x3F:
        return 1
    if value <= 0x3FFF:
        return 2
    if value <= 0x3FFFFFFF:
        return 4
    return 8
