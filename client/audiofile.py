"""Reading audio files into 48 kHz mono int16 and writing WAV files of it.

Reading goes through libsndfile (``soundfile``: WAV, FLAC, Ogg/Vorbis, Opus in Ogg, MP3 with
libsndfile >= 1.1, AIFF, ...) and resampling through libsoxr (``soxr``), so any common file
becomes what the Opus encoder takes: 48 kHz, one channel, 16-bit samples.
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from os import PathLike
from types import TracebackType

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960


class AudioFileError(ValueError):
    """A file cannot be read as audio."""


def _to_int16(samples: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype(np.int16)


def read_audio(path: str | PathLike[str]) -> npt.NDArray[np.int16]:
    """Read a whole audio file as 48 kHz mono int16 samples (channels are averaged)."""
    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioFileError(f"cannot read audio file {path}: {exc}") from None
    mono = data.mean(axis=1, dtype=np.float32)
    if rate != SAMPLE_RATE and mono.size:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    return _to_int16(mono)


def frames(samples: npt.NDArray[np.int16], frame_samples: int = FRAME_SAMPLES) -> Iterator[bytes]:
    """Cut samples into frames of little-endian int16 PCM, padding the last with silence."""
    data = np.asarray(samples, dtype="<i2")
    for start in range(0, data.size, frame_samples):
        chunk = data[start : start + frame_samples]
        if chunk.size < frame_samples:
            chunk = np.concatenate([chunk, np.zeros(frame_samples - chunk.size, dtype="<i2")])
        yield chunk.tobytes()


class WavWriter:
    """Writes 48 kHz mono 16-bit WAV incrementally (e.g. a frame every 20 ms).

    Use it as a context manager, or call :meth:`close`: the header's sizes are final only then.
    """

    def __init__(self, path: str | PathLike[str], sample_rate: int = SAMPLE_RATE) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.samples_written = 0
        self._wave = wave.open(str(path), "wb")  # noqa: SIM115 (closed by close())
        self._wave.setnchannels(1)
        self._wave.setsampwidth(2)
        self._wave.setframerate(sample_rate)

    def write(self, pcm: bytes | npt.NDArray[np.int16]) -> None:
        """Append little-endian int16 PCM bytes or an int16 array."""
        if isinstance(pcm, np.ndarray):
            pcm = np.asarray(pcm, dtype="<i2").tobytes()
        if len(pcm) % 2:
            raise ValueError("PCM data must hold whole 16-bit samples")
        self._wave.writeframes(pcm)
        self.samples_written += len(pcm) // 2

    @property
    def duration(self) -> float:
        """Seconds written so far."""
        return self.samples_written / self.sample_rate

    def close(self) -> None:
        """Finish the file."""
        self._wave.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def write_wav(
    path: str | PathLike[str], samples: npt.NDArray[np.int16], sample_rate: int = SAMPLE_RATE
) -> None:
    """Write int16 mono samples as a WAV file."""
    with WavWriter(path, sample_rate) as writer:
        writer.write(samples)
