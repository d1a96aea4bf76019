"""Shared pieces of the reliability tests: run sizes, recorded figures, a live room with audio.

Sizes: CI runs every reliability test (marker ``soak``) at a reduced size; ``./run soak`` sets
``SALON_SOAK=full`` and runs the same tests at full size. Figures: each test calls
:func:`record` with what it tried and what happened; the numbers are printed (seen with
``pytest -s``) and, when ``SALON_FIGURES`` names a file, appended to it as JSON lines
(``SALON_FIGURES=figures.jsonl ./run soak``). RELIABILITY.md quotes them.

This module holds no tests; pytest collects it because of its name and finds none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salon.client.connection import SalonClient
from salon.client.room_audio import RoomAudio
from salon.daemon.wire import messages as msg
from tests.audio_checks import RATE, tone

FULL = os.environ.get("SALON_SOAK", "").lower() == "full"
"""True under ``./run soak``: every reliability test runs at its full size."""


def scaled(ci: int, full: int) -> int:
    """The size of a run: ``ci`` in the ordinary test run, ``full`` under ``./run soak``."""
    return full if FULL else ci


def record(name: str, **figures: Any) -> None:
    """Publish a test's figures: printed, and appended to ``$SALON_FIGURES`` if set."""
    entry = {"test": name, "size": "full" if FULL else "ci", **figures}
    line = json.dumps(entry, sort_keys=True, default=str)
    print(f"[figures] {line}")
    path = os.environ.get("SALON_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def tone_frames(frequency: float = 440.0, seconds: float = 60.0) -> Iterator[bytes]:
    """20 ms PCM frames (s16le mono 48 kHz) of a steady tone, for a speaker's ``RoomAudio``."""
    samples = tone([frequency], seconds, amplitude=0.4)
    step = RATE // 50
    for start in range(0, len(samples) - step + 1, step):
        yield samples[start : start + step].tobytes()


@dataclass
class AudioProbe:
    """Counts what a listener hears: frames played and how many of them were loud."""

    frames: int = 0
    loud: int = 0
    timeline: list[tuple[float, int]] = field(default_factory=list)

    def __call__(self, pcm: bytes, now: float) -> None:
        self.frames += 1
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
        if samples.size and float(np.sqrt((samples**2).mean())) > 1000.0:
            self.loud += 1
            self.timeline.append((now, self.loud))


@dataclass
class LiveRoom:
    """A room on a live salond where a speaker plays a tone and a listener hears it."""

    room: str
    owner: SalonClient
    speaker: SalonClient
    listener: SalonClient
    speaker_audio: RoomAudio
    listener_audio: RoomAudio
    probe: AudioProbe
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def heard_loud(self) -> int:
        return self.probe.loud

    async def assert_audio_flows(self, seconds: float = 1.0, minimum: int = 10) -> int:
        """Wait ``seconds`` and require the listener to hear at least ``minimum`` loud frames
        (of the 50 per second the speaker sends) in that time; returns how many it heard."""
        before = self.probe.loud
        deadline = asyncio.get_running_loop().time() + max(seconds, 8.0)
        await asyncio.sleep(seconds)
        # A loaded machine may delay the loop: give the audio a bounded while longer.
        while self.probe.loud - before < minimum and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        heard = self.probe.loud - before
        assert heard >= minimum, f"listener heard {heard} loud frames in {seconds} s"
        assert not self.speaker.closed and not self.listener.closed and not self.owner.closed
        return heard


@contextlib.asynccontextmanager
async def live_room(live: Any, room: str = "stage") -> AsyncIterator[LiveRoom]:
    """Owner, a speaker with a real 440 Hz tone through RoomAudio, and a listener hearing it."""
    owner = await live.client("Owner")
    speaker = await live.client("Speaker")
    listener = await live.client("Listener")
    await owner.create_room("Reliability", room=room)
    await owner.join(room)
    token = (await owner.call("create_invite", role="speaker"))["invite"]["token"]
    speaker_audio = RoomAudio(speaker, source=tone_frames(), auto_unmute=True)
    probe = AudioProbe()
    listener_audio = RoomAudio(listener)
    listener_audio.on_frame_played = probe
    await listener.join(room)
    await speaker.join(room, invite=token)
    state = LiveRoom(room, owner, speaker, listener, speaker_audio, listener_audio, probe)
    state.tasks = [
        asyncio.ensure_future(speaker_audio.run()),
        asyncio.ensure_future(listener_audio.run()),
    ]
    try:
        # The audio is flowing before any test starts misbehaving.
        await state.assert_audio_flows(1.0, minimum=10)
        yield state
    finally:
        for task in state.tasks:
            task.cancel()
        for task in state.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def monotonic() -> float:
    return time.monotonic()


def unknown_event(events: list[Any], kinds: tuple[type, ...] = (msg.Error,)) -> list[Any]:
    """The events of ``kinds`` among ``events`` (handy for asserting none arrived)."""
    return [event for event in events if isinstance(event, kinds)]
