"""Measures for comparing what a listener recorded with what a speaker played."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 48000


def tone(frequencies: list[float], seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    signal = sum(np.sin(2 * np.pi * f * t) for f in frequencies) / len(frequencies)
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)
    return (amplitude * ramp * signal * 32767).astype(np.int16)


def speech(text: str, path: Path) -> Path:
    """Real speech from espeak-ng (installed by ./run test)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (./run test installs it)")
    subprocess.run(
        ["espeak-ng", "-s", "160", "-w", str(path), text],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return path


def dominant_frequencies(samples: np.ndarray, count: int = 2) -> list[float]:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    peaks: list[float] = []
    for index in np.argsort(spectrum)[::-1]:
        f = float(freqs[index])
        if all(abs(f - p) > 50 for p in peaks):
            peaks.append(f)
        if len(peaks) == count:
            break
    return sorted(peaks)


def band_energy(samples: np.ndarray, frequency: float, width: float = 30.0) -> float:
    """Share of the signal's energy within ``width`` Hz of ``frequency``."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / RATE)
    total = spectrum.sum() or 1.0
    return float(spectrum[np.abs(freqs - frequency) < width].sum() / total)


@dataclass
class Alignment:
    lag: int
    """Samples by which the recording trails the source."""
    correlation: float
    """Normalised waveform correlation at that lag (1.0 = identical)."""
    envelope_correlation: float
    """Correlation of the 10 ms loudness envelopes (robust to codec phase changes)."""


def align(source: np.ndarray, recorded: np.ndarray) -> Alignment:
    """Find where ``source`` sits inside ``recorded`` and how alike they are there."""
    a = source.astype(np.float64)
    b = recorded.astype(np.float64)
    n = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    xcorr = np.fft.irfft(np.fft.rfft(b, n) * np.conj(np.fft.rfft(a, n)), n)
    lag = int(np.argmax(xcorr[: len(b)]))
    segment = b[lag : lag + len(a)]
    a = a[: len(segment)]
    denominator = np.sqrt((a**2).sum() * (segment**2).sum()) or 1.0
    correlation = float((a * segment).sum() / denominator)
    return Alignment(lag, correlation, float(np.corrcoef(envelope(a), envelope(segment))[0, 1]))


def envelope(samples: np.ndarray, window: int = 480) -> np.ndarray:
    usable = len(samples) // window * window
    blocks = samples[:usable].reshape(-1, window)
    return np.sqrt((blocks**2).mean(axis=1))


def piecewise(source: np.ndarray, recorded: np.ndarray, seconds: float = 1.0) -> list[Alignment]:
    """Each ``seconds`` of ``source`` looked for on its own in ``recorded``.

    A stream that paused to refill (a loaded machine) shifts what follows: one alignment of the
    whole source then fails although every word arrived. Judge the pieces instead.
    """
    step = int(RATE * seconds)
    return [align(source[i : i + step], recorded) for i in range(0, len(source) - step + 1, step)]


def median_envelope(alignments: list[Alignment]) -> float:
    return float(np.median([a.envelope_correlation for a in alignments]))


def median_correlation(alignments: list[Alignment]) -> float:
    return float(np.median([a.correlation for a in alignments]))
