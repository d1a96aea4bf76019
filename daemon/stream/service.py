"""Stream mode: each room's mix as HLS for listeners past real time (docs/stream_mode.md).

On the event loop, :class:`StreamService` observes the core's events and decides who streams:
an audience member who joins a room already carrying ``[stream] realtime_listeners`` real-time
listeners, or who asks (``set_stream``). It takes them out of the room's real-time fan-out
(:meth:`~salon.daemon.core.service.SalonCore.set_realtime`) and sends them a ``stream`` event
with a playlist URL signed for them. Brought on stage, they go back to real time (a ``stream``
event with no playlist); moved back to the audience, they return to the stream.

A room's mix is made once, only while someone in it streams: a worker thread taps every stage
flow (the core's monitor tap, a bounded outlet), decodes each speaker with the media library's
SRTP, jitter buffer, Opus decoder and mixer exactly as a real-time listener does, and feeds the
mix to :class:`~.segmenter.HlsSegmenter`. The HTTP handlers (:mod:`.http`) serve the window of
segments it keeps in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salon.daemon.config import StreamConfig
from salon.daemon.core import events
from salon.daemon.core.errors import CoreError
from salon.daemon.core.forwarder import Outlet
from salon.daemon.wire import messages
from salon.daemon.wire.datagram import unpack_datagram
from salon.daemon.wire.errors import WireError
from salon.daemon.wire.messages import ErrorCode, MediaKey
from salon.media.jitter import JitterBuffer
from salon.media.streams import MediaReceiver

from .access import StreamSigner
from .segmenter import FRAME_SAMPLES, SAMPLE_RATE, HlsSegmenter, Window

log = logging.getLogger("salon.stream")

FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
TAP_QUEUE = 8192
"""Datagrams the worker's tap holds (a few seconds of many speakers)."""
POLL = 0.02
"""Seconds between two rounds of the worker (one frame)."""
LINGER = 10.0
"""Seconds a room's mix goes on after its last stream listener left (one who comes straight
back keeps the same stream and the caches' copies)."""
MAX_CATCH_UP = 2.0
"""A worker this far behind the clock skips the gap rather than mixing it all at once."""
MIX_JITTER = functools.partial(JitterBuffer, initial_delay=0.2, min_delay=0.1, max_delay=0.6)
"""The mix's jitter buffers: the stream is seconds behind anyway, so they wait longer than a
real-time listener's (40 ms) and ride out a worker that ran late on a loaded machine."""
EXTRA_SEGMENTS = 3
"""Segments kept beyond the playlist's window, for listeners and caches a little behind."""


@dataclass
class RoomStreamStats:
    """One room's stream mode, for the console, ``salonctl`` and metrics."""

    room: str
    realtime_listeners: int
    stream_listeners: int
    mixing: bool
    segments: int
    """Segments the mix produced since it started."""
    segments_served: int
    """Segment and init responses the origin sent (each cache miss counts one)."""
    playlists_served: int
    bytes_served: int
    refused: int
    """Requests refused with 403 (no or bad token, not a member, bad signature)."""
    max_fetches_per_segment: int
    """Most times the origin sent one segment (1 behind a cache that works)."""
    cpu_seconds: float
    """Worker CPU time spent mixing and segmenting this room."""


@dataclass
class _Room:
    id: str
    members: dict[str, tuple[int, str]] = field(default_factory=dict)
    """user -> (session, role)."""
    streaming: dict[int, str] = field(default_factory=dict)
    """Sessions in stream mode -> user."""
    wants_stream: set[int] = field(default_factory=set)
    """Sessions that stream whenever they are in the audience (asked, or placed there)."""
    epoch: str = ""
    """The running mix's id (in its URLs, so that a new mix never meets an old one in a cache);
    empty: no mix."""
    linger_until: float | None = None
    segments_served: int = 0
    playlists_served: int = 0
    bytes_served: int = 0
    refused: int = 0
    served_by_segment: dict[int, int] = field(default_factory=dict)
    """Times the origin sent each recent segment (behind a cache: once, twice at worst)."""
    max_fetches_per_segment: int = 0

    def realtime_listeners(self) -> int:
        return sum(
            1
            for session, role in self.members.values()
            if role == "listener" and session not in self.streaming
        )


class _Mix:
    """A room's mix (worker thread only)."""

    def __init__(self, room: str, epoch: str, segmenter: HlsSegmenter, now: float) -> None:
        self.room = room
        self.epoch = epoch
        self.receiver = MediaReceiver(MIX_JITTER)
        self.segmenter = segmenter
        self.next_frame = now
        self.segments = 0
        self.cpu = 0.0

    def advance(self, now: float) -> None:
        if now - self.next_frame > MAX_CATCH_UP:
            # The worker stalled: keep the stream's timeline, lose the gap's audio.
            while now - self.next_frame > FRAME_SECONDS:
                self.segments += len(self.segmenter.write(bytes(2 * FRAME_SAMPLES)))
                self.next_frame += FRAME_SECONDS
        while self.next_frame <= now:
            pcm, _ = self.receiver.pull(now)
            self.segments += len(self.segmenter.write(pcm))
            self.next_frame += FRAME_SECONDS


class StreamService:
    """Who streams, each room's mix and its segment window; a daemon component and observer."""

    def __init__(
        self,
        config: StreamConfig,
        core: Any,
        deliver: Callable[[tuple[int, ...], messages.Event], None],
        scratch: Path,
        *,
        base_url: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.core = core
        """The daemon's :class:`~salon.daemon.core.service.SalonCore`."""
        self.deliver = deliver
        self.scratch = scratch
        """Where FFmpeg's muxer writes each segment before it moves into memory."""
        self.base_url = base_url
        """The URL prefix clients fetch ``/stream/...`` from (called per use)."""
        self.clock = clock
        self.signer = StreamSigner()
        self.rooms: dict[str, _Room] = {}
        self.windows: dict[str, tuple[str, Window]] = {}
        """Room -> (epoch, window): what the HTTP handlers serve; replaced whole by the worker."""
        self._flows: dict[int, tuple[str, MediaKey]] = {}
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._outlet: Outlet | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._mixes: dict[str, _Mix] = {}
        self._windows_lock = threading.Lock()
        self._ticker: asyncio.Future[None] | None = None
        self._mix_stats: dict[str, tuple[int, float]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._ticker = asyncio.ensure_future(self._tick_forever())
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="salon-stream", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(5.0)
        self._thread = None
        if self._outlet is not None:
            self.core.remove_monitor(self._outlet)
            self._outlet = None
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------------ decisions (event loop)

    def on_core_event(self, event: events.CoreEvent) -> None:
        """Observer of the core's events; never blocks."""
        room: _Room | None
        if isinstance(event, events.MemberJoined):
            room = self.rooms.setdefault(event.room, _Room(event.room))
            room.members[event.user] = (event.session, event.role)
            threshold = self.config.realtime_listeners
            if (
                self.config.enabled
                and event.role == "listener"
                and room.realtime_listeners() > threshold
            ):
                room.wants_stream.add(event.session)
                self._to_stream(room, event.session, event.user)
        elif isinstance(event, events.MemberLeft):
            room = self.rooms.get(event.room)
            if room is None:
                return
            if room.members.get(event.user, (None, ""))[0] == event.session:
                del room.members[event.user]
            room.wants_stream.discard(event.session)
            if room.streaming.pop(event.session, None) is not None:
                self._maybe_linger(room)
            if not room.members:
                self._drop_room(room)
        elif isinstance(event, events.RoleChanged):
            room = self.rooms.get(event.room)
            if room is None or event.user not in room.members:
                return
            session, _ = room.members[event.user]
            room.members[event.user] = (session, event.new)
            if event.new != "listener" and session in room.streaming:
                self._to_realtime(room, session)
            elif event.new == "listener" and session in room.wants_stream:
                self._to_stream(room, session, event.user)
        elif isinstance(event, events.RoomClosed):
            room = self.rooms.get(event.room)
            if room is not None:
                self._drop_room(room)
        elif isinstance(event, events.FlowOpened):
            self._flows[event.key.flow_id] = (event.room, event.key)
            if event.room in self.windows:
                self._commands.put(("add", (event.room, event.key)))
        elif isinstance(event, events.FlowClosed):
            found = self._flows.pop(event.flow_id, None)
            if found is not None and found[0] in self.windows:
                self._commands.put(("remove", (found[0], event.flow_id)))

    def set_stream(self, session: int, on: bool) -> dict[str, Any]:
        """The ``set_stream`` request: stream whenever in the audience, or real time."""
        if not self.config.enabled:
            raise CoreError(ErrorCode.STREAM_UNAVAILABLE, "this server offers no stream mode")
        room_id = self.core.session_room(session)
        room = self.rooms.get(room_id) if room_id is not None else None
        identity = self.core.identity(session)
        if room is None or identity is None or identity.user not in room.members:
            raise CoreError(ErrorCode.NOT_IN_ROOM, "you are not in a room")
        _, role = room.members[identity.user]
        if on:
            room.wants_stream.add(session)
            if role != "listener":
                raise CoreError(ErrorCode.ALREADY_ON_STAGE, "the stage is always in real time")
            self._to_stream(room, session, identity.user)
        else:
            room.wants_stream.discard(session)
            if session in room.streaming:
                self._to_realtime(room, session)
        return {}

    def _to_stream(self, room: _Room, session: int, user: str) -> None:
        if session in room.streaming or not self.core.set_realtime(session, False):
            return
        room.streaming[session] = user
        room.linger_until = None
        if not room.epoch:
            self._start_mix(room)
        self.deliver(
            (session,),
            messages.Stream(room=room.id, playlist=self.playlist_url(room, session, user)),
        )
        log.info("%s in %s: stream mode", user, room.id)

    def _to_realtime(self, room: _Room, session: int) -> None:
        user = room.streaming.pop(session, None)
        self.core.set_realtime(session, True)
        self.deliver((session,), messages.Stream(room=room.id, playlist=None))
        self._maybe_linger(room)
        log.info("%s in %s: real time", user, room.id)

    def playlist_url(self, room: _Room, session: int, user: str) -> str:
        token = self.signer.playlist_token(room.id, session, user)
        return f"{self.base_url().rstrip('/')}/stream/{room.id}/live.m3u8?t={token}"

    def _maybe_linger(self, room: _Room) -> None:
        if not room.streaming and room.epoch:
            room.linger_until = self.clock() + LINGER

    def _drop_room(self, room: _Room) -> None:
        if room.epoch:
            self._stop_mix(room)
        self.rooms.pop(room.id, None)

    def _start_mix(self, room: _Room) -> None:
        room.epoch = os.urandom(8).hex()
        if self._outlet is None:
            self._outlet, keys = self.core.add_monitor(TAP_QUEUE)
            for room_id, key in keys:
                self._flows[key.flow_id] = (room_id, key)
        with self._windows_lock:
            self.windows[room.id] = (room.epoch, Window())
        self._commands.put(("start", (room.id, room.epoch)))
        for flow_room, key in list(self._flows.values()):
            if flow_room == room.id:
                self._commands.put(("add", (room.id, key)))
        log.info("stream of %s started (epoch %s)", room.id, room.epoch)

    def _stop_mix(self, room: _Room) -> None:
        self._commands.put(("stop", room.id))
        with self._windows_lock:
            self.windows.pop(room.id, None)
        log.info("stream of %s stopped", room.id)
        room.epoch = ""
        room.linger_until = None
        if not self.windows and self._outlet is not None:
            self.core.remove_monitor(self._outlet)
            self._outlet = None

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.tick()

    def tick(self) -> None:
        """End the mixes whose listeners are gone for good (called from the event loop)."""
        now = self.clock()
        for room in list(self.rooms.values()):
            if room.linger_until is not None and now >= room.linger_until and not room.streaming:
                self._stop_mix(room)

    # ------------------------------------------------------------------ HTTP side

    def member_token_ok(self, room_id: str, token: str) -> bool:
        """Whether ``token`` is a current member's playlist token for ``room_id``."""
        room = self.rooms.get(room_id)
        session = self.signer.token_session(token)
        if room is None or session is None or self.core.session_room(session) != room_id:
            return False
        identity = self.core.identity(session)
        if identity is None or room.members.get(identity.user, (None, ""))[0] != session:
            return False
        return self.signer.check_playlist_token(room_id, token, identity.user)

    def stats(self) -> list[RoomStreamStats]:
        result = []
        for room in self.rooms.values():
            segments, cpu = self._mix_stats.get(room.id, (0, 0.0))
            result.append(
                RoomStreamStats(
                    room=room.id,
                    realtime_listeners=room.realtime_listeners(),
                    stream_listeners=len(room.streaming),
                    mixing=bool(room.epoch),
                    segments=segments,
                    segments_served=room.segments_served,
                    playlists_served=room.playlists_served,
                    bytes_served=room.bytes_served,
                    refused=room.refused,
                    max_fetches_per_segment=room.max_fetches_per_segment,
                    cpu_seconds=cpu,
                )
            )
        return result

    def room_stats(self, room_id: str) -> RoomStreamStats | None:
        for stats in self.stats():
            if stats.room == room_id:
                return stats
        return None

    # ------------------------------------------------------------------ worker thread

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            try:
                self.pump()
            except Exception:
                log.exception("stream worker failed on a round")
        for mix in self._mixes.values():
            mix.segmenter.close()
        self._mixes.clear()

    def pump(self) -> None:
        """One round of the worker: datagrams first, then commands, then the mixes' frames."""
        outlet = self._outlet
        batch = outlet.take_all() if outlet is not None else []
        self._apply_commands()
        now = self.clock()
        by_flow = {}
        for mix in self._mixes.values():
            for flow_id in mix.receiver.speakers:
                by_flow[flow_id] = mix
        for datagram in batch:
            try:
                flow_id, _ = unpack_datagram(datagram)
            except WireError:
                continue
            target = by_flow.get(flow_id)
            if target is not None:
                target.receiver.receive(datagram, now)
        for room_id, mix in list(self._mixes.items()):
            started = time.thread_time()
            try:
                mix.advance(now)
            except Exception:
                log.exception("stream of %s failed and stopped", room_id)
                mix.segmenter.close()
                del self._mixes[room_id]
                continue
            mix.cpu += time.thread_time() - started
            with self._windows_lock:
                current = self.windows.get(room_id)
                if current is not None and current[0] == mix.epoch:
                    self.windows[room_id] = (mix.epoch, mix.segmenter.window)
            self._mix_stats[room_id] = (mix.segments, mix.cpu)

    def _apply_commands(self) -> None:
        while True:
            try:
                kind, value = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "start":
                room_id, epoch = value
                old = self._mixes.pop(room_id, None)
                if old is not None:
                    old.segmenter.close()
                now = self.clock()
                segmenter = HlsSegmenter(
                    self.scratch / f"{room_id}-{epoch}",
                    started_at=now,
                    segment_seconds=self.config.segment_seconds,
                    keep=self.config.window + EXTRA_SEGMENTS,
                    bitrate=self.config.bitrate,
                )
                self._mixes[room_id] = _Mix(room_id, epoch, segmenter, now)
            elif kind == "stop":
                stopped = self._mixes.pop(value, None)
                if stopped is not None:
                    stopped.segmenter.close()
            elif kind == "add":
                room_id, key = value
                mix = self._mixes.get(room_id)
                if mix is not None:
                    mix.receiver.add_speaker(key.user, key.flow_id, key.ssrc, key.key)
            elif kind == "remove":
                room_id, flow_id = value
                mix = self._mixes.get(room_id)
                if mix is not None:
                    mix.receiver.remove_speaker(flow_id)
