"""Recording rooms, off the forwarding path: consenting speakers' audio to Ogg Opus files.

The core (``daemon/core``) decides what is recorded and taps those flows; this package does
the rest on a worker thread: SRTP unprotection, Opus decoding, placement by RTP timestamp,
mixing, encoding and the Ogg Opus container, and the index of recordings.
"""

from __future__ import annotations

from .index import JsonRecordingIndex, RecordingIndex, RecordingInfo, StoreRecordingIndex
from .oggopus import OggOpusWriter
from .recorder import RecordingResult, RoomRecorder
from .service import RecordingService, RecordingStats
from .track import Track

__all__ = [
    "JsonRecordingIndex",
    "OggOpusWriter",
    "RecordingIndex",
    "RecordingInfo",
    "RecordingResult",
    "RecordingService",
    "RecordingStats",
    "RoomRecorder",
    "StoreRecordingIndex",
    "Track",
]
