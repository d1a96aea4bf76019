"""RTP packets, RFC 8285 header extensions, RFC 6464 audio levels and the peek_media fast path."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from salon.daemon.wire.datagram import pack_datagram
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.rtp import (
    AUDIO_LEVEL_EXTENSION_ID,
    FRAME_SAMPLES,
    ONE_BYTE_EXTENSION_PROFILE,
    OPUS_CLOCK_RATE,
    OPUS_PAYLOAD_TYPE,
    SILENCE_LEVEL,
    TWO_BYTE_EXTENSION_PROFILE,
    HeaderExtension,
    MediaHeader,
    RtpPacket,
    audio_level,
    pack_audio_level,
    pack_header_extensions,
    peek_media,
    uint16_add,
    uint16_gt,
    uint16_gte,
    uint32_add,
    uint32_gt,
    uint32_gte,
    unpack_audio_level,
    unpack_header_extensions,
)
from salon.daemon.wire.varint import VARINT_MAX

# Marker, 2 CSRCs, a one-byte extension block (audio level, then a 3-byte element, then padding
# to the word boundary) and 4 bytes of RTP padding.
ONE_BYTE_PACKET = bytes.fromhex(
    "b2ef1234deadbeef01020304"  # V=2 P=1 X=1 CC=2 | M=1 PT=111 | seq | timestamp | SSRC
    "1111111122222222"  # CSRCs
    "bede0002"  # one-byte profile, 2 words
    "10a6"  # id 1, 1 byte: voice, level 38
    "32010203"  # id 3, 3 bytes
    "0000"  # padding
    "f8fffe"  # payload
    "00000004"  # RTP padding, its last byte counts it
)
ONE_BYTE_HEADER_END = 32
ONE_BYTE_EXPECTED = RtpPacket(
    payload_type=111,
    marker=True,
    sequence_number=0x1234,
    timestamp=0xDEADBEEF,
    ssrc=0x01020304,
    csrc=[0x11111111, 0x22222222],
    extensions=[HeaderExtension(1, b"\xa6"), HeaderExtension(3, b"\x01\x02\x03")],
    payload=b"\xf8\xff\xfe",
    padding_size=4,
)

# Two-byte form, chosen because of id 20 and a zero-length element.
TWO_BYTE_PACKET = bytes.fromhex(
    "906f0001000003c0cafebabe"  # V=2 X=1 | PT=111 | seq 1 | timestamp 960 | SSRC
    "10000003"  # two-byte profile, 3 words
    "01017f"  # id 1, 1 byte: no voice, level 127
    "1400"  # id 20, empty
    "02026162"  # id 2, "ab"
    "000000"  # padding
    "68656c6c6f"  # payload
)
TWO_BYTE_HEADER_END = 28
TWO_BYTE_EXPECTED = RtpPacket(
    payload_type=111,
    sequence_number=1,
    timestamp=960,
    ssrc=0xCAFEBABE,
    extensions=[
        HeaderExtension(1, b"\x7f"),
        HeaderExtension(20, b""),
        HeaderExtension(2, b"ab"),
    ],
    payload=b"hello",
)

# What a speaker sends: no CSRC, just the audio level extension, then the SRTP payload and tag.
TYPICAL_PACKET = bytes.fromhex("906f0001000003c0cafebabe bede0001 10a60000") + bytes(97)


def rtp_header(first: int = 0x90, extension: str = "") -> bytes:
    return bytes((first,)) + bytes.fromhex("6f0001000003c0cafebabe" + extension)


# --------------------------------------------------------------------------- constants, helpers


def test_constants() -> None:
    assert OPUS_PAYLOAD_TYPE == 111
    assert OPUS_CLOCK_RATE == 48000
    assert FRAME_SAMPLES == OPUS_CLOCK_RATE // 50
    assert AUDIO_LEVEL_EXTENSION_ID == 1
    assert SILENCE_LEVEL == 127


def test_sequence_arithmetic() -> None:
    assert uint16_add(65535, 1) == 0
    assert uint16_add(10, 5) == 15
    assert uint16_gt(0, 65535)
    assert not uint16_gt(65535, 0)
    assert uint16_gt(2, 1)
    assert not uint16_gt(1, 1)
    assert uint16_gte(1, 1)
    assert not uint16_gte(1, 2)
    assert uint32_add(0xFFFFFFFF, FRAME_SAMPLES) == FRAME_SAMPLES - 1
    assert uint32_gt(0, 0xFFFFFFFF - FRAME_SAMPLES)
    assert not uint32_gt(0xFFFFFFFF - FRAME_SAMPLES, 0)
    assert uint32_gte(7, 7)
    assert not uint32_gte(6, 7)


@pytest.mark.parametrize(
    ("voice", "level", "encoded"),
    [(True, 38, b"\xa6"), (False, 127, b"\x7f"), (True, 0, b"\x80"), (False, 0, b"\x00")],
)
def test_audio_level_golden(voice: bool, level: int, encoded: bytes) -> None:
    assert pack_audio_level(voice, level) == encoded
    assert unpack_audio_level(encoded) == (voice, level)


def test_audio_level_errors() -> None:
    with pytest.raises(WireError, match="out of range"):
        pack_audio_level(True, 128)
    with pytest.raises(WireError, match="out of range"):
        pack_audio_level(False, -1)
    with pytest.raises(WireError, match="0 bytes instead of 1"):
        unpack_audio_level(b"")
    with pytest.raises(WireError, match="2 bytes instead of 1"):
        unpack_audio_level(b"\x01\x02")


def test_audio_level_property() -> None:
    assert ONE_BYTE_EXPECTED.audio_level == (True, 38)
    assert audio_level(TWO_BYTE_EXPECTED) == (False, 127)
    assert RtpPacket().audio_level is None
    assert RtpPacket(extensions=[HeaderExtension(2, b"\x10")]).audio_level is None
    assert RtpPacket(extensions=[HeaderExtension(1, b"\x10\x20")]).audio_level is None


# --------------------------------------------------------------------------- golden packets


def test_one_byte_golden_parse() -> None:
    assert RtpPacket.parse(ONE_BYTE_PACKET) == ONE_BYTE_EXPECTED


def test_one_byte_golden_serialize() -> None:
    assert ONE_BYTE_EXPECTED.serialize() == ONE_BYTE_PACKET


def test_two_byte_golden_parse() -> None:
    assert RtpPacket.parse(TWO_BYTE_PACKET) == TWO_BYTE_EXPECTED


def test_two_byte_golden_serialize() -> None:
    assert TWO_BYTE_EXPECTED.serialize() == TWO_BYTE_PACKET


def test_minimal_packet() -> None:
    data = bytes.fromhex("8000ffff00000000ffffffff")
    packet = RtpPacket.parse(data)
    assert packet == RtpPacket(sequence_number=0xFFFF, ssrc=0xFFFFFFFF)
    assert packet.serialize() == data


def test_padding_between_one_byte_elements() -> None:
    data = rtp_header(extension="bede0003 00 10a6 00 00 32010203 000000") + b"x"
    packet = RtpPacket.parse(data)
    assert packet.extensions == ONE_BYTE_EXPECTED.extensions
    assert packet.payload == b"x"


def test_padding_between_two_byte_elements_and_app_bits() -> None:
    data = rtp_header(extension="100f0003 00 01017f 00 1400 02026162 00") + b"x"
    packet = RtpPacket.parse(data)
    assert packet.extensions == TWO_BYTE_EXPECTED.extensions
    assert packet.payload == b"x"


def test_one_byte_id_15_ends_the_block() -> None:
    data = rtp_header(extension="bede0002 10a6 f0 32010203 00")
    assert RtpPacket.parse(data).extensions == [HeaderExtension(1, b"\xa6")]


def test_unknown_extension_profile_is_skipped() -> None:
    data = rtp_header(extension="abcd0001 10a6 0000") + b"payload"
    packet = RtpPacket.parse(data)
    assert packet.extensions == []
    assert packet.payload == b"payload"
    assert packet.audio_level is None


def test_empty_extension_block() -> None:
    packet = RtpPacket.parse(rtp_header(extension="bede0000") + b"p")
    assert packet.extensions == []
    assert packet.payload == b"p"


def test_packet_of_only_padding() -> None:
    packet = RtpPacket.parse(rtp_header(0xA0) + bytes.fromhex("00000004"))
    assert packet.payload == b""
    assert packet.padding_size == 4


def test_extension_form_choice() -> None:
    def profile(*extensions: HeaderExtension) -> int:
        return pack_header_extensions(list(extensions))[0]

    assert pack_header_extensions([]) == (0, b"")
    assert profile(HeaderExtension(14, bytes(16))) == ONE_BYTE_EXTENSION_PROFILE
    assert profile(HeaderExtension(1, b"a"), HeaderExtension(15, b"a")) == (
        TWO_BYTE_EXTENSION_PROFILE
    )
    assert profile(HeaderExtension(1, b"a"), HeaderExtension(2, b"")) == (
        TWO_BYTE_EXTENSION_PROFILE
    )
    assert profile(HeaderExtension(1, bytes(17))) == TWO_BYTE_EXTENSION_PROFILE
    assert unpack_header_extensions(0xBEDE, b"") == []


# --------------------------------------------------------------------------- malformed packets


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than its 12-byte header"),
        (bytes(11), "shorter than its 12-byte header"),
        (rtp_header(0x50), "RTP version 1 is not supported"),
        (rtp_header(0x10), "RTP version 0 is not supported"),
        (rtp_header(0xD0), "RTP version 3 is not supported"),
        (rtp_header(0x81) + b"abc", "RTP packet has truncated CSRC"),
        (rtp_header(extension="bede"), "RTP header extension is truncated"),
        (rtp_header(extension="bede0002 10a60000"), "RTP header extension is truncated"),
        (rtp_header(extension="bede0001 3f010203"), "one-byte header extension element is"),
        (rtp_header(extension="bede0001 00000010"), "one-byte header extension element is"),
        (rtp_header(extension="10000001 0105aabb"), "two-byte header extension element is"),
        (rtp_header(extension="10000001 00000001"), "two-byte header extension element is"),
        (rtp_header(0xA0) + b"abc\x00", "RTP padding length 0 is invalid"),
        (rtp_header(0xA0) + b"abc\x05", "RTP padding length 5 is invalid"),
        (rtp_header(0xA0), "RTP padding length 190 is invalid"),
    ],
)
def test_malformed_packets(data: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        RtpPacket.parse(data)


@pytest.mark.parametrize(
    ("data", "header_end"),
    [(ONE_BYTE_PACKET, ONE_BYTE_HEADER_END), (TWO_BYTE_PACKET, TWO_BYTE_HEADER_END)],
)
def test_every_truncated_header_raises(data: bytes, header_end: int) -> None:
    for cut in range(header_end):
        with pytest.raises(WireError):
            RtpPacket.parse(data[:cut])
        with pytest.raises(WireError):
            peek_media(b"\x07" + data[:cut])


def test_truncation_messages() -> None:
    for cut in range(12, 20):
        with pytest.raises(WireError, match="RTP packet has truncated CSRC"):
            RtpPacket.parse(ONE_BYTE_PACKET[:cut])
        with pytest.raises(WireError, match="RTP packet has truncated CSRC"):
            peek_media(b"\x07" + ONE_BYTE_PACKET[:cut])
    for cut in range(20, ONE_BYTE_HEADER_END):
        with pytest.raises(WireError, match="RTP header extension is truncated"):
            RtpPacket.parse(ONE_BYTE_PACKET[:cut])
        with pytest.raises(WireError, match="RTP header extension is truncated"):
            peek_media(b"\x07" + ONE_BYTE_PACKET[:cut])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("payload_type", 128),
        ("payload_type", -1),
        ("sequence_number", 0x10000),
        ("timestamp", 2**32),
        ("ssrc", -1),
        ("padding_size", 256),
        ("csrc", list(range(16))),
        ("csrc", [2**32]),
        ("extensions", [HeaderExtension(0, b"a")]),
        ("extensions", [HeaderExtension(256, b"a")]),
        ("extensions", [HeaderExtension(1, bytes(256))]),
    ],
)
def test_serialize_refuses_out_of_range_fields(field: str, value: object) -> None:
    packet = RtpPacket()
    setattr(packet, field, value)
    with pytest.raises(WireError):
        packet.serialize()


# --------------------------------------------------------------------------- peek_media


def test_peek_typical_datagram() -> None:
    assert peek_media(b"\x05" + TYPICAL_PACKET) == MediaHeader(5, 0xCAFEBABE, 1, 960, 38)


@pytest.mark.parametrize("flow_id", [0, 63, 64, 15293, 494878333, 151288809941952652])
def test_peek_flow_id_sizes(flow_id: int) -> None:
    header = peek_media(pack_datagram(flow_id, TYPICAL_PACKET))
    assert header == MediaHeader(flow_id, 0xCAFEBABE, 1, 960, 38)


def test_peek_golden_packets() -> None:
    assert peek_media(b"\x07" + ONE_BYTE_PACKET) == MediaHeader(
        7, 0x01020304, 0x1234, 0xDEADBEEF, 38
    )
    # The audio level is read from a two-byte block too (PROTOCOL.md 11.2).
    assert peek_media(b"\x07" + TWO_BYTE_PACKET) == MediaHeader(7, 0xCAFEBABE, 1, 960, 127)


@pytest.mark.parametrize(
    ("extension", "level"),
    [
        ("", None),
        ("bede0000", None),
        ("bede0001 10a6 0000", 38),
        ("bede0001 00 00 1026", 38),  # padding before the element
        ("bede0002 32010203 10a6 0000", 38),  # audio level second
        ("bede0001 11a6a7 00", None),  # wrong length for an audio level
        ("bede0001 f0 10a6 00", None),  # id 15 ends the block
        ("bede0001 20a6 0000", None),  # another id only
        ("abcd0001 10a6 0000", None),  # unknown profile
        ("10000001 0101a6 00", 38),  # two-byte form
        ("10000002 0301aa00 0101a600", 38),  # two-byte form, audio level second
        ("10000001 01020102", None),  # two-byte form, wrong length for an audio level
    ],
)
def test_peek_level(extension: str, level: int | None) -> None:
    first = 0x90 if extension else 0x80
    data = rtp_header(first, extension) + b"srtp"
    assert peek_media(b"\x01" + data).level == level
    expected = RtpPacket.parse(data).audio_level
    assert level == (expected[1] if expected else None)


def test_peek_ignores_padding_because_srtp_encrypts_it() -> None:
    data = b"\x01" + rtp_header(0xB0, "bede0001 10a6 0000") + b"tag ends in zero\x00"
    assert peek_media(data).level == 38
    with pytest.raises(WireError):
        RtpPacket.parse(data[1:])


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (b"", "datagram is empty"),
        (b"\x40", "datagram flow id is truncated"),
        (b"\x80\x00\x00", "datagram flow id is truncated"),
        (b"\xc0" + bytes(6), "datagram flow id is truncated"),
        (b"\x01", "RTP header is truncated"),
        (b"\x01" + rtp_header()[:11], "RTP header is truncated"),
        (b"\x01" + rtp_header(0x50, "bede0001 10a6 0000"), "RTP version 1 is not supported"),
        (b"\x01" + rtp_header(0x60), "RTP version 1 is not supported"),
        (b"\x01" + rtp_header(0x93, "bede0001 10a6 0000"), "truncated CSRC"),
        (b"\x01" + rtp_header(0x90, "bede0002 10a60000"), "header extension is truncated"),
        (b"\x01" + rtp_header(0x90, "bede0001 20a6"), "header extension is truncated"),
        (b"\x01" + rtp_header(0x90, "bede0001 0000001f"), "extension element is truncated"),
        (b"\x01" + rtp_header(0x90, "bede0001 3f000000"), "extension element is truncated"),
    ],
)
def test_peek_malformed(datagram: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        peek_media(datagram)


def test_media_header_has_slots() -> None:
    assert not hasattr(MediaHeader(1, 2, 3, 4, None), "__dict__")


# --------------------------------------------------------------------------- properties

uint32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
one_byte_extensions = st.lists(
    st.builds(
        HeaderExtension,
        st.integers(min_value=1, max_value=14),
        st.binary(min_size=1, max_size=16),
    ),
    max_size=5,
)
any_extensions = st.lists(
    st.builds(
        HeaderExtension,
        st.integers(min_value=1, max_value=255),
        st.binary(max_size=40),
    ),
    max_size=5,
)
packets = st.builds(
    RtpPacket,
    payload_type=st.integers(min_value=0, max_value=127),
    marker=st.booleans(),
    sequence_number=st.integers(min_value=0, max_value=0xFFFF),
    timestamp=uint32,
    ssrc=uint32,
    csrc=st.lists(uint32, max_size=15),
    extensions=st.one_of(one_byte_extensions, any_extensions),
    payload=st.binary(max_size=200),
    padding_size=st.integers(min_value=0, max_value=255),
)
typical_packets = st.builds(
    RtpPacket,
    payload_type=st.just(OPUS_PAYLOAD_TYPE),
    sequence_number=st.integers(min_value=0, max_value=0xFFFF),
    timestamp=uint32,
    ssrc=uint32,
    extensions=st.builds(
        lambda voice, level, more: [HeaderExtension(1, pack_audio_level(voice, level)), *more],
        st.booleans(),
        st.integers(min_value=0, max_value=127),
        one_byte_extensions,
    ),
    payload=st.binary(min_size=1, max_size=120),
)
flow_ids = st.integers(min_value=0, max_value=VARINT_MAX)


def assert_peek_agrees(header: MediaHeader, flow_id: int, packet: RtpPacket) -> None:
    assert header.flow_id == flow_id
    assert header.ssrc == packet.ssrc
    assert header.sequence_number == packet.sequence_number
    assert header.timestamp == packet.timestamp


def extension_profile(data: bytes) -> int:
    """The header extension profile of a valid RTP packet, 0 without an extension."""
    if not data[0] & 0x10:
        return 0
    return int(struct.unpack_from("!H", data, 12 + 4 * (data[0] & 0x0F))[0])


def expected_peek_level(packet: RtpPacket, profile: int) -> int | None:
    level = packet.audio_level
    known = profile == ONE_BYTE_EXTENSION_PROFILE or profile & 0xFFF0 == 0x1000
    return level[1] if level is not None and known else None


@given(packets)
def test_serialize_parse_round_trip(packet: RtpPacket) -> None:
    assert RtpPacket.parse(packet.serialize()) == packet


@given(packets, flow_ids)
def test_peek_agrees_with_parse(packet: RtpPacket, flow_id: int) -> None:
    header = peek_media(pack_datagram(flow_id, packet.serialize()))
    assert_peek_agrees(header, flow_id, packet)
    profile = pack_header_extensions(packet.extensions)[0]
    assert header.level == expected_peek_level(packet, profile)


@given(typical_packets, flow_ids)
def test_peek_typical_packets(packet: RtpPacket, flow_id: int) -> None:
    header = peek_media(pack_datagram(flow_id, packet.serialize()))
    assert_peek_agrees(header, flow_id, packet)
    assert packet.audio_level is not None
    assert header.level == packet.audio_level[1]


@given(st.one_of(packets, typical_packets), st.data())
def test_mutated_packets(packet: RtpPacket, data: st.DataObject) -> None:
    mutable = bytearray(packet.serialize())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=min(len(mutable) - 1, 40)))
        mutable[position] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(mutable)))
    mutated = bytes(mutable[:cut])
    try:
        parsed = RtpPacket.parse(mutated)
    except WireError:
        try:
            peek_media(b"\x00" + mutated)
        except WireError:
            pass
        return
    # Whatever parses fully must peek the same way.
    header = peek_media(b"\x00" + mutated)
    assert_peek_agrees(header, 0, parsed)
    assert header.level == expected_peek_level(parsed, extension_profile(mutated))


@st.composite
def nearly_valid_packets(draw: st.DrawFn) -> bytes:
    """Random bytes shaped like an RTP header, so that parsing gets past the first checks."""
    first = draw(st.integers(min_value=0x80, max_value=0xBF))
    fixed = draw(st.binary(min_size=11, max_size=11))
    csrc = draw(st.binary(max_size=4 * (first & 0x0F) + 2))
    profile = draw(st.sampled_from([0xBEDE, 0x1000, 0x100A, 0x0000])).to_bytes(2, "big")
    words = draw(st.integers(min_value=0, max_value=6)).to_bytes(2, "big")
    block = draw(st.binary(max_size=28))
    payload = draw(st.binary(max_size=8))
    return bytes((first,)) + fixed + csrc + profile + words + block + payload


@given(st.one_of(st.binary(max_size=64), nearly_valid_packets()))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except WireError:
        pass
    else:
        packet.serialize()
    for datagram in (data, b"\x05" + data):
        try:
            peek_media(datagram)
        except WireError:
            pass
