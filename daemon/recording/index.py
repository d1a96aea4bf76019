"""The index of recordings: which room, when, how long, whose voices, and where the file is.

:class:`RecordingIndex` is what the recording service needs from storage.
:class:`StoreRecordingIndex` keeps it in the daemon's database (salond's default);
:class:`JsonRecordingIndex` keeps ``recordings.json`` in a directory, for tools and tests that
run a recorder without a store.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

Status = Literal["recording", "complete", "failed", "interrupted"]


@dataclass(frozen=True)
class RecordingInfo:
    """One recording as the index keeps it."""

    id: str
    "The recording's id (as in the ``recording_started`` and ``recording_stopped`` events)."
    room: str
    "The room id."
    path: str
    "Absolute path of the Ogg Opus file."
    started_at: float
    "When the recording started (Unix time)."
    by: str = ""
    "Who started it."
    ended_at: float | None = None
    "When it ended; None while it runs."
    duration: float = 0.0
    "Seconds of audio in the file."
    speakers: list[str] = field(default_factory=list)
    "Users whose voice is in the file (those who consented and spoke)."
    status: Status = "recording"
    """recording, complete, failed (the recorder stopped on an error) or interrupted (salond
    stopped without finishing it)."""
    bytes: int = 0
    "Size of the file."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecordingInfo:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        known["speakers"] = list(known.get("speakers") or [])
        return cls(**known)


class RecordingIndex(Protocol):
    """Where recordings are listed.

    ``begin`` and ``finish`` are called from the recorder's worker thread and must not wait
    for the disk for long; the reads are awaited on the event loop (by the admin API).
    """

    def begin(self, info: RecordingInfo) -> None:
        """A recording started (status ``recording``)."""

    def finish(self, info: RecordingInfo) -> None:
        """A recording ended (complete or failed): replace its entry."""

    async def recordings(self, room: str | None = None) -> list[RecordingInfo]:
        """Recordings, newest first; only ``room``'s if given."""

    async def get(self, recording_id: str) -> RecordingInfo | None:
        """One recording by id."""


class RecordingStore(Protocol):
    """What :class:`StoreRecordingIndex` needs of the daemon's store (``SqliteStore``)."""

    def save_recording(self, info: RecordingInfo) -> None: ...

    def interrupt_recordings(self) -> None: ...

    async def recordings(
        self, room: str | None = None, limit: int = 1000
    ) -> list[RecordingInfo]: ...

    async def recording(self, recording_id: str) -> RecordingInfo | None: ...


class StoreRecordingIndex:
    """The index in the daemon's database (the ``recordings`` table of the store's schema 2).

    Writes are queued to the store's writer thread, so the recorder never waits for them.
    Entries left ``recording`` by a previous salond become ``interrupted`` when it is created.
    """

    def __init__(self, store: RecordingStore) -> None:
        self.store = store
        store.interrupt_recordings()

    def begin(self, info: RecordingInfo) -> None:
        self.store.save_recording(info)

    def finish(self, info: RecordingInfo) -> None:
        self.store.save_recording(info)

    async def recordings(self, room: str | None = None) -> list[RecordingInfo]:
        return await self.store.recordings(room)

    async def get(self, recording_id: str) -> RecordingInfo | None:
        return await self.store.recording(recording_id)


class JsonRecordingIndex:
    """The index as a JSON file, rewritten atomically on each change.

    Entries still marked ``recording`` when the file is opened belong to a salond that stopped
    without finishing them: they become ``interrupted`` (their file is playable up to the last
    page written).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, RecordingInfo] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: not a recordings index: {exc}") from exc
            for item in raw.get("recordings", []):
                info = RecordingInfo.from_dict(item)
                if info.status == "recording":
                    info = replace(info, status="interrupted")
                self._entries[info.id] = info

    def begin(self, info: RecordingInfo) -> None:
        with self._lock:
            self._entries[info.id] = info
            self._save()

    def finish(self, info: RecordingInfo) -> None:
        self.begin(info)

    async def recordings(self, room: str | None = None) -> list[RecordingInfo]:
        return self.entries(room)

    async def get(self, recording_id: str) -> RecordingInfo | None:
        with self._lock:
            return self._entries.get(recording_id)

    def entries(self, room: str | None = None) -> list[RecordingInfo]:
        """Recordings, newest first (from any thread)."""
        with self._lock:
            entries = list(self._entries.values())
        found = [e for e in entries if room is None or e.room == room]
        return sorted(found, key=lambda e: e.started_at, reverse=True)

    def _save(self) -> None:
        data = {"recordings": [e.to_dict() for e in self._entries.values()]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(temporary, self.path)
