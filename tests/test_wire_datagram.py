"""Media datagrams: flow id prefix, golden bytes, truncation and random input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from salon.daemon.wire.datagram import (
    MAX_DATAGRAM_SIZE,
    pack_datagram,
    payload_limit,
    unpack_datagram,
)
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.varint import VARINT_MAX, encode_varint

PACKET = bytes.fromhex("906f0001000003c0cafebabe") + b"srtp payload"


def test_max_datagram_size() -> None:
    assert MAX_DATAGRAM_SIZE == 1100


@pytest.mark.parametrize(
    ("flow_id", "prefix"),
    [(0, "00"), (5, "05"), (63, "3f"), (64, "4040"), (15293, "7bbd"), (494878333, "9d7f3e7d")],
)
def test_golden_bytes(flow_id: int, prefix: str) -> None:
    datagram = pack_datagram(flow_id, PACKET)
    assert datagram == bytes.fromhex(prefix) + PACKET
    assert unpack_datagram(datagram) == (flow_id, PACKET)


def test_empty_datagram() -> None:
    with pytest.raises(WireError, match="datagram is empty"):
        unpack_datagram(b"")


def test_flow_id_without_packet() -> None:
    with pytest.raises(WireError, match="no packet after the flow id"):
        unpack_datagram(b"\x05")
    with pytest.raises(WireError, match="no packet after the flow id"):
        unpack_datagram(bytes.fromhex("7bbd"))


def test_every_truncated_flow_id_raises() -> None:
    datagram = pack_datagram(151288809941952652, PACKET)
    for cut in range(8):
        with pytest.raises(WireError):
            unpack_datagram(datagram[:cut])
    for cut in range(1, 8):
        with pytest.raises(WireError, match="flow id is truncated"):
            unpack_datagram(datagram[:cut])


def test_pack_refuses_empty_packet_and_bad_flow_id() -> None:
    with pytest.raises(WireError):
        pack_datagram(1, b"")
    with pytest.raises(WireError):
        pack_datagram(-1, PACKET)
    with pytest.raises(WireError):
        pack_datagram(2**62, PACKET)


def test_pack_leaves_size_policy_to_the_caller() -> None:
    # The forwarder counts oversize datagrams as "too_large" itself, so they must parse.
    datagram = pack_datagram(1, bytes(MAX_DATAGRAM_SIZE))
    assert len(datagram) > MAX_DATAGRAM_SIZE
    assert unpack_datagram(datagram) == (1, bytes(MAX_DATAGRAM_SIZE))


@given(st.integers(min_value=0, max_value=VARINT_MAX), st.binary(min_size=1, max_size=64))
def test_round_trip(flow_id: int, packet: bytes) -> None:
    assert unpack_datagram(pack_datagram(flow_id, packet)) == (flow_id, packet)


@given(st.binary(max_size=32))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        _, packet = unpack_datagram(data)
    except WireError:
        return
    assert 0 < len(packet) < len(data)
    assert data.endswith(packet)


@pytest.mark.parametrize(
    ("frame_size", "payload"),
    [
        (0, 0),
        (2, 0),
        (3, 1),
        (65, 63),
        (66, 63),
        (67, 64),
        (1100, 1097),
        (1103, 1100),
        (1220, 1217),
        (16386, 16383),
        (16387, 16383),
        (65536, 65531),
    ],
)
def test_payload_limit_leaves_room_for_the_frame_header(frame_size: int, payload: int) -> None:
    """RFC 9221 bounds the whole DATAGRAM frame: type byte, length varint and payload."""
    assert payload_limit(frame_size) == payload
    if payload:
        assert 1 + len(encode_varint(payload)) + payload <= frame_size
