"""Reading audio files of any common format and rate as 48 kHz mono, and writing WAV."""

from __future__ import annotations

import wave

import numpy as np
import pytest
import soundfile

from salon.client.audiofile import AudioFileError, WavWriter, frames, read_audio, write_wav

RATE = 48000


def sine(frequency: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amplitude * np.sin(2 * np.pi * frequency * t)


def peak_frequency(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[np.argmax(spectrum)])


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def test_44k1_stereo_flac_becomes_48k_mono(tmp_path):
    path = tmp_path / "stereo.flac"
    left = sine(440.0, 1.5, 44100)
    right = sine(440.0, 1.5, 44100, amplitude=0.3)
    soundfile.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    samples = read_audio(path)
    assert samples.dtype == np.int16 and samples.ndim == 1
    assert len(samples) == pytest.approx(1.5 * RATE, abs=2)
    assert peak_frequency(samples) == pytest.approx(440.0, abs=2)
    # The channels are averaged: amplitude 0.4 of full scale.
    assert rms(samples[RATE // 10 : -RATE // 10]) == pytest.approx(
        0.4 * 32768 / np.sqrt(2), rel=0.02
    )


def test_8k_mono_wav_becomes_48k(tmp_path):
    path = tmp_path / "phone.wav"
    soundfile.write(path, sine(1000.0, 2.0, 8000), 8000, subtype="PCM_16")
    samples = read_audio(path)
    assert len(samples) == pytest.approx(2.0 * RATE, abs=6)
    assert peak_frequency(samples) == pytest.approx(1000.0, abs=2)
    assert rms(samples[RATE // 10 : -RATE // 10]) == pytest.approx(
        0.5 * 32768 / np.sqrt(2), rel=0.02
    )


def test_ogg_vorbis_at_22k05(tmp_path):
    path = tmp_path / "clip.ogg"
    soundfile.write(path, sine(660.0, 1.0, 22050), 22050, format="OGG", subtype="VORBIS")
    samples = read_audio(path)
    assert len(samples) == pytest.approx(RATE, abs=6)
    assert peak_frequency(samples) == pytest.approx(660.0, abs=2)


def test_48k_float_file_is_taken_as_is(tmp_path):
    path = tmp_path / "float.wav"
    data = sine(300.0, 0.5, RATE, amplitude=1.2)  # beyond full scale: clipped, not wrapped
    soundfile.write(path, data, RATE, subtype="FLOAT")
    samples = read_audio(path)
    assert len(samples) == len(data)
    assert samples.max() == 32767 and samples.min() == -32768
    assert np.all(np.diff(samples[:20].astype(int)) >= 0)


def test_unreadable_file_raises_audio_file_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not audio")
    with pytest.raises(AudioFileError, match="cannot read audio file"):
        read_audio(path)
    with pytest.raises(AudioFileError):
        read_audio(tmp_path / "missing.wav")


def test_frames_pads_the_last_one():
    samples = np.arange(2500, dtype=np.int16)
    chunks = list(frames(samples))
    assert [len(chunk) for chunk in chunks] == [1920, 1920, 1920]
    last = np.frombuffer(chunks[-1], dtype="<i2")
    assert last[0] == 1920 and last[579] == 2499 and not last[580:].any()
    assert list(frames(np.zeros(0, dtype=np.int16))) == []


def test_wav_writer_round_trip(tmp_path):
    path = tmp_path / "out.wav"
    tone = (sine(440.0, 0.1, RATE) * 32767).astype(np.int16)
    with WavWriter(path) as writer:
        for chunk in frames(tone):
            writer.write(chunk)
        writer.write(np.zeros(960, dtype=np.int16))
        assert writer.duration == pytest.approx(0.12)
    with wave.open(str(path)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (RATE, 1, 2)
        assert reader.getnframes() == 5760
    assert np.array_equal(read_audio(path)[: len(tone)], tone)
    with pytest.raises(ValueError, match="whole 16-bit samples"), WavWriter(path) as writer:
        writer.write(b"\x00")


def test_write_wav(tmp_path):
    path = tmp_path / "whole.wav"
    tone = (sine(440.0, 0.25, RATE) * 32767).astype(np.int16)
    write_wav(path, tone)
    assert np.array_equal(read_audio(path), tone)
