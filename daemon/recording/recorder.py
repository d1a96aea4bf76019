"""One room's recording: the consenting speakers' datagrams in, an Ogg Opus file out.

:class:`RoomRecorder` does no threading and reads no clock: the service's worker thread hands
it datagrams with their arrival time and calls :meth:`RoomRecorder.advance` with the time now.
Each datagram is unprotected with its flow's SRTP key and placed by its RTP timestamp on the
recording's timeline (:class:`~.track.Track`); frames older than ``hold`` seconds are final,
so they are mixed (silence where nobody spoke) and encoded with the same Opus encoder the
clients use, into an Ogg Opus file (:class:`~.oggopus.OggOpusWriter`).
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from salon.daemon.wire.rtp import FRAME_SAMPLES, RtpPacket
from salon.media.codec import OpusEncoder
from salon.media.mixer import mix_arrays
from salon.media.red import RedError, primary_opus
from salon.media.srtp import SrtpError, SrtpReceiver, key_from_base64

from .oggopus import OggOpusWriter
from .track import Track

FRAME_SECONDS = FRAME_SAMPLES / 48000
DEFAULT_HOLD = 1.0
"""Seconds a frame stays open to late and reordered packets before it is written."""
DEFAULT_BITRATE = 48000
"""Bits per second of the recording (mono, a mix of several voices)."""
_SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)


@dataclass
class RecorderStats:
    """Counters of one recording."""

    datagrams: int = 0
    """Datagrams handed in."""
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    """Datagrams dropped, by reason (``unknown_flow``, ``auth_failed``, ``malformed``...)."""
    late_frames: int = 0
    """Decoded frames that came after their place was written."""
    frames_written: int = 0
    """20 ms frames in the file."""


@dataclass
class RecordingResult:
    """What a finished recording holds."""

    path: Path
    started_at: float
    ended_at: float
    duration: float
    """Seconds of audio in the file."""
    speakers: list[str]
    """Users whose audio is in the file, in order of first appearance."""
    bytes: int


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class RoomRecorder:
    """Mixes the recorded flows of one room into an Ogg Opus file."""

    def __init__(
        self,
        path: Path,
        started_at: float,
        *,
        comments: dict[str, str] | None = None,
        hold: float = DEFAULT_HOLD,
        bitrate: int = DEFAULT_BITRATE,
        stream: BinaryIO | None = None,
    ) -> None:
        self.path = path
        self.started_at = started_at
        self.hold_frames = max(1, round(hold / FRAME_SECONDS))
        self.stats = RecorderStats()
        # Recordings are private (0600) whatever the process umask.
        self._stream = stream if stream is not None else open(path, "wb", opener=_private)  # noqa: SIM115
        self._encoder = OpusEncoder(bitrate=bitrate)
        self._writer = OggOpusWriter(self._stream, comments=comments)
        self._srtp = SrtpReceiver()
        self._tracks: dict[int, Track] = {}
        self._frames: dict[int, list[npt.NDArray[np.int16]]] = {}
        self._written = 0
        self._speakers: dict[str, int] = {}
        self._finished: RecordingResult | None = None

    # ------------------------------------------------------------------ tracks

    def add_track(self, user: str, flow_id: int, ssrc: int, key_b64: str) -> None:
        """Record ``user``'s flow from now on (again, if it was removed: same track)."""
        if flow_id in self._tracks:
            return
        self._srtp.add(flow_id, ssrc, key_from_base64(key_b64))
        self._tracks[flow_id] = Track(user)

    def remove_track(self, flow_id: int) -> None:
        """Stop recording a flow: what it sent so far is placed and kept."""
        track = self._tracks.pop(flow_id, None)
        self._srtp.remove(flow_id)
        if track is not None:
            self._collect(track, track.flush())

    @property
    def flows(self) -> list[int]:
        """Flow ids recorded now."""
        return list(self._tracks)

    # ------------------------------------------------------------------ media

    def frame_at(self, when: float) -> float:
        """The timeline position (in frames, fractional) of wall-clock time ``when``."""
        return (when - self.started_at) / FRAME_SECONDS

    def receive(self, datagram: bytes, arrival: float, trusted: bool = True) -> None:
        """Take in one datagram that arrived at ``arrival`` (``trusted``: stamped in time)."""
        opened = self._open(datagram)
        if opened is not None:
            track, packet = opened
            position = self.frame_at(arrival)
            track.add(
                packet.sequence_number,
                packet.timestamp,
                packet.payload,
                position if trusted else None,
                fallback=position,
            )

    def receive_batch(self, datagrams: Iterable[bytes], now: float, trusted: bool) -> None:
        """Take in the datagrams that arrived since the previous batch, the last one by
        ``now``. ``trusted``: the batch was taken promptly, so ``now`` is their arrival time.

        An untrusted batch (the worker was held up) may span seconds. A flow that starts in it
        is placed so that its *newest* packet arrived ``now``, the older ones before it by
        their RTP timestamps, not all of them from ``now`` on (which would push the backlog
        past the end of the recording).
        """
        if trusted:
            for datagram in datagrams:
                self.receive(datagram, now)
            return
        opened = [o for o in map(self._open, datagrams) if o is not None]
        newest: dict[int, int] = {}
        for track, packet in opened:
            newest[id(track)] = packet.timestamp
        position = self.frame_at(now)
        for track, packet in opened:
            behind = (newest[id(track)] - packet.timestamp) % 2**32
            frames = behind / FRAME_SAMPLES if behind < 2**31 else 0.0
            track.add(
                packet.sequence_number,
                packet.timestamp,
                packet.payload,
                None,
                fallback=position - frames,
            )

    def _open(self, datagram: bytes) -> tuple[Track, RtpPacket] | None:
        """The track and clear RTP packet of a datagram, or None (dropped and counted)."""
        stats = self.stats
        stats.datagrams += 1
        try:
            flow_id, packet = self._srtp.open(datagram)
        except SrtpError as exc:
            stats.drops[exc.reason] += 1
            return None
        track = self._tracks[flow_id]  # added and removed together with its SRTP flow
        try:
            # A RED packet's primary block is the frame; the copies of earlier ones are for
            # lossy listeners, not for a recorder on the server's own side of the network.
            packet.payload = primary_opus(packet.payload_type, packet.payload)
        except RedError:
            stats.drops["malformed"] += 1
            return None
        return track, packet

    def advance(self, now: float) -> None:
        """Write every frame older than the hold (call it every few tens of milliseconds)."""
        horizon = int(self.frame_at(now)) - self.hold_frames
        if horizon > self._written:
            self._render(horizon)

    def _render(self, horizon: int) -> None:
        for track in self._tracks.values():
            self._collect(track, track.render(horizon))
        self._write_until(horizon)

    def _collect(self, track: Track, frames: Iterable[tuple[int, bytes]]) -> None:
        written = self._written
        store = self._frames
        for index, pcm in frames:
            if index < written:
                self.stats.late_frames += 1
                continue
            store.setdefault(index, []).append(np.frombuffer(pcm, dtype="<i2"))
            self._speakers[track.user] = self._speakers.get(track.user, 0) + 1

    def _write_until(self, end: int) -> None:
        encoder, writer, frames = self._encoder, self._writer, self._frames
        for index in range(self._written, end):
            parts = frames.pop(index, None)
            pcm = _SILENCE if not parts else parts[0] if len(parts) == 1 else mix_arrays(parts)
            writer.write_packet(encoder.encode(pcm.astype("<i2", copy=False).tobytes()))
        self.stats.frames_written += max(0, end - self._written)
        self._written = max(self._written, end)

    # ------------------------------------------------------------------ the end

    def finish(self, ended_at: float) -> RecordingResult:
        """Place everything received, write up to ``ended_at`` and close the file."""
        if self._finished is not None:
            return self._finished
        end = max(self._written, round(self.frame_at(ended_at)))
        for flow_id in list(self._tracks):
            track = self._tracks[flow_id]
            self._collect(track, (f for f in track.flush() if f[0] < end))
        self._tracks.clear()
        self._write_until(end)
        # One more frame of silence pushes the encoder's look-ahead out; the end trimming of
        # the last page cuts it off again.
        self._writer.write_packet(self._encoder.encode(_SILENCE.tobytes()))
        self._writer.close(length=end * FRAME_SAMPLES)
        self._stream.close()
        speakers = [user for user in self._speakers if self._speakers[user] > 0]
        self._finished = RecordingResult(
            path=self.path,
            started_at=self.started_at,
            ended_at=ended_at,
            duration=end * FRAME_SECONDS,
            speakers=speakers,
            bytes=self._writer.bytes_written,
        )
        return self._finished

    def abort(self) -> None:
        """Close the file as it is (after a write error); it may end mid-page."""
        try:
            self._stream.close()
        except OSError:
            pass


def utc_stamp(when: float) -> str:
    """``when`` as a compact UTC time for file names: 20260101T120000Z."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
