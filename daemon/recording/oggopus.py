"""An Ogg Opus muxer (RFC 7845 on RFC 3533) for mono 48 kHz recordings.

The recorder encodes its mix with the same Opus encoder the clients use (VOIP, 20 ms frames)
and hands each packet to :class:`OggOpusWriter`, which writes the identification header
(``OpusHead``), the comment header (``OpusTags``) and audio pages of about one second, each
with its granule position and CRC, the last one flagged end-of-stream and carrying the exact
length, so players (and ``opusinfo``) show the true duration.

libsndfile can write Ogg Opus as well, but it encodes with the music profile at complexity 10
and no way to choose: about 16 ms of CPU per second of audio on the reference machine, against
about 2 ms for the VOIP encoder used here.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import BinaryIO

SAMPLE_RATE = 48000
PRE_SKIP = 312
"""Samples the decoder discards at the start: libopus' encoder delay at 48 kHz (6.5 ms)."""
PAGE_DURATION = 50
"""Packets per page: one second of 20 ms packets, as opusenc does."""
_MAX_SEGMENTS = 255

_PAGE_HEADER = struct.Struct("<4sBBqIIIB")
_FLAG_CONTINUED = 0x01
_FLAG_FIRST = 0x02
_FLAG_LAST = 0x04

# Ogg's CRC-32 (polynomial 0x04C11DB7, zero initial value, no final xor, most significant bit
# first) is zlib's CRC-32 with the bits of every byte and of the result mirrored, which keeps
# the work in C: bytes.translate mirrors a page at memory speed.
_MIRROR = bytes(int(f"{value:08b}"[::-1], 2) for value in range(256))


def ogg_crc(data: bytes) -> int:
    """The CRC of an Ogg page (computed with its CRC field zeroed)."""
    reflected = zlib.crc32(data.translate(_MIRROR), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def opus_head(channels: int = 1, pre_skip: int = PRE_SKIP, input_rate: int = SAMPLE_RATE) -> bytes:
    """The identification header (RFC 7845 section 5.1), channel mapping family 0."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_rate, 0, 0)


def opus_tags(vendor: str, comments: dict[str, str]) -> bytes:
    """The comment header (RFC 7845 section 5.2): ``KEY=value`` user comments."""
    encoded_vendor = vendor.encode("utf-8")
    parts = [b"OpusTags", struct.pack("<I", len(encoded_vendor)), encoded_vendor]
    parts.append(struct.pack("<I", len(comments)))
    for key, value in comments.items():
        entry = f"{key}={value}".encode()
        parts += [struct.pack("<I", len(entry)), entry]
    return b"".join(parts)


class OggOpusWriter:
    """Writes Opus packets of 20 ms (960 samples) into an Ogg Opus stream on ``stream``.

    ``comments`` become the ``OpusTags`` user comments (e.g. ``TITLE``, ``DATE``). Call
    :meth:`close` with the number of samples the file really holds (the encoder's last frame
    may be padding) to end the stream.
    """

    def __init__(
        self,
        stream: BinaryIO,
        *,
        vendor: str = "salond",
        comments: dict[str, str] | None = None,
        serial: int | None = None,
        pre_skip: int = PRE_SKIP,
        frame_samples: int = 960,
    ) -> None:
        self.stream = stream
        self.pre_skip = pre_skip
        self.frame_samples = frame_samples
        self.serial = serial if serial is not None else int.from_bytes(os.urandom(4), "little")
        self.packets = 0
        """Audio packets written so far."""
        self.bytes_written = 0
        self._sequence = 0
        self._pending: list[bytes] = []
        self._segments = 0
        self._closed = False
        self._write_page([opus_head(pre_skip=pre_skip)], granule=0, flags=_FLAG_FIRST)
        self._write_page([opus_tags(vendor, comments or {})], granule=0, flags=0)

    @property
    def samples(self) -> int:
        """PCM samples encoded so far (pre-skip not included)."""
        return self.packets * self.frame_samples

    def write_packet(self, packet: bytes) -> None:
        """Append one Opus packet of ``frame_samples`` samples."""
        if self._closed:
            raise ValueError("the Ogg Opus stream is closed")
        # A full page goes out when the next packet arrives, never right away: the last page
        # then always holds a packet, which end trimming (see close) needs.
        segments = len(packet) // 255 + 1
        if len(self._pending) >= PAGE_DURATION or self._segments + segments > _MAX_SEGMENTS:
            self._flush_audio(last=False, length=None)
        self._pending.append(packet)
        self._segments += segments
        self.packets += 1

    def close(self, length: int | None = None) -> None:
        """End the stream; ``length`` is how many samples a player should output (default: all
        but the pre-skip).

        The last page's granule position is ``pre_skip + length``, which trims the padding of
        the final frame (RFC 7845 section 4.4): encode at least ``pre_skip`` samples more than
        ``length`` so that the encoder's look-ahead has left it.
        """
        if self._closed:
            return
        if length is None or length > self.samples - self.pre_skip:
            length = max(0, self.samples - self.pre_skip)
        self._flush_audio(last=True, length=length)
        self._closed = True
        self.stream.flush()

    def _flush_audio(self, *, last: bool, length: int | None) -> None:
        packets, self._pending = self._pending, []
        self._segments = 0
        # A page's granule position counts every sample decoded up to its last packet, the
        # pre-skip included; only the last page's says how much of it to play.
        granule = self.pre_skip + length if length is not None else self.samples
        if not packets and not last:
            return
        self._write_page(packets, granule=granule, flags=_FLAG_LAST if last else 0)

    def _write_page(self, packets: list[bytes], *, granule: int, flags: int) -> None:
        lacing = bytearray()
        for packet in packets:
            full, rest = divmod(len(packet), 255)
            lacing += b"\xff" * full + bytes((rest,))
        if len(lacing) > _MAX_SEGMENTS:
            # Only a header bigger than 64 KiB could get here (audio pages flush earlier).
            raise ValueError("Ogg page would need more than 255 segments")
        header = _PAGE_HEADER.pack(
            b"OggS", 0, flags, granule, self.serial, self._sequence, 0, len(lacing)
        )
        page = header + bytes(lacing) + b"".join(packets)
        crc = ogg_crc(page)
        page = page[:22] + struct.pack("<I", crc) + page[26:]
        self.stream.write(page)
        self.bytes_written += len(page)
        self._sequence += 1
