"""Levels measured from the audio itself, for server features that must not trust senders.

The RFC 6464 level in each packet's clear header is what the *sender* says; a client can put
anything there. :class:`AudioMonitor` taps every stage member's flow through the core
(:meth:`~salon.daemon.core.service.SalonCore.add_monitor`, a bounded outlet the forwarder
treats like one more listener), and on its own worker thread unprotects each datagram with the
flow's SRTP key, decodes the Opus frame and measures its level. Nothing runs on the forwarding
path; a worker that falls behind loses the oldest datagrams (counted), never anyone's audio.

Readers (a plugin, on the event loop) get a snapshot with :meth:`AudioMonitor.levels`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from salon.daemon.core import events
from salon.daemon.core.forwarder import Outlet
from salon.daemon.wire.messages import MediaKey
from salon.media.codec import CodecError, OpusDecoder
from salon.media.levels import audio_level
from salon.media.red import RedError, primary_opus
from salon.media.srtp import SrtpError, SrtpReceiver, key_from_base64

log = logging.getLogger("salon.monitor")

DEFAULT_QUEUE = 4096
"""Datagrams the monitor's outlet holds (about 80 s of one speaker)."""
DEFAULT_POLL = 0.05
"""Seconds between two drains of the outlet."""
SMOOTHING = 0.3
"""Weight of the newest frame in a member's smoothed level (as the core's speaking levels)."""
SILENCE = 127


@dataclass(frozen=True)
class MeasuredLevel:
    """One stage member's level as decoded by the monitor."""

    user: str
    level: float
    """Smoothed level in -dBov (0 loudest, 127 silence), measured on the decoded audio."""
    at: float
    """When the last frame was measured (the monitor's clock)."""


class _Flow:
    __slots__ = ("decoder", "level", "room", "ssrc", "updated", "user")

    def __init__(self, room: str, key: MediaKey) -> None:
        self.room = room
        self.user = key.user
        self.ssrc = key.ssrc
        self.decoder = OpusDecoder()
        self.level = float(SILENCE)
        self.updated = 0.0


class AudioMonitor:
    """Decodes every stage member's audio off the forwarding path and measures its level."""

    def __init__(
        self,
        core: Any,
        *,
        limit: int = DEFAULT_QUEUE,
        poll: float = DEFAULT_POLL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        """The daemon's :class:`~salon.daemon.core.service.SalonCore`."""
        self.limit = limit
        self.poll = poll
        self.clock = clock
        self.frames = 0
        """Frames decoded and measured."""
        self.drops: dict[str, int] = {}
        """Datagrams not measured, by reason (``auth_failed``, ``malformed``...)."""
        self._outlet: Outlet | None = None
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._flows: dict[int, _Flow] = {}
        self._srtp = SrtpReceiver()
        self._levels: dict[tuple[str, str], MeasuredLevel] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def dropped(self) -> int:
        """Datagrams lost to the outlet's bound (the worker fell behind)."""
        return self._outlet.dropped if self._outlet is not None else 0

    # ------------------------------------------------------------------ event loop side

    def start(self, thread: bool = True) -> None:
        """Tap every flow, now and later, and start the worker thread (``thread`` false: no
        thread, the caller calls :meth:`pump`)."""
        if self._outlet is not None:
            return
        self._outlet, keys = self.core.add_monitor(self.limit)
        for room, key in keys:
            self._commands.put(("open", (room, key)))
        if not thread:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="salon-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Untap and stop the worker (it finishes the batch in hand)."""
        if self._outlet is not None:
            self.core.remove_monitor(self._outlet)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._thread = None
        self._outlet = None

    def on_core_event(self, event: events.CoreEvent) -> None:
        """Observer of the core's events: learn the keys of flows opened later."""
        if isinstance(event, events.FlowOpened):
            self._commands.put(("open", (event.room, event.key)))
        elif isinstance(event, events.FlowClosed):
            self._commands.put(("close", event.flow_id))

    def levels(self, room: str, max_age: float = 0.5) -> dict[str, MeasuredLevel]:
        """Each member of ``room`` measured within the last ``max_age`` seconds, by user."""
        now = self.clock()
        with self._lock:
            return {
                user: level
                for (r, user), level in self._levels.items()
                if r == room and now - level.at <= max_age
            }

    # ------------------------------------------------------------------ worker thread

    def pump(self) -> None:
        """One round of the worker's work on the calling thread (tests)."""
        outlet = self._outlet
        batch = outlet.take_all() if outlet is not None else []
        self._apply_commands()
        self._measure(batch)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.pump()
            except Exception:
                log.exception("audio monitor failed on a batch")

    def _apply_commands(self) -> None:
        while True:
            try:
                kind, value = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "open":
                room, key = value
                self._srtp.remove(key.flow_id)
                self._srtp.add(key.flow_id, key.ssrc, key_from_base64(key.key))
                self._flows[key.flow_id] = _Flow(room, key)
            else:
                flow = self._flows.pop(value, None)
                self._srtp.remove(value)
                if flow is not None:
                    with self._lock:
                        self._levels.pop((flow.room, flow.user), None)

    def _measure(self, batch: list[bytes]) -> None:
        now = self.clock()
        touched: list[_Flow] = []
        for datagram in batch:
            try:
                flow_id, packet = self._srtp.open(datagram)
            except SrtpError as exc:
                self._drop(exc.reason)
                continue
            flow = self._flows[flow_id]  # open() refused flows the receiver does not know
            try:
                pcm = flow.decoder.decode(primary_opus(packet.payload_type, packet.payload))
            except (CodecError, RedError):
                self._drop("malformed")
                continue
            flow.level += (audio_level(pcm) - flow.level) * SMOOTHING
            flow.updated = now
            self.frames += 1
            touched.append(flow)
        if touched:
            with self._lock:
                for flow in touched:
                    self._levels[(flow.room, flow.user)] = MeasuredLevel(
                        flow.user, flow.level, flow.updated
                    )

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
