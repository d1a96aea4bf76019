"""One speaker's flow placed on a recording's timeline, sans-I/O.

The recording's timeline is counted in 20 ms frames from its start. A packet's place is its RTP
timestamp (in frames) plus the track's *offset*: the speaker's media clock never stops during a
stage turn (it runs through DTX silence and mutes), so one offset places a whole talk, pauses
included. The offset comes from arrival times: the smallest ``arrival - timestamp`` seen is the
packet that waited least on the way, so it is the best estimate of when the speaker's audio was
live. It is set by the first packet (a speaker who joins late starts where they joined) and
revised at the start of a talk spurt when the estimate has moved by three frames or more (a
drifting sound card, a sender's stall), never in the middle of speech.

Arrival times are optional: the recorder leaves them out when it knows they are late (its
worker was held up), so that a stall delays writing but never misplaces audio.

Frames are produced in sequence order once their place is older than the caller's horizon, so
packets reordered or delayed by less than the hold are put back in place. A gap in sequence
numbers is loss: the frame just before the next packet is rebuilt from that packet's in-band FEC,
and a few frames after the last one are concealed; a timestamp jump over contiguous sequence
numbers is DTX and stays silent.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from salon.daemon.wire.rtp import FRAME_SAMPLES
from salon.media.codec import CodecError, OpusDecoder
from salon.media.timeline import unwrap

MAX_CONCEALED = 4
"""Frames concealed after the last good one when packets were lost (then silence)."""
REANCHOR_FRAMES = 3
"""How far (in frames) the arrival estimate must move before a talk spurt is placed anew."""
TRANSIT_WINDOW = 500
"""Packets (10 s of speech) over which the smallest transit is taken."""
MAX_PENDING = 6000
"""Packets held per track at most (2 minutes); the oldest are dropped beyond it. More than the
core's recording outlet holds (``Limits.recording_queue``, 4096), so that after the worker was
held up, nothing the outlet kept is lost here."""
_RESYNC_DISTANCE = 3000


@dataclass
class TrackStats:
    """Counters of one track."""

    packets: int = 0
    """Packets accepted."""
    frames: int = 0
    """Frames decoded from packets."""
    fec: int = 0
    """Lost frames rebuilt from the next packet's FEC data."""
    concealed: int = 0
    """Lost frames concealed."""
    late: int = 0
    """Packets dropped because their place was already written."""
    duplicates: int = 0
    """Packets received twice."""
    reanchors: int = 0
    """Talk spurts placed anew because the arrival estimate moved."""
    decode_errors: int = 0
    """Packets libopus refused (concealed instead)."""


class Track:
    """Places one flow's Opus packets on the timeline and decodes them in order."""

    def __init__(self, user: str, decoder: OpusDecoder | None = None) -> None:
        self.user = user
        self.decoder = decoder if decoder is not None else OpusDecoder()
        self.stats = TrackStats()
        self._packets: dict[int, tuple[int, bytes]] = {}
        self._highest_seq: int | None = None
        self._highest_ts = 0
        self._base_ts = 0
        self._transits: collections.deque[float] = collections.deque(maxlen=TRANSIT_WINDOW)
        self._offset: int | None = None
        self._last_seq: int | None = None
        self._last_ts = 0
        self._last_frame = -1
        """Timeline frame of the last frame produced (-1: none yet)."""

    @property
    def started(self) -> bool:
        """Whether a packet has been placed."""
        return self._offset is not None

    @property
    def last_frame(self) -> int:
        """The last timeline frame this track produced, or -1."""
        return self._last_frame

    def add(
        self,
        seq: int,
        ts: int,
        payload: bytes,
        arrival: float | None,
        fallback: float | None = None,
    ) -> None:
        """Take in one packet; ``arrival`` is its arrival in timeline frames, None if unsure.

        ``fallback`` is a later estimate of the arrival, used only to place a first packet
        that has no sure arrival time.
        """
        if self._highest_seq is None:
            self._highest_seq, self._highest_ts, self._base_ts = seq, ts, ts
        else:
            seq = unwrap(seq, self._highest_seq, 16)
            ts = unwrap(ts, self._highest_ts, 32)
            if abs(seq - self._highest_seq) > _RESYNC_DISTANCE:
                # The sender started a new stream on this flow: place it from scratch.
                self._resync(seq, ts)
            self._highest_seq = max(self._highest_seq, seq)
            self._highest_ts = max(self._highest_ts, ts)
        if self._last_seq is not None and seq <= self._last_seq:
            self.stats.late += 1
            return
        if seq in self._packets:
            self.stats.duplicates += 1
            return
        media = (ts - self._base_ts) / FRAME_SAMPLES
        if arrival is not None:
            self._transits.append(arrival - media)
        if self._offset is None:
            if self._transits:
                self._offset = math.ceil(min(self._transits) - 0.5)
            elif fallback is not None:
                self._offset = math.ceil(fallback - media - 0.5)
            else:
                return
        self._packets[seq] = (ts, payload)
        self.stats.packets += 1
        if len(self._packets) > MAX_PENDING:
            oldest = min(self._packets)
            del self._packets[oldest]
            self.stats.late += 1

    def _resync(self, seq: int, ts: int) -> None:
        self._packets.clear()
        self._transits.clear()
        self._highest_seq, self._highest_ts, self._base_ts = seq, ts, ts
        self._offset = None
        self._last_seq = None

    def _place(self, ts: int) -> int:
        assert self._offset is not None
        return (ts - self._base_ts) // FRAME_SAMPLES + self._offset

    def render(self, horizon: int) -> list[tuple[int, bytes]]:
        """Decode every packet placed before frame ``horizon``: a list of ``(frame, pcm)``.

        Frames come in increasing order; frames between them are silence. A list, not a
        generator: a caller that stopped reading half-way would leave the track's state
        behind the packets already taken out of it.
        """
        out: list[tuple[int, bytes]] = []
        packets = self._packets
        while packets:
            seq = min(packets)
            ts, payload = packets[seq]
            spurt = self._last_seq is None or ts - self._last_ts > FRAME_SAMPLES
            if spurt:
                self._maybe_reanchor()
            frame = self._place(ts)
            if frame <= self._last_frame:
                # The sender's clock went back: shift the rest of the stage turn after what
                # is already written.
                assert self._offset is not None
                self._offset += self._last_frame + 1 - frame
                frame = self._last_frame + 1
            if frame >= horizon:
                break
            del packets[seq]
            out.extend(self._recover(seq, ts, payload, frame))
            out.append((frame, self._decode(payload)))
            self.stats.frames += 1
            self._last_seq, self._last_ts, self._last_frame = seq, ts, frame
        return out

    def flush(self) -> list[tuple[int, bytes]]:
        """Decode everything still held (the track ends)."""
        return self.render(2**62)

    def _maybe_reanchor(self) -> None:
        if not self._transits or self._offset is None:
            return
        estimate = math.ceil(min(self._transits) - 0.5)
        if abs(estimate - self._offset) >= REANCHOR_FRAMES:
            self._offset = estimate
            self.stats.reanchors += 1

    def _recover(
        self, seq: int, ts: int, payload: bytes, frame: int
    ) -> Iterator[tuple[int, bytes]]:
        """Frames standing in for packets lost between the last one and this one."""
        if self._last_seq is None:
            return
        missing = seq - self._last_seq - 1
        slots = min(frame - self._last_frame - 1, (ts - self._last_ts) // FRAME_SAMPLES - 1)
        if missing <= 0 or slots <= 0:
            return  # contiguous, or a DTX gap: silence
        lost = min(missing, slots)
        decoder = self.decoder
        for index in range(min(lost - 1, MAX_CONCEALED)):
            yield self._last_frame + 1 + index, self._safely(decoder.conceal)
            self.stats.concealed += 1
        try:
            pcm = decoder.decode_fec(payload)
        except CodecError:
            self.stats.decode_errors += 1
            return
        yield frame - 1, pcm
        self.stats.fec += 1

    def _decode(self, payload: bytes) -> bytes:
        try:
            return self.decoder.decode(payload)
        except CodecError:
            self.stats.decode_errors += 1
            return self._safely(self.decoder.conceal)

    @staticmethod
    def _safely(make: Callable[[], bytes]) -> bytes:
        try:
            return make()
        except CodecError:
            return bytes(2 * FRAME_SAMPLES)
