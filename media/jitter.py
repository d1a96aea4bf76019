"""An adaptive jitter buffer for one speaker's 20 ms Opus packets, sans-I/O.

Packets go in with :meth:`JitterBuffer.add` as they arrive; the audio loop calls
:meth:`JitterBuffer.pop` once per 20 ms and gets one :class:`Frame` telling it what to play:
a packet to decode, the next packet whose FEC data rebuilds a lost one, a concealment frame, or
silence. The clock is always passed in, as in aioquic's ``QuicConnection``.

Playout delay adapts to the network, in the spirit of WebRTC's NetEq but without time
stretching: each packet's transit time (arrival minus media time) is recorded over a window;
its spread above the fastest packet, at the 97th percentile plus 10 ms of headroom, is the target
delay, clamped to 20..200 ms. The buffer tracks its actual delay (how long the fastest packets
wait before playing) and moves it towards the target by whole frames: it inserts a concealment
or silence frame to wait longer, and to catch up it skips silence (DTX gaps) at once, or,
when there is no silence to skip and two frames of excess persist, drops one audio frame at
most every second.

RTP details handled here: sequence numbers and timestamps wrap around (both are unwrapped to
unbounded integers with the wire helpers), packets arrive out of order, packets arriving after
their playout slot are dropped and counted as late, and a timestamp jump across contiguous
sequence numbers is a DTX gap the sender chose not to fill: it plays as silence, not as loss.
When nothing arrives for ``idle_timeout`` (a muted speaker), :meth:`JitterBuffer.pop` returns
None until packets come back, and playout then starts afresh.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from salon.daemon.wire.rtp import FRAME_SAMPLES, OPUS_CLOCK_RATE

from .timeline import unwrap

DEFAULT_INITIAL_DELAY = 0.040
DEFAULT_MIN_DELAY = 0.020
DEFAULT_MAX_DELAY = 0.200
# After this many concealed frames in a row, concealment gives way to silence: Opus PLC turns
# into an audible buzz when stretched over a long outage.
MAX_CONCEALED_RUN = 5
# A sequence number this far from the playout point is a new stream, not a reordered packet.
_RESYNC_DISTANCE = 3000
# This many late packets in a row means the playout point is wrong (the sender's clock jumped).
_RESYNC_LATE = 50
_MAX_PACKETS = 500
# Slack in delay comparisons, so that timer jitter and float rounding do not trigger a change.
_TOLERANCE = 0.001
# Transit samples needed before the measured jitter may bring the delay below the initial one.
_MIN_SAMPLES = 10


class FrameKind(str, enum.Enum):
    """What the audio loop should do for one 20 ms slot."""

    AUDIO = "audio"
    """Decode :attr:`Frame.payload`."""
    FEC = "fec"
    """The slot's packet was lost; :attr:`Frame.payload` is the next packet: decode its FEC."""
    CONCEAL = "conceal"
    """Nothing to play in time during speech: run the decoder's loss concealment."""
    SILENCE = "silence"
    """A DTX gap or an idle stream: play silence."""


@dataclass
class Frame:
    """One slot of playout."""

    kind: FrameKind
    """What to do with the slot."""
    payload: bytes | None = None
    """The Opus packet to decode (AUDIO) or whose FEC to decode (FEC); None otherwise."""
    timestamp: int = 0
    """RTP timestamp of the slot."""


@dataclass
class JitterStats:
    """Counters and delays of one jitter buffer."""

    received: int = 0
    """Packets accepted into the buffer."""
    duplicates: int = 0
    """Packets already buffered."""
    late: int = 0
    """Packets dropped because their playout slot had passed (on arrival or while buffered)."""
    lost: int = 0
    """Slots whose packet never arrived (FEC-recovered or concealed)."""
    fec_recovered: int = 0
    """Lost slots rebuilt from the next packet's FEC data."""
    concealed: int = 0
    """Frames played as loss concealment (lost, late or waiting for the network)."""
    expanded: int = 0
    """Frames inserted to raise the delay."""
    compressed: int = 0
    """Frames skipped to lower the delay (silence, or audio when there was no silence)."""
    discarded: int = 0
    """Audio packets dropped to lower the delay (part of ``compressed``)."""
    redundancy_filled: int = 0
    """Gaps filled by an earlier frame carried in a later RED packet (before their slot)."""
    resyncs: int = 0
    """Times the buffer started over after a jump in sequence numbers or many late packets."""
    restarts: int = 0
    """Times playout restarted after silence because the sender's timestamps went back."""
    delay: float = 0.0
    """Current playout delay in seconds (how long the fastest packets wait)."""
    target_delay: float = 0.0
    """Delay the buffer is moving towards, in seconds."""
    jitter: float = 0.0
    """Measured transit time spread (at the buffer's percentile) in seconds."""


@dataclass
class _Packet:
    sequence_number: int  # unwrapped
    timestamp: int  # unwrapped
    payload: bytes
    arrival: float


class JitterBuffer:
    """Reorders, times and classifies one speaker's packets for playout."""

    def __init__(
        self,
        *,
        clock_rate: int = OPUS_CLOCK_RATE,
        frame_samples: int = FRAME_SAMPLES,
        initial_delay: float = DEFAULT_INITIAL_DELAY,
        min_delay: float = DEFAULT_MIN_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        percentile: float = 0.97,
        headroom: float = 0.010,
        window: int = 250,
        accelerate_interval: float = 1.0,
        idle_timeout: float = 1.0,
        floor_patience: float = 2.0,
    ) -> None:
        self.clock_rate = clock_rate
        self.initial_delay = initial_delay
        self.frame_samples = frame_samples
        self.frame_duration = frame_samples / clock_rate
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.percentile = percentile
        self.headroom = headroom
        self.accelerate_interval = accelerate_interval
        self.idle_timeout = idle_timeout
        self.floor_patience = floor_patience
        self._target = min(max(initial_delay, min_delay), max_delay)
        # The target the network alone asks for (without the floor of `set_min_delay`).
        self._network_target = self._target
        self._short_since = float("inf")
        self._jitter = 0.0
        # Transit times (arrival - media time) of the last `window` packets, relative to the
        # stream's first timestamp so the floats stay small.
        self._transits: deque[float] = deque(maxlen=window)
        self._min_transit = 0.0
        self._packets: dict[int, _Packet] = {}
        self._highest_seq: int | None = None
        self._highest_ts = 0
        self._base_ts = 0
        self._last_arrival = 0.0
        self._started = False
        self._next_seq = 0
        self._next_ts = 0
        self._played_seq: int | None = None
        self._offset = 0.0
        self._talking = False
        self._concealed_run = 0
        self._late_run = 0
        self._last_accelerate = float("-inf")
        self._excess_since = float("inf")
        self._stats = JitterStats()

    # ------------------------------------------------------------------ input

    def add(self, sequence_number: int, timestamp: int, payload: bytes, arrival: float) -> None:
        """Take in one packet that arrived at ``arrival`` (seconds, same clock as ``pop``)."""
        if self._highest_seq is not None:
            seq = unwrap(sequence_number, self._highest_seq, 16)
            ts = unwrap(timestamp, self._highest_ts, 32)
            reference = self._next_seq if self._started else self._highest_seq
            if abs(seq - reference) > _RESYNC_DISTANCE:
                self._resync()
            else:
                self._highest_seq = max(self._highest_seq, seq)
                self._highest_ts = max(self._highest_ts, ts)
        if self._highest_seq is None:
            self._highest_seq = seq = sequence_number
            self._highest_ts = self._base_ts = ts = timestamp

        stats = self._stats
        if seq in self._packets:
            stats.duplicates += 1
            return
        late = (self._played_seq is not None and seq <= self._played_seq) or (
            self._started and (seq < self._next_seq or ts < self._next_ts)
        )
        if late and seq >= self._next_seq and not self._talking and not self._packets:
            # The next packet in sequence, but with a timestamp already played, while we play
            # silence: the sender's media clock stood still (e.g. while it was muted). Start
            # playout afresh from it; its transit times are no longer comparable to the old.
            self._started = False
            self._transits.clear()
            self._stats.restarts += 1
            late = False
        self._record_transit(arrival - (ts - self._base_ts) / self.clock_rate)
        self._last_arrival = max(self._last_arrival, arrival)
        if late:
            stats.late += 1
            if self._started and seq >= self._next_seq:
                # Its slot went by while we waited (concealed): what precedes it is late too.
                self._next_seq = seq + 1
            self._late_run += 1
            if self._late_run >= _RESYNC_LATE:
                self._resync()
            return
        self._late_run = 0
        stats.received += 1
        self._packets[seq] = _Packet(seq, ts, payload, arrival)
        if len(self._packets) > _MAX_PACKETS:
            del self._packets[min(self._packets)]

    def add_redundant(self, sequence_number: int, timestamp: int, payload: bytes) -> bool:
        """Take in an earlier frame carried again in a RED packet (RFC 2198); call it after
        :meth:`add` of the packet that carried it.

        It fills the slot of packet ``sequence_number`` if that packet is neither buffered nor
        played yet; otherwise it is ignored. Return whether it filled a gap. Its arrival says
        nothing about the network, so no transit time is recorded.
        """
        if self._highest_seq is None:
            return False
        seq = unwrap(sequence_number, self._highest_seq, 16)
        ts = unwrap(timestamp, self._highest_ts, 32)
        if seq in self._packets or seq > self._highest_seq:
            return False
        if (self._played_seq is not None and seq <= self._played_seq) or (
            self._started and (seq < self._next_seq or ts < self._next_ts)
        ):
            return False
        self._packets[seq] = _Packet(seq, ts, payload, self._last_arrival)
        self._stats.redundancy_filled += 1
        return True

    def set_min_delay(self, delay: float) -> None:
        """Never play with less delay than ``delay`` seconds (capped at the maximum).

        Redundancy repairs a loss only if the packet carrying the copy arrives before the lost
        frame's slot: with copies up to ``k`` packets later, the floor is ``k`` frames more.
        A floor raised during speech is reached in the next pause, where the frames it takes
        are silence, or after ``floor_patience`` seconds without one: inserted in speech they
        would be concealment, as audible as lost frames, and packets are not late meanwhile.
        """
        self.min_delay = min(delay, self.max_delay)
        self._target = min(max(self._target, self.min_delay), self.max_delay)

    def _record_transit(self, transit: float) -> None:
        transits = self._transits
        transits.append(transit)
        ordered = sorted(transits)
        self._min_transit = ordered[0]
        index = min(len(ordered) - 1, int(self.percentile * len(ordered)))
        self._jitter = ordered[index] - self._min_transit
        target = self._jitter + self.headroom
        if len(ordered) < _MIN_SAMPLES:
            # Too few packets to judge the network: do not go below the initial delay yet.
            target = max(target, self.initial_delay)
        self._network_target = min(target, self.max_delay)
        self._target = min(max(target, self.min_delay), self.max_delay)

    def _resync(self) -> None:
        self._packets.clear()
        self._transits.clear()
        self._highest_seq = None
        self._started = False
        self._played_seq = None
        self._talking = False
        self._concealed_run = 0
        self._late_run = 0
        self._stats.resyncs += 1

    # ------------------------------------------------------------------ output

    @property
    def target_delay(self) -> float:
        """Delay the buffer is moving towards, in seconds."""
        return self._target

    @property
    def delay(self) -> float:
        """Current playout delay in seconds: how long the fastest packets wait."""
        if not self._started:
            return self._target
        return self._offset - self._min_transit

    @property
    def playing(self) -> bool:
        """Whether playout has started (False before the first packet and when idle)."""
        return self._started

    def __len__(self) -> int:
        return len(self._packets)

    def stats(self) -> JitterStats:
        """A snapshot of the counters and delays."""
        snapshot = JitterStats(**vars(self._stats))
        snapshot.delay = self.delay
        snapshot.target_delay = self._target
        snapshot.jitter = self._jitter
        return snapshot

    def pop(self, now: float) -> Frame | None:
        """The frame to play at ``now``; None while there is nothing to play at all.

        Call it once per frame duration (20 ms).
        """
        if not self._started:
            if not self._start(now):
                return None
        elif (
            not self._packets and not self._talking and now - self._last_arrival > self.idle_timeout
        ):
            # The speaker went quiet (muted, left the stage): stop producing frames; the next
            # packet starts playout afresh, with the delay learnt so far.
            self._started = False
            return None
        else:
            sample = now - self._media_time(self._next_ts)
            self._offset += 0.1 * (sample - self._offset)

        self._drop_stale()
        excess = self.delay - self._target
        if excess < 2 * self.frame_duration - _TOLERANCE:
            self._excess_since = float("inf")
        elif self._excess_since == float("inf"):
            self._excess_since = now
        if excess < -self.frame_duration / 2 - _TOLERANCE:
            if not self._waits_for_pause(now):
                # Wait one frame longer: the slot is played again on the next call.
                self._offset += self.frame_duration
                self._stats.expanded += 1
                return self._filler()
        else:
            self._short_since = float("inf")
        if excess > self.frame_duration + _TOLERANCE:
            self._compress(int(excess / self.frame_duration), now)
        return self._play()

    def _waits_for_pause(self, now: float) -> bool:
        """Whether to put off raising the delay to the next pause in speech: only a raise of
        the floor (the network's own target is met) during speech, for ``floor_patience``."""
        if not self._talking:
            return False
        if self.delay < self._network_target - self.frame_duration / 2 - _TOLERANCE:
            return False  # packets would come late: wait longer now
        if self._short_since == float("inf"):
            self._short_since = now
        return now - self._short_since < self.floor_patience

    def _media_time(self, ts: int) -> float:
        return (ts - self._base_ts) / self.clock_rate

    def _start(self, now: float) -> bool:
        if not self._packets:
            return False
        first = self._packets[min(self._packets)]
        # Start on the call nearest to the target (not the first after it), so that the delay
        # begins within half a frame of the target instead of up to a frame above it.
        if now + self.frame_duration / 2 + _TOLERANCE < first.arrival + self._target:
            return False
        self._started = True
        self._next_seq = first.sequence_number
        self._next_ts = first.timestamp
        self._offset = now - self._media_time(first.timestamp)
        self._talking = False
        self._concealed_run = 0
        return True

    def _drop_stale(self) -> None:
        for seq, packet in list(self._packets.items()):
            if seq < self._next_seq or packet.timestamp < self._next_ts:
                del self._packets[seq]
                self._stats.late += 1

    def _compress(self, frames: int, now: float) -> None:
        """Skip up to ``frames`` frames of silence, or one audio frame now and then.

        Dropping audio is audible, so it happens only after two frames of excess delay have
        lasted ``accelerate_interval`` without silence to skip (speech pauses usually come
        first), and at most once per interval; silence is skipped as soon as a frame is extra.
        """
        skipped = 0
        while skipped < frames:
            packet = self._packets.get(self._next_seq)
            if packet is not None and packet.timestamp > self._next_ts:
                gap = (packet.timestamp - self._next_ts) // self.frame_samples
                step = min(frames - skipped, gap)
            elif packet is None and not self._talking and not self._has_later_packet():
                step = frames - skipped
            else:
                break
            self._next_ts += step * self.frame_samples
            skipped += step
        if (
            skipped == 0
            and now - self._excess_since >= self.accelerate_interval
            and now - self._last_accelerate >= self.accelerate_interval
            and (packet := self._packets.get(self._next_seq)) is not None
            and packet.timestamp == self._next_ts
            and self._packets.get(self._next_seq + 1) is not None
        ):
            # No silence to skip: drop one audio frame. Only when the next packet is there, so
            # the drop is a splice of two real frames rather than a hole to conceal.
            del self._packets[self._next_seq]
            self._advance(played=self._next_seq)
            self._last_accelerate = now
            self._stats.discarded += 1
            skipped = 1
        self._offset -= skipped * self.frame_duration
        self._stats.compressed += skipped

    def _has_later_packet(self) -> bool:
        return any(seq > self._next_seq for seq in self._packets)

    def _advance(self, played: int | None = None) -> None:
        if played is not None:
            self._next_seq = played + 1
            self._played_seq = played
        self._next_ts += self.frame_samples

    def _play(self) -> Frame:
        slot_ts = self._next_ts & 0xFFFFFFFF
        packet = self._packets.get(self._next_seq)
        if packet is not None:
            if packet.timestamp == self._next_ts:
                del self._packets[self._next_seq]
                self._advance(played=packet.sequence_number)
                self._talking = True
                self._concealed_run = 0
                return Frame(FrameKind.AUDIO, packet.payload, slot_ts)
            # Contiguous sequence number, later timestamp: the sender is in DTX.
            self._advance()
            self._talking = False
            return Frame(FrameKind.SILENCE, None, slot_ts)

        later = [seq for seq in self._packets if seq > self._next_seq]
        if later:
            following = self._packets[min(later)]
            slots = (following.timestamp - self._next_ts) // self.frame_samples
            missing = following.sequence_number - self._next_seq
            # The missing packets' timestamps are at most those right before `following` (less
            # if a DTX gap sits between), so a packet is overdue once the playout point reaches
            # that bound. Those overdue before this slot were already filled while waiting.
            if slots <= missing:
                due = following.sequence_number - slots
                self._stats.lost += due - self._next_seq + 1
                self._advance(played=due)
                if slots == 1:
                    self._stats.fec_recovered += 1
                    self._talking = True
                    self._concealed_run = 0
                    return Frame(FrameKind.FEC, following.payload, slot_ts)
                return self._filler(slot_ts)
        # Nothing due yet: the packet is late or the sender is in DTX; time moves on.
        self._advance()
        return self._filler(slot_ts)

    def _filler(self, slot_ts: int | None = None) -> Frame:
        if slot_ts is None:
            slot_ts = self._next_ts & 0xFFFFFFFF
        if self._talking and self._concealed_run < MAX_CONCEALED_RUN:
            self._concealed_run += 1
            self._stats.concealed += 1
            return Frame(FrameKind.CONCEAL, None, slot_ts)
        self._talking = False
        return Frame(FrameKind.SILENCE, None, slot_ts)
