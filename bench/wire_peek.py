"""Micro-benchmark of the media fast path: ``peek_media`` against a full ``RtpPacket.parse``.

The datagram is a typical 20 ms Opus frame: a 1-byte flow id, the 12-byte RTP header, a one-byte
header extension block carrying the audio level, and 81 payload bytes plus a 16-byte SRTP tag.

Run with ``python bench/wire_peek.py``.
"""

from __future__ import annotations

import os
import timeit

from salon.daemon.wire.datagram import pack_datagram, unpack_datagram
from salon.daemon.wire.rtp import (
    AUDIO_LEVEL_EXTENSION_ID,
    OPUS_PAYLOAD_TYPE,
    HeaderExtension,
    RtpPacket,
    pack_audio_level,
    peek_media,
)


def typical_datagram() -> bytes:
    packet = RtpPacket(
        payload_type=OPUS_PAYLOAD_TYPE,
        sequence_number=4242,
        timestamp=960 * 4242,
        ssrc=0x1234ABCD,
        extensions=[HeaderExtension(AUDIO_LEVEL_EXTENSION_ID, pack_audio_level(True, 38))],
        payload=os.urandom(81 + 16),
    )
    return pack_datagram(5, packet.serialize())


def ns_per_call(statement: str, namespace: dict[str, object], number: int) -> float:
    timer = timeit.Timer(statement, globals=namespace)
    best = min(timer.repeat(repeat=5, number=number))
    return best / number * 1e9


def main() -> None:
    datagram = typical_datagram()
    _, packet = unpack_datagram(datagram)
    header = peek_media(datagram)
    assert header.flow_id == 5 and header.level == 38
    namespace: dict[str, object] = {
        "peek_media": peek_media,
        "parse": RtpPacket.parse,
        "unpack_datagram": unpack_datagram,
        "datagram": datagram,
        "packet": packet,
    }
    print(f"datagram of {len(datagram)} bytes")
    for label, statement, number in (
        ("peek_media(datagram)", "peek_media(datagram)", 200_000),
        ("RtpPacket.parse(packet)", "parse(packet)", 100_000),
        ("unpack_datagram(datagram)", "unpack_datagram(datagram)", 200_000),
    ):
        print(f"{label:28} {ns_per_call(statement, namespace, number):7.0f} ns per call")


if __name__ == "__main__":
    main()
