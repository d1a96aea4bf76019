"""Recordings and monitors: start and stop, per-stage-turn consent, taps on the flows."""

from __future__ import annotations

from typing import Any

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from . import events
from .context import Actor, Concern
from .errors import CoreError
from .forwarder import Outlet
from .ids import random_token
from .permissions import Action, check
from .recording import Recording
from .results import ConsentResult, RecordingResult, Result
from .room import Member, Room, check_flag

RECORDING_ID_BYTES = 9
SERVER_ACTOR = "salond"
"""The audit log's actor for what the server itself decided (e.g. a recording's bound)."""
"""Random bytes of a recording id (12 URL-safe characters)."""


class RecordingControl(Concern):
    """What is recorded: only the stage members who consented, for their current turn."""

    def start_recording(self, actor: Actor, request: messages.StartRecording, now: float) -> Result:
        room = actor.room
        check(Action.START_RECORDING, actor.role)
        if room.active_recording is not None:
            raise CoreError(
                ErrorCode.ALREADY_RECORDING, f"room {room.id} is already being recorded"
            )
        recording_id = random_token(self.random_bytes, RECORDING_ID_BYTES)
        if recording_id.startswith("-"):
            # Never looks like an option on a command line (``salonctl recordings ID``).
            recording_id = "_" + recording_id[1:]
        outlet = Outlet(next(self.ctx.tap_sessions), self.limits.recording_queue)
        room.active_recording = Recording(recording_id, room.id, actor.user, now, outlet)
        room.recording = True
        self._emit(events.RecordingStarted(room.id, recording_id, actor.user, now, outlet))
        self._to_members(
            room, messages.RecordingStarted(room=room.id, by=actor.user, recording=recording_id)
        )
        self._counts_changed(room)
        for member in list(room.stage_members.values()):
            self.ask_consent(room, member)
        self._moderation(actor, "start_recording", None, recording=recording_id)
        return RecordingResult(recording_id)

    def stop_recording(self, actor: Actor, request: messages.StopRecording, now: float) -> Result:
        room = actor.room
        check(Action.STOP_RECORDING, actor.role)
        recording = room.active_recording
        if recording is None:
            raise CoreError(ErrorCode.NOT_RECORDING, f"room {room.id} is not being recorded")
        self.end_recording(room, actor.user, "stopped", now)
        self._moderation(actor, "stop_recording", None, recording=recording.id)
        return RecordingResult(recording.id)

    def recording_consent(
        self, actor: Actor, request: messages.RecordingConsent, now: float
    ) -> Result:
        member = self._self(actor)
        check(Action.RECORDING_CONSENT, member.role)
        room = actor.room
        recording = room.active_recording
        if recording is None:
            raise CoreError(ErrorCode.NOT_RECORDING, f"room {room.id} is not being recorded")
        consent = check_flag("consent", request.consent)
        recording.consent[member.user] = consent
        self.sync_recorded(room, member)
        return ConsentResult(consent, recording.id)

    def abort_recording(
        self, room_id: str, recording_id: str, reason: str, now: float, **detail: Any
    ) -> bool:
        """End a recording from outside a request (its recorder failed, it reached a bound);
        False if not running.

        The room's members get ``recording_stopped`` with ``reason``, as after a host's stop;
        the audit log gets a ``stop_recording`` by :data:`SERVER_ACTOR` with ``reason`` and
        ``detail``.
        """
        room = self.rooms.get(room_id)
        recording = room.active_recording if room is not None else None
        if room is None or recording is None or recording.id != recording_id:
            return False
        self.end_recording(room, "", reason, now)
        self._emit(
            events.ModerationTaken(
                room.id,
                SERVER_ACTOR,
                "stop_recording",
                None,
                {"recording": recording_id, "reason": reason, **detail},
            )
        )
        return True

    def add_monitor(self, limit: int) -> tuple[Outlet, list[tuple[str, messages.MediaKey]]]:
        """A tap on every media flow of every room, now and later, for audio analysis.

        Returns the outlet (the caller drains it off the forwarding path) and the keys of the
        flows open now; later ones come as ``FlowOpened`` events.
        """
        outlet = Outlet(next(self.ctx.tap_sessions), limit)
        self.ctx.monitors.append(outlet)
        keys = []
        for room in self.rooms.values():
            for member in room.stage_members.values():
                if member.flow is not None and member.media_key is not None:
                    self.forwarder.tap(member.flow, outlet)
                    keys.append((room.id, member.media_key))
        return outlet, keys

    def remove_monitor(self, outlet: Outlet) -> None:
        """Stop a tap made by :meth:`add_monitor`."""
        if outlet in self.ctx.monitors:
            self.ctx.monitors.remove(outlet)
        for room in self.rooms.values():
            for member in room.stage_members.values():
                if member.flow is not None:
                    self.forwarder.untap(member.flow, outlet)

    def ask_consent(self, room: Room, member: Member) -> None:
        recording = room.active_recording
        if recording is not None and member.on_stage and member.user not in recording.consent:
            self._send(
                (member.session,),
                messages.RecordingConsentRequested(room=room.id, recording=recording.id),
            )

    def sync_recorded(self, room: Room, member: Member) -> None:
        """Tap or untap the member's flow so that exactly the consenting stage is recorded."""
        recording = room.active_recording
        if recording is None:
            return
        user = member.user
        flow = member.flow
        wanted = flow is not None and recording.consent.get(user) is True
        current = recording.recorded.get(user)
        if current is not None and (not wanted or flow is None or flow.flow_id != current):
            if flow is not None and flow.flow_id == current:
                self.forwarder.untap(flow, recording.outlet)
            del recording.recorded[user]
            self._emit(events.RecordingTrackRemoved(room.id, recording.id, user, current))
            if not wanted:
                self._to_members(
                    room, messages.RecordingConsentChanged(room=room.id, user=user, consent=False)
                )
        if wanted and flow is not None and user not in recording.recorded:
            assert member.media_key is not None
            self.forwarder.tap(flow, recording.outlet)
            recording.recorded[user] = flow.flow_id
            self._emit(events.RecordingTrackAdded(room.id, recording.id, member.media_key))
            self._to_members(
                room, messages.RecordingConsentChanged(room=room.id, user=user, consent=True)
            )

    def end_recording(self, room: Room, by: str, reason: str, now: float) -> None:
        recording = room.active_recording
        assert recording is not None
        for user in list(recording.recorded):
            member = room.members.get(user)
            if member is not None and member.flow is not None:
                self.forwarder.untap(member.flow, recording.outlet)
        recording.recorded.clear()
        room.active_recording = None
        room.recording = False
        self._to_members(
            room,
            messages.RecordingStopped(room=room.id, by=by, recording=recording.id, reason=reason),
        )
        self._counts_changed(room)
        self._emit(events.RecordingStopped(room.id, recording.id, by, reason, now))
