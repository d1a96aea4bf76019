"""Control stream framing: golden bytes, reassembly across any split, size limit."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from salon.daemon.wire.errors import WireError
from salon.daemon.wire.framing import MessageReader, frame_message
from salon.daemon.wire.messages import MAX_MESSAGE_SIZE
from salon.daemon.wire.varint import encode_varint


def test_limit_is_the_message_limit() -> None:
    assert MAX_MESSAGE_SIZE == 65536


@pytest.mark.parametrize(
    ("payload", "prefix"),
    [
        (b"", "00"),
        (b'{"type":"ping","id":1}', "16"),
        (bytes(63), "3f"),
        (bytes(64), "4040"),
        (bytes(16383), "7fff"),
        (bytes(16384), "80004000"),
        (bytes(65536), "80010000"),
    ],
)
def test_golden_frames(payload: bytes, prefix: str) -> None:
    framed = frame_message(payload)
    assert framed == bytes.fromhex(prefix) + payload
    reader = MessageReader()
    assert reader.feed(framed) == [payload]
    assert reader.pending == 0


def test_frame_refuses_oversize_payload() -> None:
    with pytest.raises(WireError, match="control message of 65537 bytes exceeds 65536"):
        frame_message(bytes(65537))


def test_several_messages_in_one_piece() -> None:
    reader = MessageReader()
    data = frame_message(b"one") + frame_message(b"") + frame_message(b"three") + b"\x05tw"
    assert reader.feed(data) == [b"one", b"", b"three"]
    assert reader.pending == 3
    assert reader.feed(b"o") == []
    assert reader.feed(b"!!") == [b"two!!"]
    assert reader.pending == 0


def test_byte_by_byte() -> None:
    payloads = [b"a" * 70, b"b", bytes(20000)]
    stream = b"".join(frame_message(p) for p in payloads)
    reader = MessageReader()
    received: list[bytes] = []
    for index in range(len(stream)):
        received += reader.feed(stream[index : index + 1])
    assert received == payloads


def test_empty_feed() -> None:
    reader = MessageReader()
    assert reader.feed(b"") == []
    assert reader.pending == 0


@pytest.mark.parametrize("length", [65537, 2**30, 2**62 - 1])
def test_oversize_prefix_is_refused_before_the_body(length: int) -> None:
    reader = MessageReader()
    with pytest.raises(WireError, match=f"control message of {length} bytes exceeds 65536"):
        reader.feed(encode_varint(length))


def test_oversize_prefix_split_across_feeds() -> None:
    reader = MessageReader()
    prefix = encode_varint(65537)
    assert reader.feed(frame_message(b"ok") + prefix[:2]) == [b"ok"]
    with pytest.raises(WireError, match="65537 bytes exceeds 65536"):
        reader.feed(prefix[2:])


def test_reader_stays_failed() -> None:
    reader = MessageReader()
    with pytest.raises(WireError):
        reader.feed(encode_varint(70000))
    with pytest.raises(WireError, match="70000 bytes exceeds"):
        reader.feed(frame_message(b"late"))
    assert reader.pending == 0


def test_exactly_the_limit_is_accepted() -> None:
    reader = MessageReader()
    assert reader.feed(encode_varint(MAX_MESSAGE_SIZE)) == []
    assert reader.feed(bytes(MAX_MESSAGE_SIZE - 1)) == []
    assert reader.feed(b"\x00") == [bytes(MAX_MESSAGE_SIZE)]


def test_non_minimal_length_prefix() -> None:
    assert MessageReader().feed(bytes.fromhex("4003") + b"abc") == [b"abc"]


@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_reassembly_across_arbitrary_splits(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame_message(payload) for payload in payloads)
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    reader = MessageReader()
    received: list[bytes] = []
    for start, end in itertools.pairwise(points):
        received += reader.feed(stream[start:end])
    assert received == payloads
    assert reader.pending == 0


@given(st.lists(st.binary(max_size=40), max_size=6))
def test_random_bytes_raise_only_wire_error(pieces: list[bytes]) -> None:
    reader = MessageReader()
    try:
        for piece in pieces:
            for message in reader.feed(piece):
                assert len(message) <= MAX_MESSAGE_SIZE
    except WireError:
        pass
