"""The adaptive jitter buffer, driven with packets at chosen arrival times (no clock, no I/O)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from salon.media.jitter import MAX_CONCEALED_RUN, Frame, FrameKind, JitterBuffer

FRAME = 960
TICK = 0.020

Packet = tuple[int, int, bytes, float]  # seq, timestamp, payload, arrival


def payload(seq: int) -> bytes:
    return b"p%d" % seq


def stream(
    count: int,
    *,
    first: int = 0,
    seq0: int = 0,
    ts0: int = 0,
    start: float = 0.0,
    transit: Callable[[int], float] = lambda index: 0.030,
) -> list[Packet]:
    """``count`` packets sent every 20 ms from ``start``, the i-th after ``transit(i)``."""
    packets = []
    for i in range(first, first + count):
        seq = (seq0 + i) & 0xFFFF
        ts = (ts0 + i * FRAME) & 0xFFFFFFFF
        packets.append((seq, ts, payload(seq0 + i), start + i * TICK + transit(i)))
    return packets


class Player:
    """Delivers packets at their arrival times and pops the buffer every 20 ms."""

    def __init__(self, buffer: JitterBuffer, packets: list[Packet], start: float = 0.0):
        self.buffer = buffer
        self.pending = sorted(packets, key=lambda packet: packet[3])
        self.index = 0
        self.start = start
        self.step = 0
        self.frames: list[tuple[float, Frame | None]] = []

    def run(self, until: float) -> list[tuple[float, Frame | None]]:
        frames = []
        while (now := self.start + self.step * TICK) < until:
            while self.index < len(self.pending) and self.pending[self.index][3] <= now:
                self.buffer.add(*self.pending[self.index])
                self.index += 1
            frames.append((now, self.buffer.pop(now)))
            self.step += 1
        self.frames += frames
        return frames


def play(
    buffer: JitterBuffer, packets: list[Packet], until: float
) -> list[tuple[float, Frame | None]]:
    return Player(buffer, packets).run(until)


def fixed(delay: float = 0.060) -> JitterBuffer:
    """A buffer that keeps one delay, for tests about order rather than adaptation."""
    return JitterBuffer(initial_delay=delay, min_delay=delay, max_delay=delay)


def talkspurt(frames: list[tuple[float, Frame | None]]) -> list[Frame]:
    """The frames from the first played one to the last audio one (the stream's end, where
    the buffer cannot tell a pause from loss and conceals briefly, is left out)."""
    played = [frame for _, frame in frames if frame is not None]
    last = max(i for i, frame in enumerate(played) if frame.kind is FrameKind.AUDIO)
    return played[: last + 1]


def kinds(frames: list[tuple[float, Frame | None]]) -> list[str]:
    return ["-" if frame is None else frame.kind.value for _, frame in frames]


def audio_payloads(frames: list[tuple[float, Frame | None]]) -> list[bytes]:
    return [
        frame.payload
        for _, frame in frames
        if frame is not None and frame.kind is FrameKind.AUDIO and frame.payload is not None
    ]


def test_plays_in_order_after_the_initial_delay():
    buffer = JitterBuffer()
    frames = play(buffer, stream(50), until=1.2)
    # The first packet arrives at 30 ms and waits the initial 40 ms, to the nearest call.
    first = next(now for now, frame in frames if frame is not None)
    assert first == pytest.approx(0.060, abs=1e-9)
    assert [frame.kind for frame in talkspurt(frames)] == [FrameKind.AUDIO] * 50
    assert audio_payloads(frames) == [payload(i) for i in range(50)]
    stats = buffer.stats()
    assert (stats.received, stats.lost, stats.late) == (50, 0, 0)
    # No jitter: the buffer settles on the 20 ms floor.
    assert stats.target_delay == pytest.approx(0.020)
    assert stats.jitter == pytest.approx(0.0, abs=1e-9)


def test_reordered_packets_play_in_sequence():
    # 5 overtakes 4, 11 arrives after 12 and 13, all within the 60 ms of delay.
    swapped = {4: 0.055, 11: 0.075}
    packets = stream(30, transit=lambda i: swapped.get(i, 0.030))
    assert sorted(packets, key=lambda p: p[3])[4][0] == 5
    buffer = fixed()
    frames = play(buffer, packets, until=1.0)
    assert [frame.kind for frame in talkspurt(frames)] == [FrameKind.AUDIO] * 30
    assert audio_payloads(frames) == [payload(i) for i in range(30)]
    stats = buffer.stats()
    assert (stats.lost, stats.late) == (0, 0)


def test_late_packet_is_dropped_and_counted_and_fec_fills_its_slot():
    buffer = fixed()
    packets = stream(30, transit=lambda i: 0.200 if i == 10 else 0.030)
    frames = play(buffer, packets, until=1.0)
    played = [frame for _, frame in frames if frame is not None]
    slot = next(i for i, frame in enumerate(played) if frame.timestamp == 10 * FRAME)
    # Packet 11 is there when 10 is due: its FEC data rebuilds 10, then it plays itself.
    assert played[slot].kind is FrameKind.FEC
    assert played[slot].payload == payload(11)
    assert played[slot + 1].kind is FrameKind.AUDIO
    assert played[slot + 1].payload == payload(11)
    assert payload(10) not in audio_payloads(frames)
    stats = buffer.stats()
    assert (stats.late, stats.lost, stats.fec_recovered) == (1, 1, 1)


def test_burst_loss_is_concealed_then_rebuilt_from_fec():
    packets = [packet for packet in stream(30) if packet[0] not in (5, 6, 7)]
    buffer = JitterBuffer()
    frames = play(buffer, packets, until=1.0)
    played = talkspurt(frames)
    by_ts = {frame.timestamp // FRAME: frame for frame in played}
    assert by_ts[5].kind is FrameKind.CONCEAL
    assert by_ts[6].kind is FrameKind.CONCEAL
    assert by_ts[7].kind is FrameKind.FEC and by_ts[7].payload == payload(8)
    assert by_ts[8].kind is FrameKind.AUDIO and by_ts[8].payload == payload(8)
    assert [frame.timestamp // FRAME for frame in played] == list(range(30))
    stats = buffer.stats()
    assert (stats.lost, stats.fec_recovered, stats.late) == (3, 1, 0)


def test_sequence_and_timestamp_wraparound():
    seq0, ts0 = 65530, 2**32 - 3 * FRAME
    buffer = JitterBuffer()
    packets = stream(20, seq0=seq0, ts0=ts0, transit=lambda i: 0.050 if i == 6 else 0.030)
    frames = play(buffer, packets, until=0.6)
    assert audio_payloads(frames) == [payload(seq0 + i) for i in range(20)]
    stamps = [frame.timestamp for _, frame in frames if frame is not None][:20]
    assert stamps == [(ts0 + i * FRAME) & 0xFFFFFFFF for i in range(20)]
    stats = buffer.stats()
    assert (stats.lost, stats.late, stats.resyncs) == (0, 0, 0)


def test_dtx_gap_plays_as_silence_not_loss():
    # 20 frames of speech, then the sender stops for 25 frames (DTX) and resumes: sequence
    # numbers stay contiguous, timestamps jump.
    talk = stream(20)
    resumed = stream(10, first=45)
    resumed = [
        (20 + i, ts, payload(20 + i), arrival) for i, (_, ts, _, arrival) in enumerate(resumed)
    ]
    buffer = fixed()
    frames = play(buffer, talk + resumed, until=1.5)
    played = [frame for _, frame in frames if frame is not None]
    audio = [frame for frame in played if frame.kind is FrameKind.AUDIO]
    assert [frame.payload for frame in audio] == [payload(i) for i in range(30)]
    # Each packet plays at its own media time: the gap is exactly 25 frames of filler.
    assert audio[20].timestamp == 45 * FRAME
    first_after = played.index(audio[20])
    gap = played[first_after - 25 : first_after]
    assert all(frame.kind in (FrameKind.CONCEAL, FrameKind.SILENCE) for frame in gap)
    assert played[first_after - 26] is audio[19]
    assert buffer.stats().lost == 0
    # Until a packet proves it was DTX the end of speech is concealed, but only briefly.
    concealed = [frame for frame in gap if frame.kind is FrameKind.CONCEAL]
    assert len(concealed) == MAX_CONCEALED_RUN


def test_known_dtx_gap_is_silence_right_away():
    # A one-frame DTX gap: the packet after it is already buffered when the gap is due.
    packets = [
        (seq, ts if seq < 10 else ts + FRAME, data, arrival if seq < 10 else arrival + TICK)
        for seq, ts, data, arrival in stream(20)
    ]
    buffer = fixed()
    frames = play(buffer, packets, until=0.8)
    expected = [FrameKind.AUDIO] * 10 + [FrameKind.SILENCE] + [FrameKind.AUDIO] * 10
    assert [frame.kind for frame in talkspurt(frames)] == expected
    assert buffer.stats().lost == 0


def test_adapts_up_to_jitter_and_back_down():
    rng = random.Random(7)
    jitter_from, jitter_until = 100, 400  # packets sent between 2 s and 8 s see 0..80 ms jitter

    def transit(i: int) -> float:
        return 0.030 + (rng.uniform(0.0, 0.080) if jitter_from <= i < jitter_until else 0.0)

    buffer = JitterBuffer()
    player = Player(buffer, stream(1000, transit=transit))
    samples: dict[str, tuple[float, float, int]] = {}
    late_before = 0
    for name, until in (("calm", 2.0), ("settling", 5.0), ("jittery", 8.0), ("recovered", 20.0)):
        player.run(until)
        stats = buffer.stats()
        samples[name] = (stats.target_delay, stats.delay, stats.late - late_before)
        late_before = stats.late

    calm_target, calm_delay, calm_late = samples["calm"]
    assert calm_target == pytest.approx(0.020)
    # It started within half a frame of the initial 40 ms and stays within the dead band.
    assert calm_delay == pytest.approx(calm_target, abs=0.011)
    assert calm_late == 0

    jittery_target, jittery_delay, jittery_late = samples["jittery"]
    assert 0.070 <= jittery_target <= 0.100
    assert abs(jittery_delay - jittery_target) <= 0.025
    # Once adapted, at most a few of the 150 packets of the last 3 jittery seconds come late.
    assert jittery_late <= 5

    recovered_target, recovered_delay, _ = samples["recovered"]
    assert recovered_target == pytest.approx(0.020)
    # A steady tone has no pause to skip: the buffer drops audio frames, one per second, until
    # the excess is under two frames.
    assert recovered_delay <= recovered_target + 0.041

    stats = buffer.stats()
    assert stats.expanded > 0
    assert stats.compressed > 0


def test_delay_drops_in_silence_without_discarding_speech():
    rng = random.Random(3)
    # Talkspurts of 1 s separated by 0.5 s DTX gaps; jitter only during the first 3 s.
    packets: list[Packet] = []
    seq = 0
    for burst in range(12):
        for i in range(50):
            media = burst * 1.5 + i * TICK
            jitter = rng.uniform(0.0, 0.100) if media < 3.0 else 0.0
            packets.append((seq, round(media * 48000), payload(seq), media + 0.030 + jitter))
            seq += 1
    buffer = JitterBuffer()
    player = Player(buffer, packets)
    player.run(3.5)
    jittery = buffer.stats()
    assert jittery.target_delay > 0.080
    player.run(18.0)
    stats = buffer.stats()
    assert stats.target_delay == pytest.approx(0.020)
    assert stats.delay == pytest.approx(0.020, abs=0.011)
    assert stats.compressed > 0
    assert stats.discarded == 0
    # Nothing lost or late once the jitter was gone.
    assert (stats.lost, stats.late) == (jittery.lost, jittery.late)


def test_idle_stream_stops_and_resumes():
    buffer = JitterBuffer()
    first = stream(10)
    # The speaker mutes for 3 s, then talks again (contiguous sequence numbers).
    later = [
        (10 + i, ts, payload(10 + i), arrival)
        for i, (_, ts, _, arrival) in enumerate(stream(10, first=160))
    ]
    frames = play(buffer, first + later, until=4.0)
    quiet = [frame for now, frame in frames if 2.0 < now < 3.2]
    assert quiet and all(frame is None for frame in quiet)
    assert audio_payloads(frames) == [payload(i) for i in range(20)]
    assert buffer.stats().lost == 0


def test_duplicates_are_ignored():
    packets = stream(10)
    buffer = JitterBuffer()
    frames = play(buffer, [*packets, packets[3], packets[4]], until=0.5)
    assert audio_payloads(frames) == [payload(i) for i in range(10)]
    assert buffer.stats().duplicates == 2


def test_sequence_jump_resynchronises():
    buffer = JitterBuffer()
    before = stream(10)
    after = stream(10, seq0=30000, ts0=123456, start=0.3)
    frames = play(buffer, before + after, until=1.0)
    assert audio_payloads(frames) == [payload(i) for i in range(10)] + [
        payload(30000 + i) for i in range(10)
    ]
    assert buffer.stats().resyncs == 1


def test_sender_clock_pausing_during_silence_restarts_playout():
    # A sender that stops its media clock while muted: after 0.4 s of nothing, the packets go
    # on with contiguous sequence numbers *and* timestamps, so they are "behind" playout.
    before = stream(20)
    after = [(seq, ts, data, arrival + 0.4) for seq, ts, data, arrival in stream(20, first=20)]
    buffer = JitterBuffer()
    frames = play(buffer, before + after, until=1.5)
    assert audio_payloads(frames) == [payload(i) for i in range(40)]
    stats = buffer.stats()
    assert (stats.late, stats.lost, stats.restarts) == (0, 0, 1)
    assert stats.target_delay == pytest.approx(0.020)  # not mistaken for 400 ms of jitter


def test_a_floor_raised_in_speech_waits_for_the_next_pause():
    """set_min_delay during speech (a receiver starting to wait for redundancy copies): the
    extra frames go into the next pause as silence rather than into speech as concealment,
    unless no pause comes within ``floor_patience``."""

    def speech(pause_at: float | None) -> list[Packet]:
        packets: list[Packet] = []
        for i in range(250):  # 5 s of frames, with a 0.4 s DTX gap at `pause_at`
            media = i * TICK
            if pause_at is not None and pause_at <= media < pause_at + 0.4:
                continue
            packets.append((len(packets), round(media * 48000), payload(i), media + 0.030))
        return packets

    for pause_at, patience in ((1.6, 2.0), (None, 1.0)):
        buffer = JitterBuffer(floor_patience=patience)
        player = Player(buffer, speech(pause_at))
        player.run(1.0)
        assert buffer.stats().delay == pytest.approx(0.020, abs=0.011)
        buffer.set_min_delay(0.100)
        frames = player.run(5.0)
        stats = buffer.stats()
        assert stats.delay == pytest.approx(0.100, abs=0.011)
        assert stats.expanded >= 3
        concealed = [now for now, frame in frames if frame and frame.kind is FrameKind.CONCEAL]
        if pause_at is not None:
            # All of it went into the pause, as silence; what is concealed is the pause's
            # start, before the next packet shows it was DTX (as without the raise).
            assert len(concealed) <= MAX_CONCEALED_RUN
            assert all(pause_at <= now < pause_at + 0.4 for now in concealed), concealed
        else:
            # No pause: after the patience it goes into speech after all, not before.
            assert concealed and min(concealed) >= 1.0 + patience - 1e-9
