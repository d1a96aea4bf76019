"""Media flows and their keys: one flow per stage turn, a new one when a sequence number wraps."""

from __future__ import annotations

from salon.daemon.wire import messages

from . import events
from .context import Concern, CoreContext, TimerKind
from .forwarder import NOTIFY_FIRST_PACKET, Flow
from .keys import ROTATION_GRACE, media_key, new_key_material, new_ssrc, red_flow_key
from .room import Member, Room


class Flows(Concern):
    """Flow ids, SSRCs and media keys of the stage, and key rotation at a sequence wrap."""

    def __init__(self, ctx: CoreContext) -> None:
        super().__init__(ctx)
        ctx.on_timer(TimerKind.ROTATION, self._rotation_over)

    def _rotation_over(self, room: Room, flow_id: str, now: float) -> None:
        for member in room.stage_members.values():
            if member.flow is not None and member.flow.flow_id == int(flow_id):
                self.end_rotation(room, member)

    def open_flow(self, room: Room, member: Member) -> None:
        user = member.user
        epoch = room.key_epochs.get(user, -1) + 1
        room.key_epochs[user] = epoch
        flow_id = self.ctx.flow_ids.allocate()
        ssrc = new_ssrc(self.random_bytes, room.ssrcs)
        room.ssrcs.add(ssrc)
        material = new_key_material(self.random_bytes)
        flow = Flow(flow_id, member.session, ssrc, room.id)
        flow.muted = member.muted or member.muted_by_moderator
        flow.on_level = room.speaking.track(user).update
        flow.on_seq_jump = self._seq_jump
        self.forwarder.add_flow(flow)
        for monitor in self.ctx.monitors:
            self.forwarder.tap(flow, monitor)
        member.flow = flow
        member.media_key = media_key(user, flow_id, ssrc, material, epoch)
        if member.red_flow:
            # Its redundancy flow (PROTOCOL.md 11.10): own id, SSRC and key, no level watched,
            # no rotation of its own (it goes with this flow), sent to nobody until asked.
            red_id = self.ctx.flow_ids.allocate()
            red_ssrc = new_ssrc(self.random_bytes, room.ssrcs)
            room.ssrcs.add(red_ssrc)
            red_material = new_key_material(self.random_bytes)
            red_flow = Flow(red_id, member.session, red_ssrc, room.id)
            red_flow.muted = flow.muted
            self.forwarder.add_red_flow(flow, red_flow)
            member.media_key.red_flow = red_flow_key(red_id, red_ssrc, red_material)
        self._emit(events.FlowOpened(room.id, member.media_key))

    def close_flow(self, room: Room, member: Member) -> None:
        flow = member.flow
        if flow is None:
            return
        self.end_rotation(room, member)
        recording = room.active_recording
        if recording is not None:
            # A new stage turn asks for consent again.
            recording.consent.pop(member.user, None)
            self.ctx.recording.sync_recorded(room, member)
        self.forwarder.retire_flow(flow)
        room.speaking.forget(member.user)
        member.flow = None
        member.media_key = None
        self._emit(events.FlowClosed(room.id, member.user, flow.flow_id))
        self._to_members(
            room, messages.MediaKeyRevoked(room=room.id, user=member.user, flow_id=flow.flow_id)
        )

    def _seq_jump(self, flow: Flow, now: float) -> None:
        """The forwarder saw ``flow``'s sequence number wrap, or a new flow's first packet."""
        state = self._sessions.get(flow.session)
        room = self.rooms.get(flow.group)
        member = room.members.get(state.identity.user) if state and room else None
        if room is None or member is None or member.session != flow.session:
            flow.on_seq_jump = None
            return
        if member.flow is flow and flow.predecessor is not None:
            # The speaker switched to the rotated flow: the old one is no longer needed.
            self.end_rotation(room, member)
        elif member.flow is flow:
            self._rotate_flow(room, member, now)

    def _rotate_flow(self, room: Room, member: Member, now: float) -> None:
        """Give a speaker whose sequence number wrapped a new flow (PROTOCOL.md 11.8).

        A receiver that joined after the wrap would assume the wrong rollover counter; on a new
        flow every receiver starts from ROC 0 again. The old flow is forwarded until the speaker's
        first packet on the new one, or :data:`ROTATION_GRACE` seconds, then revoked.
        """
        old = member.flow
        assert old is not None
        old.on_seq_jump = None
        recording = room.active_recording
        recorded = recording is not None and recording.recorded.get(member.user) == old.flow_id
        self.open_flow(room, member)
        flow = member.flow
        assert flow is not None and member.media_key is not None
        flow.predecessor = old
        flow.last_seq = NOTIFY_FIRST_PACKET
        self.ctx.rotations[flow.flow_id] = recording.id if recording and recorded else None
        if recording is not None and recorded:
            # Consent is per stage turn, and this is the same turn: record the new flow too.
            self.forwarder.tap(flow, recording.outlet)
            recording.recorded[member.user] = flow.flow_id
            self._emit(events.RecordingTrackAdded(room.id, recording.id, member.media_key))
        self._to_members(room, messages.MediaKeyEvent(room=room.id, key=member.media_key))
        self._push_timer(now + ROTATION_GRACE, TimerKind.ROTATION, room, str(flow.flow_id))

    def end_rotation(self, room: Room, member: Member) -> None:
        """Retire the flow that ``member``'s current flow replaced, if it is still forwarded."""
        flow = member.flow
        old = flow.predecessor if flow is not None else None
        if flow is None or old is None:
            return
        flow.predecessor = None
        recording_id = self.ctx.rotations.pop(flow.flow_id, None)
        self.forwarder.retire_flow(old)
        recording = room.active_recording
        if recording is not None and recording.id == recording_id:
            self._emit(
                events.RecordingTrackRemoved(room.id, recording.id, member.user, old.flow_id)
            )
        self._emit(events.FlowClosed(room.id, member.user, old.flow_id))
        self._to_members(
            room, messages.MediaKeyRevoked(room=room.id, user=member.user, flow_id=old.flow_id)
        )
