"""RFC 6464 audio levels of PCM frames and a simple energy voice flag.

The level is the frame's RMS in -dBov, 0 (full-scale square wave) to 127 (digital silence or
quieter), as carried in the RTP audio level header extension and used for "who is speaking".
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SILENCE_LEVEL = 127
# Frames louder than -50 dBov count as voice; it is also the server's "speaking" threshold, so a
# sender flags voice exactly when the room will show it speaking. Room tone and a quiet
# microphone's noise floor sit well below (-60 dBov and lower).
VOICE_THRESHOLD = 50
_FULL_SCALE = 32768.0


def _samples(pcm: bytes | npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    if isinstance(pcm, np.ndarray):
        return pcm
    return np.frombuffer(pcm, dtype="<i2")


def audio_level(pcm: bytes | npt.NDArray[np.int16]) -> int:
    """The RFC 6464 level (0..127, in -dBov) of a frame of int16 samples."""
    samples = _samples(pcm)
    if samples.size == 0:
        return SILENCE_LEVEL
    values = samples.astype(np.float64)
    mean_square = float(np.dot(values, values)) / samples.size
    if mean_square <= 0.0:
        return SILENCE_LEVEL
    dbov = 10.0 * np.log10(mean_square / (_FULL_SCALE * _FULL_SCALE))
    return int(min(SILENCE_LEVEL, max(0, round(-dbov))))


def is_voice(level: int, threshold: int = VOICE_THRESHOLD) -> bool:
    """Whether a frame of ``level`` is loud enough to be flagged as voice."""
    return level <= threshold


def measure(
    pcm: bytes | npt.NDArray[np.int16], threshold: int = VOICE_THRESHOLD
) -> tuple[int, bool]:
    """``(level, voice)`` of a frame, ready for :func:`~salon.daemon.wire.rtp.pack_audio_level`."""
    level = audio_level(pcm)
    return level, is_voice(level, threshold)
