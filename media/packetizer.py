"""Turning encoded Opus frames into RTP packets (RFC 3550, RFC 7587, RFC 6464)."""

from __future__ import annotations

import secrets

from salon.daemon.wire.rtp import (
    AUDIO_LEVEL_EXTENSION_ID,
    FRAME_SAMPLES,
    OPUS_PAYLOAD_TYPE,
    HeaderExtension,
    RtpPacket,
    pack_audio_level,
    uint16_add,
    uint32_add,
)


class RtpPacketizer:
    """Numbers and stamps one speaker's packets.

    The sequence number grows by one per packet sent; the timestamp follows the media clock,
    also across frames that are not sent (DTX, mute), which :meth:`skip` accounts for. The
    marker bit is set on the first packet of each talkspurt, i.e. the first packet ever and the
    first after frames were skipped, as RFC 7587 section 4.2 asks. Initial values are random
    (RFC 3550 section 5.1) unless given.
    """

    def __init__(
        self, ssrc: int, sequence_number: int | None = None, timestamp: int | None = None
    ) -> None:
        self.ssrc = ssrc
        self.sequence_number = (
            secrets.randbits(16) if sequence_number is None else sequence_number & 0xFFFF
        )
        self.timestamp = secrets.randbits(32) if timestamp is None else timestamp & 0xFFFFFFFF
        self._talkspurt_start = True
        self.packets = 0
        self.skipped = 0

    def packetize(
        self,
        opus_payload: bytes,
        level: int,
        voice: bool,
        timestamp_advance: int = FRAME_SAMPLES,
        payload_type: int = OPUS_PAYLOAD_TYPE,
    ) -> bytes:
        """Serialize one RTP packet carrying ``opus_payload`` and its RFC 6464 level.

        The packet gets the current sequence number and timestamp, then the timestamp advances by
        ``timestamp_advance`` (the frame's duration in 48 kHz samples).
        """
        packet = RtpPacket(
            payload_type=payload_type,
            marker=self._talkspurt_start,
            sequence_number=self.sequence_number,
            timestamp=self.timestamp,
            ssrc=self.ssrc,
            extensions=[HeaderExtension(AUDIO_LEVEL_EXTENSION_ID, pack_audio_level(voice, level))],
            payload=opus_payload,
        )
        data = packet.serialize()
        self.sequence_number = uint16_add(self.sequence_number, 1)
        self.timestamp = uint32_add(self.timestamp, timestamp_advance)
        self._talkspurt_start = False
        self.packets += 1
        return data

    def skip(self, samples: int = FRAME_SAMPLES) -> None:
        """Let ``samples`` of media time pass without sending (DTX or muted microphone)."""
        self.timestamp = uint32_add(self.timestamp, samples)
        self._talkspurt_start = True
        self.skipped += 1
