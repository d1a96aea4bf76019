"""The recording service: every room's recorder, on one worker thread off the forwarding path.

The core decides what is recorded and puts a copy of each recorded datagram in the recording's
outlet, a bounded queue (full: the oldest is dropped and counted, as for a slow listener). This
service observes the core's recording events on the event loop and passes them as commands to
its worker thread, which drains the outlets every ``poll`` seconds while a recording runs (and
otherwise sleeps until a command comes), decrypts, decodes, mixes and writes
(:class:`~.recorder.RoomRecorder`). The event loop never waits for the worker: a slow
disk delays the file, not anyone's audio.

Ordering needs no lock between the two threads: the worker takes the datagrams out of an outlet
*before* it reads the commands, so a flow's ``add`` command is always read no later than its
first datagram; a flow's datagrams are all in the outlet before its ``remove`` command (the core
untaps first), and removals are applied after the datagrams taken with them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from salon.daemon.core import events
from salon.daemon.core.forwarder import Outlet
from salon.daemon.wire.messages import MediaKey

from .index import RecordingIndex, RecordingInfo
from .recorder import DEFAULT_BITRATE, DEFAULT_HOLD, RoomRecorder, utc_stamp

log = logging.getLogger("salon.recording")

DEFAULT_POLL = 0.02
"""Seconds between two drains of the outlets (one frame)."""
_TRUSTED_GAP = 0.1
"""A drain this long after the previous one may hold late-stamped datagrams: their arrival
times are not used to place audio (see :class:`~.track.Track`)."""
DISK_CHECK_INTERVAL = 1.0
"""Seconds between two measurements of the recordings directory against its bound."""
MAX_CLOCK_SKEW = 60.0
"""Seconds a recording's start time may differ from the service's clock. The service's clock
must be the core's (wall-clock time in salond); further apart, the first write would be that
much silence at once, so the recording fails instead."""


@dataclass
class _Start:
    room: str
    recording: str
    by: str
    at: float
    outlet: Outlet


@dataclass
class _AddTrack:
    recording: str
    key: MediaKey


@dataclass
class _RemoveTrack:
    recording: str
    flow_id: int


@dataclass
class _Stop:
    recording: str
    at: float


@dataclass
class _Shutdown:
    pass


_Command = _Start | _AddTrack | _RemoveTrack | _Stop | _Shutdown


@dataclass
class _Active:
    info: RecordingInfo
    outlet: Outlet
    recorder: RoomRecorder
    cpu: float = 0.0
    bounded: bool = False
    """A bound (duration, disk) was reached and reported; the core's stop is on its way."""


@dataclass
class RecordingStats:
    """What the service did since salond started."""

    running: list[str] = field(default_factory=list)
    """Ids of the recordings running now."""
    completed: int = 0
    failed: int = 0
    datagrams: int = 0
    """Datagrams the recorders took in."""
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    """Datagrams lost: ``queue_full`` (the worker fell behind) and the recorders' reasons."""
    cpu_seconds: float = 0.0
    """CPU time of the worker thread spent on recordings."""
    audio_seconds: float = 0.0
    """Seconds of recordings written."""


class RecordingService:
    """Records rooms as the core says; a daemon component and an observer of the core."""

    def __init__(
        self,
        directory: Path,
        index: RecordingIndex,
        *,
        poll: float = DEFAULT_POLL,
        hold: float = DEFAULT_HOLD,
        bitrate: int = DEFAULT_BITRATE,
        on_failure: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
        max_duration: float = 0.0,
        disk_limit: int = 0,
        on_limit: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.directory = directory
        self.index = index
        self.poll = poll
        self.hold = hold
        self.bitrate = bitrate
        self.on_failure = on_failure
        """Called on the event loop with ``(room, recording)`` when a recorder fails."""
        self.max_duration = max_duration
        """Seconds one recording may last; 0: no bound."""
        self.disk_limit = disk_limit
        """Bytes all files in ``directory`` may take together; 0: no bound."""
        self.on_limit = on_limit
        """Called on the event loop with ``(room, recording, why)`` when a recording reaches
        a bound: the caller stops it (the file ends then and stays complete)."""
        self._disk_checked_at = float("-inf")
        self.clock = clock
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._active: dict[str, _Active] = {}
        self._stats = RecordingStats()
        self._stats_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ event loop side

    def on_core_event(self, event: events.CoreEvent) -> None:
        """Observer of the core's events (pipeline.observers); never blocks."""
        if isinstance(event, events.RecordingStarted):
            self._put(_Start(event.room, event.recording, event.by, event.at, event.outlet))
        elif isinstance(event, events.RecordingTrackAdded):
            self._put(_AddTrack(event.recording, event.key))
        elif isinstance(event, events.RecordingTrackRemoved):
            self._put(_RemoveTrack(event.recording, event.flow_id))
        elif isinstance(event, events.RecordingStopped):
            self._put(_Stop(event.recording, event.at))

    def _put(self, command: _Command) -> None:
        self._commands.put(command)

    def pump(self, now: float | None = None) -> None:
        """Do one round of the worker's work on the calling thread (for a service that was
        not started, e.g. in tests): drain the outlets, apply the commands, write."""
        now = self.clock() if now is None else now
        batches = {rid: a.outlet.take_all() for rid, a in self._active.items()}
        commands = []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                break
        self._step(commands, batches, now)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="salon-recorder", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Finish every running recording (its file ends now) and stop the worker."""
        thread = self._thread
        if thread is None:
            return
        self._commands.put(_Shutdown())
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._thread = None

    def stats(self) -> RecordingStats:
        """A snapshot of the counters (any thread)."""
        with self._stats_lock:
            snapshot = replace(self._stats, drops=collections.Counter(self._stats.drops))
            snapshot.running = [a.info.id for a in self._active.values()]
        for active in list(self._active.values()):
            if active.outlet.dropped:
                snapshot.drops["queue_full"] += active.outlet.dropped
        return snapshot

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        last = self.clock()
        stopping = False
        while not stopping:
            try:
                # No recording running: nothing to drain, so the thread sleeps until a
                # command comes instead of waking 50 times a second beside the event loop.
                first: _Command | None = self._commands.get(
                    timeout=self.poll if self._active else None
                )
            except queue.Empty:
                first = None
            now = self.clock()
            trusted = now - last <= _TRUSTED_GAP
            last = now
            # Datagrams first, then commands: see the module's docstring.
            batches = {rid: a.outlet.take_all() for rid, a in self._active.items()}
            commands = [] if first is None else [first]
            while True:
                try:
                    commands.append(self._commands.get_nowait())
                except queue.Empty:
                    break
            stopping = any(isinstance(c, _Shutdown) for c in commands)
            self._step(commands, batches, now, trusted)
        for rid in list(self._active):
            self._finish(rid, self.clock())

    def _step(
        self,
        commands: list[_Command],
        batches: dict[str, list[bytes]],
        now: float,
        trusted: bool = True,
    ) -> None:
        later: list[_Command] = []
        for command in commands:
            if isinstance(command, _Start):
                self._begin(command)
            elif isinstance(command, _AddTrack):
                active = self._active.get(command.recording)
                later = [
                    c
                    for c in later
                    if not (isinstance(c, _RemoveTrack) and c.flow_id == command.key.flow_id)
                ]
                if active is not None:
                    key = command.key
                    active.recorder.add_track(key.user, key.flow_id, key.ssrc, key.key)
            elif isinstance(command, (_RemoveTrack, _Stop)):
                later.append(command)
        for rid, batch in batches.items():
            active = self._active.get(rid)
            if active is None or not batch:
                continue
            self._guarded(rid, partial(_receive, active.recorder, batch, now, trusted))
        for command in later:
            if isinstance(command, _RemoveTrack):
                active = self._active.get(command.recording)
                if active is not None:
                    flow_id = command.flow_id
                    self._guarded(command.recording, partial(active.recorder.remove_track, flow_id))
            elif isinstance(command, _Stop) and command.recording in self._active:
                self._finish(command.recording, command.at)
        for rid in list(self._active):
            active = self._active[rid]
            self._guarded(rid, partial(active.recorder.advance, now))
        self._check_bounds(now)

    def _check_bounds(self, now: float) -> None:
        """Report recordings that reached ``max_duration`` or a full ``disk_limit``."""
        unbounded = [a for a in self._active.values() if not a.bounded]
        if not unbounded:
            return
        for active in unbounded:
            if self.max_duration and now - active.info.started_at >= self.max_duration:
                self._report_bound(active, f"max duration of {self.max_duration:g} s reached")
        if not self.disk_limit or now - self._disk_checked_at < DISK_CHECK_INTERVAL:
            return
        self._disk_checked_at = now
        used = _disk_use(self.directory)
        if used < self.disk_limit:
            return
        for active in self._active.values():
            if not active.bounded:
                self._report_bound(
                    active, f"recordings use {used} bytes, bound {self.disk_limit} bytes"
                )

    def _report_bound(self, active: _Active, why: str) -> None:
        active.bounded = True
        log.warning("recording %s of %s stops: %s", active.info.id, active.info.room, why)
        if self.on_limit is None:
            return
        if self._loop is None:  # pumped on the caller's thread (not started)
            self.on_limit(active.info.room, active.info.id, why)
            return
        try:
            self._loop.call_soon_threadsafe(self.on_limit, active.info.room, active.info.id, why)
        except RuntimeError:
            pass  # the loop is closed: salond is stopping anyway

    def _begin(self, command: _Start) -> None:
        name = f"{command.room}-{utc_stamp(command.at)}-{command.recording}.opus"
        path = self.directory / name
        info = RecordingInfo(
            id=command.recording,
            room=command.room,
            path=str(path),
            started_at=command.at,
            by=command.by,
        )
        started = time.gmtime(command.at)
        comments = {
            "TITLE": f"{command.room} {time.strftime('%Y-%m-%d %H:%M UTC', started)}",
            "DATE": time.strftime("%Y-%m-%dT%H:%M:%SZ", started),
            "SALON_ROOM": command.room,
            "SALON_RECORDING": command.recording,
        }
        skew = self.clock() - command.at
        if abs(skew) > MAX_CLOCK_SKEW:
            log.error(
                "cannot start recording %s of %s: its start time is %.0f s from the "
                "recorder's clock",
                command.recording,
                command.room,
                skew,
            )
            self._record_failure(replace(info, status="failed", ended_at=command.at))
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            recorder = RoomRecorder(
                path, command.at, comments=comments, hold=self.hold, bitrate=self.bitrate
            )
        except Exception:
            log.exception("cannot start recording %s of %s", command.recording, command.room)
            self._record_failure(replace(info, status="failed", ended_at=command.at))
            return
        self._active[command.recording] = _Active(info, command.outlet, recorder)
        self._disk_checked_at = float("-inf")  # a full disk stops a new recording at once
        self._safe_index(self.index.begin, info)
        log.info("recording %s of %s started: %s", command.recording, command.room, path)

    def _guarded(self, rid: str, work: Callable[[], Any]) -> None:
        active = self._active.get(rid)
        if active is None:
            return
        started = time.thread_time()
        try:
            work()
        except Exception:
            log.exception("recording %s of %s failed", rid, active.info.room)
            del self._active[rid]
            active.recorder.abort()
            self._record_failure(replace(active.info, status="failed", ended_at=self.clock()))
        finally:
            active.cpu += time.thread_time() - started

    def _finish(self, rid: str, ended_at: float) -> None:
        active = self._active.pop(rid, None)
        if active is None:
            return
        started = time.thread_time()
        try:
            result = active.recorder.finish(ended_at)
        except Exception:
            log.exception("recording %s of %s failed at the end", rid, active.info.room)
            active.recorder.abort()
            self._record_failure(replace(active.info, status="failed", ended_at=ended_at))
            return
        active.cpu += time.thread_time() - started
        info = replace(
            active.info,
            ended_at=ended_at,
            duration=result.duration,
            speakers=result.speakers,
            status="complete",
            bytes=result.bytes,
        )
        stats = active.recorder.stats
        with self._stats_lock:
            self._stats.completed += 1
            self._stats.datagrams += stats.datagrams
            self._stats.drops.update(stats.drops)
            if active.outlet.dropped:
                self._stats.drops["queue_full"] += active.outlet.dropped
            self._stats.cpu_seconds += active.cpu
            self._stats.audio_seconds += result.duration
        self._safe_index(self.index.finish, info)
        log.info(
            "recording %s of %s complete: %.1f s, speakers %s, %d datagrams dropped, %.3f s CPU",
            rid,
            info.room,
            result.duration,
            ", ".join(result.speakers) or "none",
            sum(stats.drops.values()) + active.outlet.dropped,
            active.cpu,
        )

    def _record_failure(self, info: RecordingInfo) -> None:
        with self._stats_lock:
            self._stats.failed += 1
        self._safe_index(self.index.finish, info)
        if self.on_failure is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self.on_failure, info.room, info.id)
            except RuntimeError:
                pass  # the loop is closed: salond is stopping anyway

    @staticmethod
    def _safe_index(method: Callable[[RecordingInfo], None], info: RecordingInfo) -> None:
        try:
            method(info)
        except Exception:
            log.exception("cannot index recording %s", info.id)


def _disk_use(directory: Path) -> int:
    """Bytes of the files in ``directory`` (the recordings), 0 if it cannot be read."""
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    except OSError:
        return 0
    return total


def _receive(recorder: RoomRecorder, batch: list[bytes], now: float, trusted: bool) -> None:
    recorder.receive_batch(batch, now, trusted)
