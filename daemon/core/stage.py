"""The stage and roles: hands, invitations to speak, moving to the audience, promotion,
ownership."""

from __future__ import annotations

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from . import events
from .context import Actor, Concern
from .errors import CoreError
from .permissions import Action, check
from .results import Done, Result
from .room import Member, Room


class Stage(Concern):
    """Roles and the stage: who speaks, who hosts, who owns the room."""

    def change_role(self, room: Room, member: Member, role: messages.Role, now: float) -> None:
        """Give a present member a new role, moving them on or off the stage as needed."""
        old = member.role
        if old == role:
            return
        was_on_stage, was_host = member.on_stage, member.is_host
        member.role = role
        room.role_changed(member)
        if member.on_stage and not was_on_stage:
            member.invited_by = None
            if room.hands.lower_hand(member.user):
                self._hand_queue_changed(room)
            member.muted = True
            member.muted_by_moderator = room.mute_on_join and role == "speaker"
            self.ctx.flows.open_flow(room, member)
            assert member.media_key is not None
            self._to_members(room, messages.MediaKeyEvent(room=room.id, key=member.media_key))
            self.ctx.recording.ask_consent(room, member)
        elif was_on_stage and not member.on_stage:
            member.muted = True
            member.muted_by_moderator = False
            self.ctx.flows.close_flow(room, member)
        self._participant_updated(room, member, member.on_stage != was_on_stage)
        if member.is_host != was_host:
            # What the member may see changed (knocks, hand queue): resynchronise them.
            self._send((member.session,), self.ctx.room_state(room, member))
        if member.on_stage != was_on_stage:
            self._counts_changed(room)
        self._emit(events.RoleChanged(room.id, member.user, old, role))

    def raise_hand(self, actor: Actor, request: messages.RaiseHand, now: float) -> Result:
        member = self._self(actor)
        check(Action.RAISE_HAND, member.role)
        if actor.room.hands.raise_hand(member.user, now):
            self._hand_queue_changed(actor.room)
            self._participant_updated(actor.room, member)
        return Done()

    def lower_hand(self, actor: Actor, request: messages.LowerHand, now: float) -> Result:
        room = actor.room
        target, other = self._target(actor, request.user, Action.LOWER_HAND, Action.LOWER_HAND_OF)
        if room.hands.lower_hand(target.user):
            self._hand_queue_changed(room)
            self._participant_updated(room, target)
        if other:
            self._moderation(actor, "lower_hand", target.user)
        return Done()

    def invite_to_speak(self, actor: Actor, request: messages.InviteToSpeak, now: float) -> Result:
        room = actor.room
        target = self._present(room, request.user)
        check(Action.INVITE_TO_SPEAK, actor.role, target.role)
        if room.stage_full():
            raise CoreError(ErrorCode.STAGE_FULL, f"the stage is full ({room.max_speakers})")
        target.invited_by = actor.user
        self._send((target.session,), messages.SpeakInvitation(room=room.id, by=actor.user))
        self._moderation(actor, "invite_to_speak", target.user)
        return Done()

    def accept_speak(self, actor: Actor, request: messages.AcceptSpeak, now: float) -> Result:
        member = self._self(actor)
        check(Action.ACCEPT_SPEAK, member.role)
        if member.invited_by is None:
            raise CoreError(ErrorCode.NO_INVITATION, "nobody invited you to speak")
        if actor.room.stage_full():
            raise CoreError(ErrorCode.STAGE_FULL, f"the stage is full ({actor.room.max_speakers})")
        self.change_role(actor.room, member, "speaker", now)
        return Done()

    def decline_speak(self, actor: Actor, request: messages.DeclineSpeak, now: float) -> Result:
        member = self._self(actor)
        check(Action.DECLINE_SPEAK, member.role)
        if member.invited_by is None:
            raise CoreError(ErrorCode.NO_INVITATION, "nobody invited you to speak")
        member.invited_by = None
        self._to_hosts(
            actor.room, messages.SpeakInvitationDeclined(room=actor.room.id, user=member.user)
        )
        return Done()

    def move_to_audience(
        self, actor: Actor, request: messages.MoveToAudience, now: float
    ) -> Result:
        room = actor.room
        target, other = self._target(
            actor, request.user, Action.MOVE_SELF_TO_AUDIENCE, Action.MOVE_TO_AUDIENCE
        )
        self.change_role(room, target, "listener", now)
        if other:
            self._moderation(actor, "move_to_audience", target.user)
        return Done()

    def promote(self, actor: Actor, request: messages.Promote, now: float) -> Result:
        room = actor.room
        self._not_self(actor, request.user, "promote")
        target = self._present(room, request.user)
        check(Action.PROMOTE, actor.role, target.role)
        room.moderators.append(target.user)
        self.change_role(room, target, "moderator", now)
        self._room_changed(room)
        self._moderation(actor, "promote", target.user)
        return Done()

    def demote(self, actor: Actor, request: messages.Demote, now: float) -> Result:
        room = actor.room
        user = request.user
        self._not_self(actor, user, "demote")
        target = room.members.get(user)
        if target is None and user not in room.moderators:
            raise CoreError(ErrorCode.PARTICIPANT_NOT_FOUND, f"{user} is not in the room")
        check(Action.DEMOTE, actor.role, room.rank_role(user))
        room.moderators.remove(user)
        if target is not None:
            self.change_role(room, target, "speaker", now)
        self._room_changed(room)
        self._moderation(actor, "demote", user)
        return Done()

    def transfer_ownership(
        self, actor: Actor, request: messages.TransferOwnership, now: float
    ) -> Result:
        room = actor.room
        self._not_self(actor, request.user, "transfer the room to")
        target = self._present(room, request.user)
        check(Action.TRANSFER_OWNERSHIP, actor.role, target.role)
        previous = room.owner
        self.hand_over(room, target, now)
        self._moderation(actor, "transfer_ownership", target.user, previous_owner=previous)
        return Done()

    def successor(self, room: Room) -> Member | None:
        """The present moderator promoted earliest."""
        for user in room.moderators:
            member = room.members.get(user)
            if member is not None and member.role == "moderator":
                return member
        return None

    def hand_over(self, room: Room, new_owner: Member, now: float) -> None:
        old_owner = room.owner
        room.owner = new_owner.user
        if new_owner.user in room.moderators:
            room.moderators.remove(new_owner.user)
        ban = room.bans.get(old_owner)
        # The old owner stays a moderator (for their return) unless they were just banned.
        if old_owner not in room.moderators and (ban is None or not ban.active(now)):
            room.moderators.append(old_owner)
        room.close_at = None
        previous = room.members.get(old_owner)
        if previous is not None and previous.role == "owner":
            self.change_role(room, previous, "moderator", now)
        self.change_role(room, new_owner, "owner", now)
        self._to_members(room, messages.OwnerChanged(room=room.id, user=new_owner.user))
        self._room_changed(room)
