"""Mixing several speakers' int16 frames into one, saturating instead of wrapping around."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

FRAME_SAMPLES = 960
_INT16_MIN = -32768
_INT16_MAX = 32767


def mix_arrays(
    frames: Iterable[npt.NDArray[np.int16]], samples: int = FRAME_SAMPLES
) -> npt.NDArray[np.int16]:
    """Sum int16 frames of ``samples`` samples each, clipped to the int16 range."""
    total = np.zeros(samples, dtype=np.int32)
    for frame in frames:
        if frame.shape != (samples,):
            raise ValueError(f"frame of shape {frame.shape}, expected ({samples},)")
        total += frame
    return np.clip(total, _INT16_MIN, _INT16_MAX).astype(np.int16)


def mix(frames: Iterable[bytes], samples: int = FRAME_SAMPLES) -> bytes:
    """Mix frames of little-endian int16 PCM; no frames give silence."""
    return (
        mix_arrays((np.frombuffer(frame, dtype="<i2") for frame in frames), samples)
        .astype("<i2")
        .tobytes()
    )
