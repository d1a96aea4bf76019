"""Opus encoding and decoding with the real libopus, and RFC 6464 levels of PCM frames."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from salon.media import codec
from salon.media.codec import (
    AudioUnavailable,
    CodecError,
    OpusDecoder,
    OpusEncoder,
    is_dtx,
)
from salon.media.levels import SILENCE_LEVEL, VOICE_THRESHOLD, audio_level, is_voice, measure

RATE = 48000
FRAME = 960


def tone(seconds: float, frequencies=(440.0, 1200.0), amplitude: float = 0.25) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    signal = sum(np.sin(2 * np.pi * f * t) for f in frequencies)
    return (amplitude * signal * 32767).astype(np.int16)


def frames_of(samples: np.ndarray) -> list[bytes]:
    return [samples[i : i + FRAME].tobytes() for i in range(0, len(samples) - FRAME + 1, FRAME)]


def peak_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[np.argmax(spectrum)])


def test_encoder_settings():
    encoder = OpusEncoder()
    assert encoder.fec and encoder.dtx
    assert encoder.bitrate == 32000
    assert encoder.expected_loss == 0
    encoder.set_expected_loss(12.4)
    assert encoder.expected_loss == 12
    encoder.set_expected_loss(250)
    assert encoder.expected_loss == 100


def test_tone_round_trip():
    encoder, decoder = OpusEncoder(), OpusDecoder()
    source = tone(1.0, frequencies=(440.0,))
    packets = [encoder.encode(frame) for frame in frames_of(source)]
    # 32 kbit/s over 20 ms is 80 bytes a frame on average.
    assert 60 <= np.mean([len(p) for p in packets]) <= 110
    decoded = b"".join(decoder.decode(packet) for packet in packets)
    assert len(decoded) == len(source) * 2
    output = np.frombuffer(decoded, dtype=np.int16)
    assert peak_frequency(output[RATE // 4 :]) == pytest.approx(440, abs=5)
    assert audio_level(output[RATE // 2 :]) == pytest.approx(audio_level(source), abs=2)


def test_silence_goes_into_dtx():
    encoder = OpusEncoder()
    for frame in frames_of(tone(0.2)):
        assert not is_dtx(encoder.encode(frame))
    silent = [encoder.encode(bytes(2 * FRAME)) for _ in range(50)]
    # libopus needs a few frames to decide; then it only refreshes comfort noise now and then.
    assert sum(is_dtx(packet) for packet in silent) >= 35
    assert all(is_dtx(packet) for packet in silent[20:30])
    assert encoder.is_dtx(b"\x08") and not encoder.is_dtx(b"\x08\x00\x00")


def test_fec_rebuilds_a_lost_frame():
    encoder, decoder = OpusEncoder(), OpusDecoder()
    encoder.set_expected_loss(20)
    source = tone(1.0, frequencies=(440.0,))
    packets = [encoder.encode(frame) for frame in frames_of(source)]
    for packet in packets[:30]:
        decoder.decode(packet)
    rebuilt = np.frombuffer(decoder.decode_fec(packets[31]), dtype=np.int16)
    assert rebuilt.size == FRAME
    assert audio_level(rebuilt) <= audio_level(source) + 6
    concealed = np.frombuffer(decoder.conceal(), dtype=np.int16)
    assert concealed.size == FRAME


def test_conceal_without_history_is_silence():
    pcm = OpusDecoder().conceal()
    assert pcm == bytes(2 * FRAME)


def test_bad_input_raises_codec_error():
    encoder, decoder = OpusEncoder(), OpusDecoder()
    with pytest.raises(CodecError, match="960"):
        encoder.encode(bytes(100))
    with pytest.raises(CodecError):
        decoder.decode(b"")
    # A 40 ms packet: valid Opus, but not the 20 ms frames this protocol carries.
    long_encoder = OpusEncoder(frame_samples=1920)
    with pytest.raises(CodecError, match="1920 samples"):
        decoder.decode(long_encoder.encode(tone(0.04).tobytes()))


def test_missing_libopus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(codec, "_opus", None)
    monkeypatch.setattr(codec, "_IMPORT_ERROR", Exception("Could not find Opus library."))
    with pytest.raises(
        AudioUnavailable, match=r"libopus is not installed: apt-get install libopus0"
    ):
        OpusEncoder()
    with pytest.raises(AudioUnavailable):
        OpusDecoder()
    assert not codec.opus_available()


def test_missing_libopus_does_not_break_import():
    # opuslib raises a bare Exception at import when libopus is missing; simulate that.
    script = textwrap.dedent(
        """
        import sys

        class NoOpus:
            def find_spec(self, name, path=None, target=None):
                if name == "opuslib" or name.startswith("opuslib."):
                    raise Exception("Could not find Opus library. Make sure it is installed.")

        sys.meta_path.insert(0, NoOpus())
        from salon.media import codec, streams  # importing must still work
        try:
            codec.OpusEncoder()
        except codec.AudioUnavailable as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "libopus is not installed: apt-get install libopus0"


# --------------------------------------------------------------------------- levels


def test_levels_follow_rfc_6464():
    assert audio_level(bytes(2 * FRAME)) == SILENCE_LEVEL
    assert audio_level(np.zeros(0, dtype=np.int16)) == SILENCE_LEVEL
    square = np.tile(np.array([32767, -32768], dtype=np.int16), FRAME // 2)
    assert audio_level(square) == 0
    t = np.arange(FRAME) / RATE
    full_sine = (32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    assert audio_level(full_sine) == 3  # a full-scale sine is -3 dBov
    quiet = (full_sine * 10 ** (-40 / 20)).astype(np.int16)
    assert audio_level(quiet.tobytes()) == 43
    hiss = np.ones(FRAME, dtype=np.int16)
    assert audio_level(hiss) == 90  # one LSB: -90.3 dBov


def test_voice_flag_is_an_energy_threshold():
    t = np.arange(FRAME) / RATE
    speechlike = (3000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    level, voice = measure(speechlike)
    assert level == 24 and voice
    room_tone = (speechlike // 1000).astype(np.int16)
    assert not measure(room_tone)[1]
    assert is_voice(VOICE_THRESHOLD) and not is_voice(VOICE_THRESHOLD + 1)
