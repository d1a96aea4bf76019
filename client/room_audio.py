"""Audio in a room: keeps the media keys from the server's events, runs the 20 ms clock.

Each tick it encodes and sends one frame of the source (when the server has given this client
a flow and it is unmuted) and pulls one mixed frame of everyone else for the sink.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

from salon.client.connection import SalonClient
from salon.daemon.wire import messages as msg
from salon.media.codec import OpusEncoder
from salon.media.streams import RED_FLOW_SPAN, MediaReceiver, MediaSender

from .stream_player import StreamPlayer

log = logging.getLogger("salon.client.audio")

FRAME_SECONDS = 0.020
SILENCE = bytes(960 * 2)
REPORT_INTERVAL = 1.5
"""Seconds between two receiver reports (PROTOCOL.md asks for one every 1 to 2 s)."""


class RoomAudio:
    """Speaks ``source`` frames and hands mixed received frames to ``sink``."""

    def __init__(
        self,
        client: SalonClient,
        *,
        source: Iterator[bytes] | None = None,
        sink: Callable[[bytes], None] | None = None,
        bitrate: int = 32000,
        auto_unmute: bool = False,
        first_sequence_number: int | None = None,
        red_flow_span: int = RED_FLOW_SPAN,
    ) -> None:
        self.client = client
        self.red_flow_span = red_flow_span
        """How far back the far copy of this speaker's redundancy flow packets reaches."""
        self.source = source
        self.sink = sink
        self.bitrate = bitrate
        self.auto_unmute = auto_unmute
        self.first_sequence_number = first_sequence_number
        """RTP sequence number of the first own flow (random if None; for tests of the wrap)."""
        self.receiver = MediaReceiver()
        self.sender: MediaSender | None = None
        self.muted = True
        self.muted_by_moderator = False
        self.hand_raised = False
        self.levels: dict[str, int] = {}
        self.frames_sent = 0
        self.frames_played = 0
        self.source_done = False
        self.on_frame_sent: Callable[[int, float], None] | None = None
        self.on_frame_played: Callable[[bytes, float], None] | None = None
        self.loss_reports: list[msg.LossReport] = []
        """The server's ``loss_report`` events about this client's own flow (the last 100)."""
        self.reports_sent = 0
        self._next_report = 0.0
        self._report_task: asyncio.Task[Any] | None = None
        self._unmute_task: asyncio.Task[Any] | None = None
        self.stream: StreamPlayer | None = None
        """The room's stream while the server has this client in stream mode."""
        self.on_stream: Callable[[str | None], None] | None = None
        """Called with the playlist URL when switched to the stream, None when back to real time."""
        self._attach(client)

    def rebind(self, client: SalonClient) -> None:
        """Carry on over a new connection (after a reconnect), before it rejoins the room.

        The old connection's flows and keys are gone with it: the sender and receiver start
        afresh and learn the new keys from the ``room_state`` of the rejoin.
        """
        if client is self.client:
            return
        self.client.on_datagram = None
        self.client = client
        self._set_stream(None, announce=False)
        self.sender = None
        self.receiver = MediaReceiver()
        self.levels = {}
        self.muted = True
        self.muted_by_moderator = False
        self.hand_raised = False
        self._attach(client)

    def _attach(self, client: SalonClient) -> None:
        def on_event(event: Any) -> None:
            if client is self.client:  # not a late event of a replaced connection
                self._on_event(event)

        client.add_listener(on_event)
        client.on_datagram = self._on_datagram

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Any) -> None:
        if isinstance(event, msg.RoomState):
            for key in event.room.media_keys:
                self._add_key(key)
            for participant in event.room.participants:
                if participant.user == self.client.user:
                    self._set_mute(participant)
        elif isinstance(event, msg.MediaKeyEvent):
            self._add_key(event.key)
        elif isinstance(event, msg.MediaKeyRevoked):
            if event.user == self.client.user:
                # A rotated flow is revoked after its successor's key came: keep sending.
                if self.sender is not None and self.sender.flow_id == event.flow_id:
                    self.sender = None
            else:
                self.receiver.remove_speaker(event.flow_id)
        elif isinstance(event, msg.ParticipantUpdated):
            if event.participant.user == self.client.user:
                self._set_mute(event.participant)
        elif isinstance(event, msg.Muted):
            self.muted = True
            self.muted_by_moderator = True
        elif isinstance(event, msg.LossReport):
            sender = self.sender
            if sender is not None and sender.flow_id == event.flow_id:
                self.loss_reports = [*self.loss_reports[-99:], event]
                if sender.on_loss_report(event.loss, event.red, event.red_flow):
                    log.info(
                        "redundancy now %d, redundancy flow %s (loss %.1f%%)",
                        sender.redundancy,
                        "on" if sender.red_flow_on else "off",
                        event.loss * 100,
                    )
        elif isinstance(event, (msg.RoomClosed, msg.Removed)):
            self.sender = None
            self.receiver = MediaReceiver()
            self._set_stream(None, announce=False)
        elif isinstance(event, msg.Stream):
            self._set_stream(event.playlist)

    def _set_stream(self, playlist: str | None, *, announce: bool = True) -> None:
        """Play the room's stream (PROTOCOL.md section 16), or real-time media again."""
        old = self.stream
        if old is not None and (playlist is None or playlist != old.playlist_url):
            self.stream = None
            old.cancel()
        if playlist is not None and self.stream is None:
            self.stream = StreamPlayer(playlist)
            self.stream.start()
        if announce and self.on_stream is not None and (old is None) != (playlist is None):
            self.on_stream(playlist)

    def _set_mute(self, participant: msg.Participant) -> None:
        self.muted = participant.muted
        self.muted_by_moderator = participant.muted_by_moderator
        self.hand_raised = participant.hand_raised
        if self.sender is not None and self.muted and self.auto_unmute:
            self._request_unmute()

    def _add_key(self, key: msg.MediaKey) -> None:
        if key.user == self.client.user:
            sender = self.sender
            if sender is not None and (sender.flow_id, sender.ssrc) == (key.flow_id, key.ssrc):
                return  # the same key again (snapshot and event): keep the SRTP context
            # A new own key (a new stage turn, or the server rotated the flow at a sequence
            # number wrap): a fresh SRTP send context and sequence number (PROTOCOL.md 11.3).
            self.sender = MediaSender(
                key.flow_id,
                key.ssrc,
                key.key,
                OpusEncoder(bitrate=self.bitrate),
                sequence_number=self.first_sequence_number,
                bitrate_bounds=self._bitrate_bounds(),
                red_flow_span=self.red_flow_span,
            )
            if key.red_flow is not None:
                red = key.red_flow
                self.sender.set_red_flow(red.flow_id, red.ssrc, red.key)
            self.first_sequence_number = None
            if self.auto_unmute and self.muted:
                self._request_unmute()
        else:
            self.receiver.add_speaker(key.user, key.flow_id, key.ssrc, key.key)
            if key.red_flow is not None:
                red = key.red_flow
                self.receiver.add_red_flow(key.flow_id, red.flow_id, red.ssrc, red.key)

    def _bitrate_bounds(self) -> tuple[int, int]:
        """The server's ``min_bitrate`` and ``max_bitrate``; our own bitrate if it sent none."""
        limits = self.client.limits
        try:
            minimum = int(limits.get("min_bitrate", self.bitrate))
            maximum = int(limits.get("max_bitrate", self.bitrate))
        except (TypeError, ValueError):
            return self.bitrate, self.bitrate
        # Opus encodes 6 to 510 kbit/s; whatever the server says stays inside that.
        minimum, maximum = max(6000, minimum), min(510000, maximum)
        if minimum > maximum:
            return self.bitrate, self.bitrate
        return minimum, maximum

    def _request_unmute(self) -> None:
        if self.muted_by_moderator or (self._unmute_task and not self._unmute_task.done()):
            return
        self._unmute_task = asyncio.ensure_future(self._unmute())

    def _send_reports(self) -> None:
        reports = self.receiver.reports()
        client = self.client
        if not reports or client.closed or client.room is None:
            return
        if self._report_task is not None and not self._report_task.done():
            return  # the previous report is still unanswered (a lossy path): skip this one
        request = msg.ReceiverReport(
            id=0,
            reports=[
                msg.FlowReception(
                    flow_id=r.flow_id,
                    expected=min(r.expected, msg.MAX_REPORT_PACKETS),
                    lost=min(r.lost, r.expected, msg.MAX_REPORT_PACKETS),
                    late=min(r.late, r.expected, msg.MAX_REPORT_PACKETS),
                    jitter_ms=min(r.jitter_ms, 10_000.0),
                )
                for r in reports[: msg.MAX_REPORTED_FLOWS]
            ],
        )
        self.reports_sent += 1
        self._report_task = asyncio.ensure_future(self._report(request))

    async def _report(self, request: msg.ReceiverReport) -> None:
        try:
            await self.client.request(request)
        except Exception as exc:  # a report is advisory: a refusal or a lost connection is fine
            log.debug("receiver report not taken: %s", exc)

    async def _unmute(self) -> None:
        try:
            await self.client.call("unmute")
        except Exception as exc:  # the server's refusal is an answer, not a failure
            log.info("unmute refused: %s", exc)

    def _on_datagram(self, data: bytes) -> None:
        self.receiver.receive(data, asyncio.get_running_loop().time())

    # ------------------------------------------------------------------ clock

    @property
    def speaking_allowed(self) -> bool:
        return self.sender is not None and not self.muted and not self.client.closed

    def tick(self, now: float) -> None:
        """One 20 ms step: send a frame if allowed, play one mixed frame."""
        if self.source is not None and self.speaking_allowed and not self.source_done:
            frame = next(self.source, None)
            if frame is None:
                self.source_done = True
            else:
                assert self.sender is not None
                datagram = self.sender.send_pcm(frame)
                if datagram is not None:
                    self.client.send_datagram(datagram)
                    repair = self.sender.red_flow_datagram
                    if repair is not None:
                        self.client.send_datagram(repair)
                self.frames_sent += 1
                if self.on_frame_sent is not None:
                    self.on_frame_sent(self.frames_sent, now)
        stream = self.stream
        if stream is not None:
            levels: dict[str, int] = {}
            pcm = stream.pull() or SILENCE
        else:
            pcm, levels = self.receiver.pull(now)
        self.levels = levels
        if now >= self._next_report:
            self._next_report = now + REPORT_INTERVAL
            self._send_reports()
        self.frames_played += 1
        if self.sink is not None:
            self.sink(pcm)
        if self.on_frame_played is not None:
            self.on_frame_played(pcm, now)

    async def run(
        self,
        duration: float | None = None,
        stop: asyncio.Event | None = None,
        *,
        across_reconnects: bool = False,
    ) -> None:
        """Tick every 20 ms on a drift-free schedule until ``duration`` or ``stop``.

        It ends when the connection closes, unless ``across_reconnects``: then it keeps ticking
        (silence for the sink, nothing sent) until :meth:`rebind` gives it a new connection.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        ticks = 0
        while across_reconnects or not self.client.closed:
            now = loop.time()
            if duration is not None and now - start >= duration:
                return
            if stop is not None and stop.is_set():
                return
            self.tick(now)
            ticks += 1
            deadline = start + ticks * FRAME_SECONDS
            delay = deadline - loop.time()
            if delay < -0.2:
                # We fell far behind (a stalled loop): skip ahead rather than burst frames.
                ticks = int((loop.time() - start) / FRAME_SECONDS) + 1
                delay = start + ticks * FRAME_SECONDS - loop.time()
            await asyncio.sleep(max(0.0, delay))
