"""A room's mix as HLS: AAC in fragmented-MP4 segments, by FFmpeg's own encoder and muxer.

:class:`HlsSegmenter` takes 20 ms frames of 48 kHz mono PCM and drives FFmpeg's HLS muxer
through PyAV (``hls_segment_type=fmp4``): it writes ``init.mp4`` and one ``.m4s`` file per
segment into a scratch directory and rewrites its playlist as each segment ends. After every
frame the segmenter reads that playlist; each new segment's bytes move into memory and its file
is deleted, so the directory never holds more than the segment being written. Readers (the
HTTP handlers, on another thread) get an immutable :class:`Window`, replaced whole.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960
PLAYLIST_NAME = "ffmpeg.m3u8"
INIT_NAME = "init.mp4"


@dataclass(frozen=True)
class Segment:
    """One finished segment of the stream."""

    sequence: int
    """Media sequence number (RFC 8216 6.2.1), from 0 at the stream's start."""
    duration: float
    """Seconds of audio in it."""
    started_at: float
    """Wall-clock time at which its first sample was mixed (``EXT-X-PROGRAM-DATE-TIME``)."""
    data: bytes = field(repr=False)
    """The ``.m4s`` file: ``moof`` + ``mdat``."""


@dataclass(frozen=True)
class Window:
    """What the stream offers now: the init section and the last segments, oldest first."""

    init: bytes = b""
    segments: tuple[Segment, ...] = ()

    def find(self, sequence: int) -> Segment | None:
        for segment in self.segments:
            if segment.sequence == sequence:
                return segment
        return None


class HlsSegmenter:
    """Encodes PCM frames to AAC and cuts them into HLS segments held in memory."""

    def __init__(
        self,
        directory: Path,
        *,
        started_at: float,
        segment_seconds: float = 1.0,
        keep: int = 9,
        bitrate: int = 64000,
    ) -> None:
        self.directory = directory
        self.keep = keep
        """Segments kept in memory (the playlist lists fewer: late fetches still succeed)."""
        self.started_at = started_at
        directory.mkdir(parents=True, exist_ok=True)
        self._playlist = directory / PLAYLIST_NAME
        self._container = av.open(
            str(self._playlist),
            "w",
            format="hls",
            options={
                "hls_time": f"{segment_seconds:g}",
                "hls_segment_type": "fmp4",
                "hls_fmp4_init_filename": INIT_NAME,
                "hls_segment_filename": str(directory / "s%d.m4s"),
                # The muxer's own list only tells which segments are finished; the window
                # clients see is ours.
                "hls_list_size": "3",
                "hls_flags": "temp_file+independent_segments",
            },
        )
        self._stream = self._container.add_stream("aac", rate=SAMPLE_RATE)
        self._stream.layout = "mono"
        self._stream.bit_rate = bitrate
        self._pts = 0
        self._seen: set[str] = set()
        self._elapsed = 0.0
        self.window = Window()
        self.bytes_out = 0
        """Bytes of segments produced."""
        self._closed = False

    def write(self, pcm: bytes) -> list[Segment]:
        """Add one 20 ms frame (int16 little-endian); return the segments it finished."""
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += samples.shape[1]
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._collect()

    def close(self) -> None:
        """Stop (the last, unfinished segment is dropped) and remove the scratch directory."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except Exception:  # closing is best effort: the directory goes anyway
            pass
        shutil.rmtree(self.directory, ignore_errors=True)

    def _collect(self) -> list[Segment]:
        try:
            text = self._playlist.read_text()
        except FileNotFoundError:
            return []
        finished = [name for _, name in _entries(text) if name not in self._seen]
        if not finished:
            return []
        window = self.window
        init = window.init
        if not init:
            init = (self.directory / INIT_NAME).read_bytes()
        new: list[Segment] = []
        durations = dict((name, duration) for duration, name in _entries(text))
        for name in finished:
            self._seen.add(name)
            path = self.directory / name
            data = path.read_bytes()
            path.unlink(missing_ok=True)
            sequence = int(name[1:-4])
            segment = Segment(sequence, durations[name], self.started_at + self._elapsed, data)
            self._elapsed += segment.duration
            self.bytes_out += len(data)
            new.append(segment)
        if len(self._seen) > 4 * self.keep:
            self._seen = {name for _, name in _entries(text)}
        self.window = Window(init, (*window.segments, *new)[-self.keep :])
        return new


def _entries(playlist: str) -> Sequence[tuple[float, str]]:
    """``(duration, file name)`` of each segment FFmpeg's playlist lists."""
    entries = []
    duration = 0.0
    for line in playlist.splitlines():
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",", 1)[0])
        elif line and not line.startswith("#"):
            entries.append((duration, line.rsplit("/", 1)[-1]))
    return entries
