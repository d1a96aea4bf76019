"""The client's audio path end to end, sans-I/O: PCM -> Opus -> RTP -> SRTP -> datagram and back.

Real libopus and libsrtp. The network is simulated by handing each datagram to the receiver at
a computed arrival time (loss, jitter and the reordering it causes), while the receiver is
pulled every 20 ms like an audio device would.
"""

from __future__ import annotations

import base64
import itertools
import os
import random
from dataclasses import dataclass, field

import numpy as np
import pytest

from salon.client.audiofile import frames
from salon.daemon.wire.datagram import pack_datagram, unpack_datagram
from salon.daemon.wire.rtp import (
    AUDIO_LEVEL_EXTENSION_ID,
    OPUS_PAYLOAD_TYPE,
    RtpPacket,
    peek_media,
)
from salon.media.codec import OpusEncoder
from salon.media.mixer import mix, mix_arrays
from salon.media.packetizer import RtpPacketizer
from salon.media.srtp import (
    AUTH_TAG_LENGTH,
    KEY_LENGTH,
    SrtpError,
    SrtpReceiver,
    SrtpSender,
    key_from_base64,
    key_to_base64,
)
from salon.media.streams import MediaReceiver, MediaSender

RATE = 48000
FRAME = 960
TICK = 0.020


def new_key() -> str:
    return base64.b64encode(os.urandom(KEY_LENGTH)).decode()


def source(seconds: float = 4.0, frequencies=(440.0, 1200.0)) -> np.ndarray:
    """Tones under a slow envelope: the envelope makes the alignment with the output unique
    (the two tones alone repeat every 25 ms)."""
    t = np.arange(int(RATE * seconds)) / RATE
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t)
    amplitudes = (0.3, 0.2)[: len(frequencies)]
    signal = sum(
        a * np.sin(2 * np.pi * f * t) for a, f in zip(amplitudes, frequencies, strict=True)
    )
    return (envelope * signal * 32767).astype(np.int16)


def dominant_frequencies(samples: np.ndarray, count: int = 2) -> list[float]:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    peaks: list[float] = []
    for index in np.argsort(spectrum)[::-1]:
        if all(abs(freqs[index] - peak) > 50 for peak in peaks):
            peaks.append(float(freqs[index]))
        if len(peaks) == count:
            break
    return sorted(peaks)


def best_lag(output: np.ndarray, reference: np.ndarray, max_lag: float = 0.5) -> int:
    """The delay (in samples) at which ``reference`` best matches ``output``."""
    size = 1 << (len(output) + len(reference)).bit_length()
    spectrum = np.fft.rfft(output.astype(np.float64), size) * np.conj(
        np.fft.rfft(reference.astype(np.float64), size)
    )
    correlation = np.fft.irfft(spectrum, size)
    return int(np.argmax(correlation[: int(max_lag * RATE)]))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def aligned_correlation(output: np.ndarray, reference: np.ndarray, skip: float = 0.2) -> float:
    """Correlation with the reference after one global alignment; the decoder's first
    ``skip`` seconds (codec warm-up) are left out."""
    lag = best_lag(output, reference)
    start = int(skip * RATE)
    length = min(len(reference), len(output) - lag) - start
    return correlation(
        output[lag + start : lag + start + length], reference[start : start + length]
    )


def block_correlations(
    output: np.ndarray, reference: np.ndarray, block: float = 0.2, slack: float = 0.030
) -> list[float]:
    """Correlation of each ``block`` of the reference with the output, each block aligned
    within ``slack`` of the global alignment: the jitter buffer moves playout by whole frames
    when it adapts, which a single global alignment would count as distortion."""
    lag = best_lag(output, reference)
    size, margin = int(block * RATE), int(slack * RATE)
    results = []
    for start in range(int(0.2 * RATE), len(reference) - size, size):
        ref = reference[start : start + size].astype(np.float64)
        lo = max(0, start + lag - margin)
        segment = output[lo : start + lag + margin + size].astype(np.float64)
        if len(segment) < size:
            break
        dots = np.correlate(segment, ref, "valid")
        energies = np.convolve(segment**2, np.ones(size), "valid") * np.dot(ref, ref)
        results.append(float(np.max(dots / np.sqrt(np.maximum(energies, 1e-9)))))
    return results


@dataclass
class Link:
    """One speaker's media over a simulated network into a receiver."""

    loss: float = 0.0
    jitter: float = 0.0
    base_delay: float = 0.030
    seed: int = 1
    expected_loss: int = 0
    sent: int = 0
    dropped: int = 0
    arrivals: list[tuple[float, bytes]] = field(default_factory=list)

    def send(self, sender: MediaSender, samples: np.ndarray, start: float = 0.0) -> None:
        rng = random.Random(self.seed)
        for index, frame in enumerate(frames(samples)):
            datagram = sender.send_pcm(frame)
            if datagram is None:
                continue
            self.sent += 1
            if rng.random() < self.loss:
                self.dropped += 1
                continue
            delay = self.base_delay + rng.uniform(0.0, self.jitter)
            self.arrivals.append((start + index * TICK + delay, datagram))

    def reordered(self) -> int:
        """How many datagrams arrive before one sent earlier."""
        arrivals = [arrival for arrival, _ in self.arrivals]
        return sum(1 for a, b in itertools.pairwise(arrivals) if b < a)


def run_receiver(
    receiver: MediaReceiver, arrivals: list[tuple[float, bytes]], seconds: float
) -> tuple[np.ndarray, list[dict[str, int]]]:
    """Deliver datagrams at their arrival times, pull every 20 ms; return audio and levels."""
    pending = sorted(arrivals, key=lambda item: item[0])
    output, levels = [], []
    index = 0
    for step in range(int(seconds / TICK)):
        now = step * TICK
        while index < len(pending) and pending[index][0] <= now:
            receiver.receive(pending[index][1], now)
            index += 1
        pcm, frame_levels = receiver.pull(now)
        assert len(pcm) == 2 * FRAME
        output.append(pcm)
        levels.append(frame_levels)
    return np.frombuffer(b"".join(output), dtype=np.int16), levels


def one_speaker(link: Link, samples: np.ndarray) -> tuple[np.ndarray, MediaReceiver]:
    key = new_key()
    sender = MediaSender(5, 0x1234ABCD, key, OpusEncoder(expected_loss=link.expected_loss))
    receiver = MediaReceiver()
    receiver.add_speaker("ada", 5, 0x1234ABCD, key)
    link.send(sender, samples)
    output, _ = run_receiver(receiver, link.arrivals, len(samples) / RATE + 0.5)
    return output, receiver


# --------------------------------------------------------------------------- end to end


def test_lossless_tone_comes_through():
    samples = source()
    link = Link()
    output, receiver = one_speaker(link, samples)
    assert dominant_frequencies(output) == pytest.approx([440, 1200], abs=5)
    # Measured 0.996 (Opus at 32 kbit/s is not transparent, but close on two tones).
    assert aligned_correlation(output, samples) > 0.95
    # Latency: 30 ms network + jitter buffer + 6.5 ms Opus look-ahead.
    assert best_lag(output, samples) / RATE < 0.100
    stats = receiver.jitter_stats()["ada"]
    assert (stats.received, stats.lost, stats.late) == (link.sent, 0, 0)
    assert receiver.stats.drops == {}


def test_tone_survives_loss_jitter_and_reordering():
    samples = source()
    link = Link(loss=0.05, jitter=0.040, seed=2, expected_loss=5)
    output, receiver = one_speaker(link, samples)
    assert link.dropped >= 5
    assert link.reordered() >= 10
    stats = receiver.jitter_stats()["ada"]
    assert stats.lost >= link.dropped
    assert stats.fec_recovered > 0
    assert receiver.stats.drops == {}
    assert dominant_frequencies(output) == pytest.approx([440, 1200], abs=5)
    # With 5% loss the FEC data and concealment keep the waveform: measured 0.98-0.99 after a
    # global alignment (seeds 1-3), 0.95-0.98 without FEC. 0.9 leaves room for a different
    # loss pattern, but not for audible damage.
    assert aligned_correlation(output, samples) > 0.9
    blocks = block_correlations(output, samples)
    assert np.median(blocks) > 0.98
    assert min(blocks) > 0.8


def test_two_speakers_are_mixed_and_both_audible():
    receiver = MediaReceiver()
    arrivals = []
    for user, flow_id, ssrc, frequency, seed in (
        ("ada", 1, 111, 440.0, 1),
        ("bob", 2, 222, 1200.0, 2),
    ):
        key = new_key()
        receiver.add_speaker(user, flow_id, ssrc, key)
        sender = MediaSender(flow_id, ssrc, key, OpusEncoder())
        link = Link(jitter=0.020, seed=seed)
        link.send(sender, source(2.0, frequencies=(frequency,)))
        arrivals += link.arrivals
    output, levels = run_receiver(receiver, arrivals, 2.5)
    assert dominant_frequencies(output[RATE // 2 : 2 * RATE]) == pytest.approx([440, 1200], abs=5)
    spectrum = np.abs(np.fft.rfft(output[RATE // 2 : 2 * RATE].astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(RATE * 3 // 2, 1 / RATE)
    share_440 = spectrum[np.abs(freqs - 440) < 20].sum() / spectrum.sum()
    share_1200 = spectrum[np.abs(freqs - 1200) < 20].sum() / spectrum.sum()
    assert share_440 > 0.3 and share_1200 > 0.3
    assert set(levels[60]) == {"ada", "bob"}
    assert levels[60]["ada"] < 30 and levels[60]["bob"] < 30
    # After both stopped the levels fall back to silence.
    assert levels[-1] == {"ada": 127, "bob": 127}


def test_silence_is_not_sent_and_speech_after_it_plays_on_time():
    key = new_key()
    sender = MediaSender(9, 77, key, OpusEncoder())
    receiver = MediaReceiver()
    receiver.add_speaker("ada", 9, 77, key)
    talk = source(1.0)
    samples = np.concatenate([talk, np.zeros(RATE, dtype=np.int16), talk])
    link = Link()
    link.send(sender, samples)
    assert sender.stats.dtx >= 30  # most of the silent second is not sent
    output, levels = run_receiver(receiver, link.arrivals, 3.5)
    stats = receiver.jitter_stats()["ada"]
    assert stats.lost == 0 and stats.late == 0
    lag = best_lag(output, samples)
    # The second talkspurt is where the first one was, one second of silence later.
    second = output[lag + 2 * RATE + RATE // 5 : lag + 3 * RATE]
    assert correlation(second, talk[RATE // 5 :]) > 0.95
    assert max(frame["ada"] for frame in levels[70:95]) == 127


def test_mute_sends_nothing_and_keeps_media_time():
    key = new_key()
    sender = MediaSender(3, 42, key, OpusEncoder(), sequence_number=100, timestamp=5000)
    frame = source(0.02).tobytes()
    first = RtpPacket.parse(SrtpReceiverFor(3, 42, key).unprotect(sender.send_pcm(frame)))
    assert first.marker
    sender.mute()
    assert sender.muted
    assert [sender.send_pcm(frame) for _ in range(10)] == [None] * 10
    assert sender.stats.muted == 10
    assert sender.last_level == 127
    sender.unmute()
    receiver = SrtpReceiverFor(3, 42, key)
    datagram = sender.send_pcm(frame)
    assert datagram is not None
    packet = RtpPacket.parse(receiver.unprotect(datagram))
    assert packet.sequence_number == 101
    assert packet.timestamp == 5000 + 11 * FRAME
    assert packet.marker


class SrtpReceiverFor:
    """Unprotects one flow's datagrams for inspection."""

    def __init__(self, flow_id: int, ssrc: int, key: str) -> None:
        self.flow_id = flow_id
        self.srtp = SrtpReceiver()
        self.srtp.add(flow_id, ssrc, key_from_base64(key))

    def unprotect(self, datagram: bytes | None) -> bytes:
        assert datagram is not None
        flow_id, packet = unpack_datagram(datagram)
        assert flow_id == self.flow_id
        return self.srtp.unprotect(flow_id, packet)


def test_datagram_layout():
    key = new_key()
    sender = MediaSender(300, 0xCAFE, key, OpusEncoder())
    frame = source(0.02).tobytes()
    datagram = sender.send_pcm(frame)
    assert datagram is not None
    header = peek_media(datagram)
    assert (header.flow_id, header.ssrc) == (300, 0xCAFE)
    assert header.level is not None and header.level < 30
    packet = RtpPacket.parse(SrtpReceiverFor(300, 0xCAFE, key).unprotect(datagram))
    assert packet.payload_type == OPUS_PAYLOAD_TYPE
    assert packet.audio_level == (True, header.level)
    # varint(300) is 2 bytes, then the 12-byte header, 8 bytes of extension, Opus, GCM tag.
    assert len(datagram) == 2 + 12 + 8 + len(packet.payload) + AUTH_TAG_LENGTH


# --------------------------------------------------------------------------- bad input


def test_wrong_key_is_counted_not_raised():
    sender = MediaSender(4, 99, new_key(), OpusEncoder())
    receiver = MediaReceiver()
    receiver.add_speaker("eve", 4, 99, new_key())
    datagrams = [sender.send_pcm(frame) for frame in frames(source(0.5))]
    for datagram in datagrams:
        assert datagram is not None
        assert receiver.receive(datagram, 0.0) is False
    assert receiver.stats.drops == {"auth_failed": len(datagrams)}
    pcm, levels = receiver.pull(0.1)
    assert pcm == bytes(2 * FRAME)
    assert levels == {"eve": 127}


def test_bad_datagrams_are_counted_by_reason():
    key = new_key()
    sender = MediaSender(4, 99, key, OpusEncoder())
    receiver = MediaReceiver()
    receiver.add_speaker("ada", 4, 99, key)
    good = sender.send_pcm(source(0.02).tobytes())
    assert good is not None
    _, srtp = unpack_datagram(good)
    tampered = bytearray(good)
    tampered[-1] ^= 1
    other_ssrc = MediaSender(4, 98, key, OpusEncoder()).send_pcm(source(0.02).tobytes())
    assert other_ssrc is not None
    not_opus = RtpPacket(payload_type=0, sequence_number=7, ssrc=99, payload=b"\x00" * 20)
    wrong_type = pack_datagram(4, SrtpSender(key_from_base64(key)).protect(not_opus.serialize()))
    cases = {
        b"": "malformed",
        b"\x40": "malformed",
        b"\x04": "malformed",
        pack_datagram(5, srtp): "unknown_flow",
        bytes(tampered): "auth_failed",
        b"\x04" + b"\x80" * 4: "malformed",
        bytes(2000): "too_large",
        other_ssrc: "wrong_ssrc",
        wrong_type: "bad_payload_type",
    }
    for datagram, reason in cases.items():
        before = receiver.stats.drops[reason]
        assert receiver.receive(datagram, 0.0) is False, reason
        assert receiver.stats.drops[reason] == before + 1, reason
    assert receiver.receive(good, 0.0) is True
    assert receiver.receive(good, 0.0) is False
    assert receiver.stats.drops["replay"] == 1
    assert receiver.stats.accepted == 1
    receiver.remove_speaker(4)
    assert receiver.receive(good, 0.0) is False
    assert receiver.stats.drops["unknown_flow"] == 2


def test_garbage_never_raises():
    rng = random.Random(5)
    key = new_key()
    protect = SrtpSender(key_from_base64(key)).protect
    receiver = MediaReceiver()
    receiver.add_speaker("ada", 4, 99, key)
    for index in range(400):
        if index % 2:
            # Random bytes on a known flow: stopped by SRTP.
            datagram = b"\x04" + rng.randbytes(rng.randrange(0, 300))
        else:
            # Authenticated packets with random header bits and payloads: they get past SRTP,
            # so RTP parsing, the jitter buffer and the decoder must cope.
            header = bytearray(
                RtpPacket(
                    payload_type=OPUS_PAYLOAD_TYPE,
                    sequence_number=rng.randrange(65536),
                    timestamp=rng.randrange(2**32),
                    ssrc=99,
                ).serialize()
            )
            header[0] |= rng.randrange(0x40)  # padding, extension, CSRC count
            try:
                packet = protect(bytes(header) + rng.randbytes(rng.randrange(0, 200)))
            except SrtpError:
                continue
            datagram = pack_datagram(4, packet)
        receiver.receive(datagram, index * TICK)
        pcm, _ = receiver.pull(index * TICK)
        assert len(pcm) == 2 * FRAME
    stats = receiver.stats
    assert sum(stats.drops.values()) + stats.accepted == stats.received
    assert stats.drops["malformed"] > 0 and stats.drops["wrong_ssrc"] > 0
    assert stats.accepted > 0 and stats.decode_errors > 0


def test_new_flow_for_a_user_replaces_the_old_one():
    receiver = MediaReceiver()
    receiver.add_speaker("ada", 1, 10, new_key())
    receiver.add_speaker("bob", 2, 20, new_key())
    receiver.add_speaker("ada", 3, 30, new_key())
    assert receiver.speakers == {2: "bob", 3: "ada"}
    with pytest.raises(SrtpError):
        receiver.add_speaker("cy", 4, 40, "too short")


def test_announcing_the_same_key_again_keeps_the_stream():
    key = new_key()
    sender = MediaSender(1, 10, key, OpusEncoder())
    receiver = MediaReceiver()
    receiver.add_speaker("ada", 1, 10, key)
    first, second = (sender.send_pcm(frame) for frame in frames(source(0.04)))
    assert first is not None and second is not None
    assert receiver.receive(first, 0.0)
    receiver.add_speaker("ada", 1, 10, key)  # e.g. from a room snapshot after the event
    assert receiver.receive(first, 0.0) is False  # still the same SRTP session: a replay
    assert receiver.receive(second, 0.02)
    assert receiver.jitter_stats()["ada"].received == 2


# --------------------------------------------------------------------------- building blocks


def test_packetizer_numbers_stamps_and_marks():
    packetizer = RtpPacketizer(0xDEADBEEF, sequence_number=65535, timestamp=2**32 - 960)
    first = RtpPacket.parse(packetizer.packetize(b"opus", 30, True))
    second = RtpPacket.parse(packetizer.packetize(b"opus", 127, False))
    packetizer.skip()
    packetizer.skip()
    third = RtpPacket.parse(packetizer.packetize(b"opus", 40, True))
    assert [p.sequence_number for p in (first, second, third)] == [65535, 0, 1]
    assert [p.timestamp for p in (first, second, third)] == [2**32 - 960, 0, 3 * 960]
    assert [p.marker for p in (first, second, third)] == [True, False, True]
    assert first.payload_type == OPUS_PAYLOAD_TYPE and first.ssrc == 0xDEADBEEF
    assert [e.id for e in first.extensions] == [AUDIO_LEVEL_EXTENSION_ID]
    assert first.audio_level == (True, 30)
    assert second.audio_level == (False, 127)
    # One-byte extension form: 0xBEDE profile right after the 12-byte header.
    assert packetizer.packetize(b"x", 0, True)[12:14] == b"\xbe\xde"


def test_packetizer_starts_at_random_values():
    starts = {(p.sequence_number, p.timestamp) for p in (RtpPacketizer(1) for _ in range(5))}
    assert len(starts) == 5


def test_srtp_keys_and_round_trip():
    raw = os.urandom(KEY_LENGTH)
    text = key_to_base64(raw)
    assert key_from_base64(text) == raw
    for bad in ("not base64!", base64.b64encode(b"short").decode(), "é"):
        with pytest.raises(SrtpError, match="SRTP key") as info:
            key_from_base64(bad)
        assert info.value.reason == "bad_key"
    rtp = RtpPacket(payload_type=111, sequence_number=1, ssrc=5, payload=b"abc").serialize()
    protected = SrtpSender(raw).protect(rtp)
    assert len(protected) == len(rtp) + AUTH_TAG_LENGTH
    assert protected[:12] == rtp[:12]  # the header stays clear for the forwarder
    receiver = SrtpReceiver()
    receiver.add(8, 5, raw)
    assert 8 in receiver and len(receiver) == 1
    assert receiver.unprotect(8, protected) == rtp
    with pytest.raises(SrtpError, match="no SRTP key for media flow 9") as info:
        receiver.unprotect(9, protected)
    assert info.value.reason == "unknown_flow"
    receiver.remove(8)
    assert 8 not in receiver


def test_mixer_saturates():
    loud = np.full(FRAME, 30000, dtype=np.int16)
    quiet = np.full(FRAME, -100, dtype=np.int16)
    mixed = mix_arrays([loud, loud, quiet])
    assert mixed.dtype == np.int16 and (mixed == 32767).all()
    assert (mix_arrays([-loud, -loud]) == -32768).all()
    assert mix([loud.tobytes(), quiet.tobytes()]) == np.full(FRAME, 29900, "<i2").tobytes()
    assert mix([]) == bytes(2 * FRAME)
    with pytest.raises(ValueError, match="shape"):
        mix([bytes(100)])
