"""Sessions and membership: connecting, joining a room (or knocking), entering and leaving."""

from __future__ import annotations

from dataclasses import replace

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from . import events
from .context import Actor, Concern, CoreContext, Session, TimerKind, ban_message
from .errors import CoreError
from .forwarder import Outlet
from .identity import MAX_USER_ID_BYTES, Identity
from .results import Done, Joined, ParticipantsResult, Result
from .room import Invite, Member, Room

PAGE_BUDGET = messages.MAX_MESSAGE_SIZE
"""Bytes the ``ok`` of a ``list_participants`` may take once encoded."""


class Membership(Concern):
    """Who is connected, and who is in which room: join, enter, leave, depart."""

    def __init__(self, ctx: CoreContext) -> None:
        super().__init__(ctx)
        ctx.on_timer(TimerKind.COUNTS, lambda room, key, now: ctx.send_counts(room, now))

    def connect(
        self,
        session: int,
        identity: Identity,
        now: float,
        relayed: bool = False,
        *,
        red: bool = False,
        red_flow: bool = False,
    ) -> None:
        """An authenticated session appears; it gets an outlet for media."""
        if session in self._sessions:
            raise CoreError(ErrorCode.ALREADY_AUTHENTICATED, f"session {session} is connected")
        self._sessions[session] = Session(
            identity,
            Outlet(session, self.limits.outlet_queue),
            relayed,
            red=red,
            red_flow=red_flow,
        )

    def disconnect(self, session: int, now: float) -> None:
        """The session is gone: it leaves its room or withdraws its knock. Never raises."""
        state = self._sessions.get(session)
        if state is None:
            return
        if state.knock is not None and state.knock_room is not None:
            self.ctx.knocks.resolve_knock(
                state.knock_room, state.knock, "cancelled", state.identity.user
            )
        room = state.room
        if room is not None:
            member = room.members.get(state.identity.user)
            if member is not None and member.session == session:
                self.depart(room, member, "disconnected", now)
        del self._sessions[session]
        self.forwarder.forget_session(session)
        state.outlet.queue.clear()
        self.ctx.speaking.flush_speaking(now)

    def join(
        self,
        session: int,
        state: Session,
        request: messages.Join,
        now: float,
        trust: list[str],
        auto_approve: bool = False,
    ) -> Result:
        if state.knock is not None and state.knock_room is not None:
            raise CoreError(
                ErrorCode.KNOCK_PENDING, f"you are already knocking on {state.knock_room.id}"
            )
        if state.room is not None:
            raise CoreError(ErrorCode.ALREADY_IN_ROOM, f"you are already in {state.room.id}")
        room = self._find_room(request.room)
        user = state.identity.user
        stored = self._admissible(room, user, now)
        present = room.members.get(user)
        invite: Invite | None = None
        if stored is None and present is None:
            if request.invite is not None:
                invite = self._usable_invite(room, request.invite, now)
            elif room.policy == "invite":
                raise CoreError(ErrorCode.INVITE_REQUIRED, f"room {room.id} needs an invite")
            elif self._must_knock(room, user, stored, present, request.invite, auto_approve):
                return self.ctx.knocks.knock(room, session, state, now, trust)
        role = self.entry_role(room, stored, present, invite, user)
        if invite is not None:
            invite.uses += 1
            self._emit(events.InviteChanged(replace(invite)))
        self.enter(room, session, state, role, now)
        return Joined(role=role, room=room.summary())

    def would_knock(self, room_id: str, user: str, invite: str | None, now: float) -> bool:
        """Whether a join by ``user`` would knock (False if it would enter or be refused)."""
        room = self.rooms.get(room_id)
        if room is None or room.state == "closed":
            return False
        try:
            stored = self._admissible(room, user, now)
        except CoreError:
            return False
        return self._must_knock(room, user, stored, room.members.get(user), invite, False)

    def _admissible(self, room: Room, user: str, now: float) -> messages.Role | None:
        """Refuse a banned user, or anyone but the owner before the room starts; the role of
        record (owner, moderator) of whoever may come in."""
        self.ctx.check_server_ban(user, now)
        ban = room.bans.get(user)
        if ban is not None and ban.active(now):
            raise CoreError(ErrorCode.BANNED, ban_message(room.id, ban))
        stored = room.stored_role(user)
        if room.state == "scheduled" and stored != "owner":
            raise CoreError(ErrorCode.ROOM_NOT_LIVE, f"room {room.id} has not started yet")
        return stored

    @staticmethod
    def _must_knock(
        room: Room,
        user: str,
        stored: messages.Role | None,
        present: Member | None,
        invite: str | None,
        auto_approve: bool,
    ) -> bool:
        """An approval room asks its hosts about a newcomer who brings no invite."""
        return (
            stored is None
            and present is None
            and invite is None
            and room.policy == "approval"
            and user not in room.approved_users
            and not auto_approve
        )

    def _usable_invite(self, room: Room, token: str, now: float) -> Invite:
        invite = room.invites.get(token)
        if invite is None:
            raise CoreError(ErrorCode.INVITE_INVALID, "invite is unknown")
        problem = invite.problem(now)
        if problem is not None:
            raise CoreError(ErrorCode.INVITE_INVALID, f"invite is {problem}")
        return invite

    @staticmethod
    def entry_role(
        room: Room,
        stored: messages.Role | None,
        present: Member | None,
        invite: Invite | None,
        user: str | None = None,
    ) -> messages.Role:
        if stored is not None:
            return stored
        if present is not None and present.role == "speaker":
            # Another session of the same user hands over its place on stage.
            return "speaker"
        if invite is not None and invite.role == "speaker" and not room.stage_full():
            return "speaker"
        if user in room.returning_stage and not room.stage_full():
            return "speaker"  # on stage at the room's previous server (a cluster failover)
        return "listener"

    def enter(
        self, room: Room, session: int, state: Session, role: messages.Role, now: float
    ) -> Member:
        identity = state.identity
        user = identity.user
        older = room.members.get(user)
        if older is not None:
            self._send((older.session,), messages.Removed(room=room.id, by=user, reason="replaced"))
            self.depart(room, older, "replaced", now)
        for request in [k for k in room.knocks.values() if k.user == user]:
            self.ctx.knocks.resolve_knock(
                room, request, "cancelled", user, requester_reason="replaced"
            )
        member = Member(
            session=session,
            identity=identity,
            role=role,
            joined_at=now,
            red=state.red,
            red_flow=state.red_flow and not state.relayed,
        )
        room.add_member(member)
        room.returning_stage.discard(user)
        room.returning_knocks.pop(user, None)
        raised_at = room.returning_hands.pop(user, None)
        hand_back = (
            raised_at is not None
            and role == "listener"
            and room.hands.restore_hand(user, raised_at)
        )
        state.room = room
        if not state.relayed:
            self.forwarder.join(room.id, state.outlet)
        if member.on_stage:
            member.muted_by_moderator = room.mute_on_join and role == "speaker"
            self.ctx.flows.open_flow(room, member)
        if role == "owner":
            room.close_at = None
        self._send((session,), self.ctx.room_state(room, member))
        self.ctx.recording.ask_consent(room, member)
        # A listener entering a big audience is not announced to everyone (that would be
        # O(n) messages per join, O(n^2) for a room filling up): members get coalesced counts.
        quiet = not member.on_stage and self.ctx.quiet_audience(room)
        if not quiet:
            self._to_members(
                room,
                messages.ParticipantJoined(room=room.id, participant=room.participant(member)),
                exclude=session,
            )
        if member.media_key is not None:
            self._to_members(
                room, messages.MediaKeyEvent(room=room.id, key=member.media_key), exclude=session
            )
        if quiet:
            self.ctx.counts_later(room, now)
        else:
            self._to_members(room, messages.RoomUpdated(room=room.summary()), exclude=session)
        self.ctx.reception.receiver_added(room, member)
        self._emit(events.MemberJoined(room.id, user, session, role))
        if hand_back:
            self._hand_queue_changed(room)
        return member

    def list_participants(
        self, actor: Actor, request: messages.ListParticipants, now: float
    ) -> Result:
        """A page of the room's members in user id order (PROTOCOL.md ``list_participants``)."""
        room = actor.room
        page, cursor = room.page(request.after, request.limit)
        result = ParticipantsResult(
            participants=[], media_keys=[], next=None, total=len(room.members)
        )
        # The reply must fit one control message whatever the members' names: a page ends
        # early (its ``next`` says where to go on) when the next member would not fit.
        budget = PAGE_BUDGET - len(messages.encode(messages.Ok(re=messages.MAX_REQUEST_ID)))
        budget -= len(messages.encode(result)) + MAX_USER_ID_BYTES + 2
        for index, member in enumerate(page):
            participant = room.participant(member)
            size = len(messages.encode(participant)) + 1
            if member.media_key is not None:
                size += len(messages.encode(member.media_key)) + 1
            if size > budget and index > 0:
                result.next = page[index - 1].user
                return result
            budget -= size
            result.participants.append(participant)
            if member.media_key is not None:
                result.media_keys.append(member.media_key)
        result.next = cursor
        return result

    def leave(self, state: Session, now: float) -> Result:
        if state.knock is not None:
            return self.ctx.knocks.cancel_knock(state)
        room = state.room
        if room is None:
            raise CoreError(ErrorCode.NOT_IN_ROOM, "you are not in a room")
        self.depart(room, room.members[state.identity.user], "left", now)
        return Done()

    def depart(self, room: Room, member: Member, reason: str, now: float) -> None:
        """``member`` leaves ``room``: the others are told, the owner's absence handled."""
        user = member.user
        room.remove_member(user)
        state = self._sessions.get(member.session)
        if state is not None and state.room is room:
            state.room = None
            state.outlet.queue.clear()
        self.forwarder.leave(room.id, member.session)
        self.ctx.reception.receiver_removed(room, member.session)
        member.invited_by = None
        if room.hands.lower_hand(user):
            self._hand_queue_changed(room)
        if member.flow is not None:
            self.ctx.flows.close_flow(room, member)
        # Checked once the member is gone: a big audience stays quiet down to the threshold.
        if not member.on_stage and self.ctx.quiet_audience(room):
            self.ctx.counts_later(room, now)
        else:
            self._to_members(room, messages.ParticipantLeft(room=room.id, user=user, reason=reason))
            self._counts_changed(room)
        self._emit(events.MemberLeft(room.id, user, member.session, reason))
        # A persistent room belongs to its owner beyond any one visit: only an explicit
        # transfer_ownership hands it over.
        if (
            member.role == "owner"
            and reason != "replaced"
            and room.state == "live"
            and not room.persistent
        ):
            successor = self.ctx.stage.successor(room)
            if successor is not None:
                self.ctx.stage.hand_over(room, successor, now)
            else:
                self.ctx.lifecycle.arm_close(room, now)
