"""QUIC varints: RFC 9000 vectors, bounds, truncation and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from salon.daemon.wire.errors import WireError
from salon.daemon.wire.varint import VARINT_MAX, decode_varint, encode_varint, varint_size

# RFC 9000, Appendix A.1.
RFC_VECTORS = [
    ("c2197c5eff14e88c", 151288809941952652),
    ("9d7f3e7d", 494878333),
    ("7bbd", 15293),
    ("25", 37),
]


@pytest.mark.parametrize(("encoded", "value"), RFC_VECTORS)
def test_rfc_9000_vectors_decode(encoded: str, value: int) -> None:
    data = bytes.fromhex(encoded)
    assert decode_varint(data) == (value, len(data))


@pytest.mark.parametrize(("encoded", "value"), RFC_VECTORS)
def test_rfc_9000_vectors_encode(encoded: str, value: int) -> None:
    assert encode_varint(value) == bytes.fromhex(encoded)


def test_non_minimal_encoding_is_accepted() -> None:
    # RFC 9000 A.1: 0x4025 also decodes to 37.
    assert decode_varint(bytes.fromhex("4025")) == (37, 2)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 1),
        (63, 1),
        (64, 2),
        (16383, 2),
        (16384, 4),
        (2**30 - 1, 4),
        (2**30, 8),
        (2**62 - 1, 8),
    ],
)
def test_length_boundaries(value: int, size: int) -> None:
    encoded = encode_varint(value)
    assert len(encoded) == size == varint_size(value)
    assert decode_varint(encoded) == (value, size)


@pytest.mark.parametrize("value", [-1, 2**62, 2**64])
def test_out_of_range_values_are_refused(value: int) -> None:
    with pytest.raises(WireError):
        encode_varint(value)
    with pytest.raises(WireError):
        varint_size(value)


def test_decode_at_offset() -> None:
    data = b"\xff" + bytes.fromhex("7bbd") + b"\x25"
    assert decode_varint(data, 1) == (15293, 3)
    assert decode_varint(data, 3) == (37, 4)
    assert decode_varint(memoryview(data), 1) == (15293, 3)


@pytest.mark.parametrize(("encoded", "value"), RFC_VECTORS)
def test_every_truncation_raises(encoded: str, value: int) -> None:
    data = bytes.fromhex(encoded)
    for cut in range(len(data)):
        with pytest.raises(WireError, match="varint is truncated"):
            decode_varint(data[:cut])


@pytest.mark.parametrize("offset", [-1, 2, 10])
def test_offset_outside_data_raises(offset: int) -> None:
    with pytest.raises(WireError, match="varint is truncated"):
        decode_varint(b"\x01\x02", offset)


@given(st.integers(min_value=0, max_value=VARINT_MAX), st.binary(max_size=8))
def test_round_trip(value: int, trailer: bytes) -> None:
    encoded = encode_varint(value)
    assert len(encoded) == varint_size(value)
    assert decode_varint(encoded + trailer) == (value, len(encoded))


@given(st.binary(max_size=12), st.integers(min_value=0, max_value=12))
def test_random_bytes_raise_only_wire_error(data: bytes, offset: int) -> None:
    try:
        value, end = decode_varint(data, offset)
    except WireError:
        return
    assert 0 <= value <= VARINT_MAX
    assert offset < end <= len(data)
