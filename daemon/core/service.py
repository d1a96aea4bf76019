"""SalonCore: rooms, roles and policies as a sans-I/O state machine.

Inputs are method calls carrying the current time (``connect``, ``handle_request``,
``receive_datagram``, ``handle_timer``...); outputs are pulled with :meth:`SalonCore.next_event`
(control events to deliver, state changes for the upper layers) and :meth:`SalonCore.get_timer`.
Nothing here touches a socket, a clock or an event loop, so every rule is testable in memory.

A refused request raises :class:`CoreError` and changes nothing: each handler validates
everything before it mutates, and events queued by a failed request are discarded.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode, to_builtins

from . import events
from .errors import CoreError
from .forwarder import NOTIFY_FIRST_PACKET, Flow, Forwarder, Outlet
from .identity import Identity
from .ids import INVITE_TOKEN_BYTES, REQUEST_ID_BYTES, random_room_id, random_token
from .keys import ROTATION_GRACE, FlowIdAllocator, media_key, new_key_material, new_ssrc
from .limits import Limits
from .permissions import HOST_ROLES, OPERATOR, Action, check, check_caller
from .recording import Recording
from .records import RoomRecord, room_record, room_settings
from .room import (
    Ban,
    Invite,
    JoinRequest,
    Member,
    Room,
    check_flag,
    check_invite_role,
    check_max_speakers,
    check_max_uses,
    check_policy,
    check_positive,
    check_room_id,
    check_time,
    clean_description,
    clean_title,
    clean_topics,
)

CLOSED_ROOMS_KEPT = 1024
"""Closed rooms remembered (so that joining one says room_closed) before they are forgotten."""
RECORDING_ID_BYTES = 9
"""Random bytes of a recording id (12 URL-safe characters)."""

_KNOCK_EXPIRY = "knock"
_ROOM_CLOSE = "close"
_BAN_EXPIRY = "ban"
_SPEAKING_EMIT = "speaking"
_SPEAKING_HOLD = "hold"
_REMINDER = "reminder"
_ROTATION = "rotation"

Result = dict[str, Any]


class _Session:
    __slots__ = ("identity", "knock", "knock_room", "outlet", "room")

    def __init__(self, identity: Identity, outlet: Outlet) -> None:
        self.identity = identity
        self.outlet = outlet
        self.room: Room | None = None
        self.knock: JoinRequest | None = None
        self.knock_room: Room | None = None


@dataclass
class _Actor:
    """Whoever performs a room request: a member, or an operator (``member`` None)."""

    user: str
    role: str
    room: Room
    member: Member | None


class SalonCore:
    """Every room of the server, the sessions in them and the media forwarder."""

    def __init__(
        self, limits: Limits | None = None, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        self.random_bytes = random_bytes
        self.forwarder = Forwarder(self.limits.max_datagram_size)
        self.rooms: dict[str, Room] = {}
        """Rooms by id: live, scheduled and recently closed ones."""
        self._sessions: dict[int, _Session] = {}
        self._events: collections.deque[events.CoreEvent] = collections.deque()
        self._timers: list[tuple[float, int, str, Room, str]] = []
        self._timer_order = itertools.count()
        self._flow_ids = FlowIdAllocator()
        # New flow id of a rotation in its grace period -> recording that recorded the old flow.
        self._rotations: dict[int, str | None] = {}
        # Taps (recorders, audio monitors) get session numbers no real session has.
        self._tap_sessions = itertools.count(-1, -1)
        self._monitors: list[Outlet] = []
        self._speaking_dirty: dict[Room, None] = {}
        self._closed_ids: dict[str, None] = {}
        self.server_bans: dict[str, Ban] = {}
        """Server-wide bans by user id (see :meth:`ban_user_globally`); expired ones may linger."""
        self._room_handlers: dict[type, Callable[[_Actor, Any, float], Result]] = {
            messages.RaiseHand: self._raise_hand,
            messages.LowerHand: self._lower_hand,
            messages.InviteToSpeak: self._invite_to_speak,
            messages.AcceptSpeak: self._accept_speak,
            messages.DeclineSpeak: self._decline_speak,
            messages.MoveToAudience: self._move_to_audience,
            messages.Mute: self._mute,
            messages.Unmute: self._unmute,
            messages.Remove: self._remove,
            messages.Ban: self._ban,
            messages.Unban: self._unban,
            messages.Promote: self._promote,
            messages.Demote: self._demote,
            messages.TransferOwnership: self._transfer_ownership,
            messages.UpdateRoom: self._update_room,
            messages.CloseRoom: self._close_room,
            messages.CreateInvite: self._create_invite,
            messages.RevokeInvite: self._revoke_invite,
            messages.ListInvites: self._list_invites,
            messages.ApproveKnock: self._approve_knock,
            messages.DenyKnock: self._deny_knock,
            messages.StartRecording: self._start_recording,
            messages.StopRecording: self._stop_recording,
            messages.RecordingConsent: self._recording_consent,
        }

    # ------------------------------------------------------------------ sessions

    def connect(self, session: int, identity: Identity, now: float) -> None:
        """An authenticated session appears; it gets an outlet for media."""
        if session in self._sessions:
            raise CoreError(ErrorCode.ALREADY_AUTHENTICATED, f"session {session} is connected")
        self._sessions[session] = _Session(identity, Outlet(session, self.limits.outlet_queue))

    def disconnect(self, session: int, now: float) -> None:
        """The session is gone: it leaves its room or withdraws its knock. Never raises."""
        state = self._sessions.get(session)
        if state is None:
            return
        if state.knock is not None and state.knock_room is not None:
            self._resolve_knock(state.knock_room, state.knock, "cancelled", state.identity.user)
        room = state.room
        if room is not None:
            member = room.members.get(state.identity.user)
            if member is not None and member.session == session:
                self._depart(room, member, "disconnected", now)
        del self._sessions[session]
        self.forwarder.forget_session(session)
        state.outlet.queue.clear()
        self._flush_speaking(now)

    def outlet(self, session: int) -> Outlet | None:
        """The session's media queue, or None for an unknown session."""
        state = self._sessions.get(session)
        return state.outlet if state is not None else None

    def session_room(self, session: int) -> str | None:
        """The room the session is a member of (not one it is knocking on)."""
        state = self._sessions.get(session)
        if state is None or state.room is None:
            return None
        return state.room.id

    def identity(self, session: int) -> Identity | None:
        state = self._sessions.get(session)
        return state.identity if state is not None else None

    # ------------------------------------------------------------------ requests

    def handle_request(
        self,
        session: int,
        request: messages.Request,
        now: float,
        *,
        trust: list[str] | None = None,
        auto_approve: bool = False,
    ) -> Result:
        """Perform a client request; return the ``result`` of the ok reply or raise CoreError.

        ``trust`` holds the plugins' annotations attached to a knock (``JoinRequestInfo.trust``).
        ``auto_approve`` (a plugin vouched for the requester) admits a join that would knock on
        an approval room directly, without asking the hosts.
        """
        state = self._sessions.get(session)
        if state is None:
            raise CoreError(ErrorCode.NOT_AUTHENTICATED, "session is not connected")
        mark = len(self._events)
        try:
            result = self._dispatch(session, state, request, now, trust or [], auto_approve)
        except CoreError:
            self._discard_events(mark)
            raise
        self._flush_speaking(now)
        return result

    def check_session_state(self, session: int, request: messages.Request) -> None:
        """Raise the session-state refusal ``request`` would get (PROTOCOL.md 3.6, step 4).

        The server asks before plugins review a request, so that a plugin's refusal never
        hides that the request was out of place; the handlers check the same again.
        """
        state = self._sessions.get(session)
        if state is None:
            raise CoreError(ErrorCode.NOT_AUTHENTICATED, "session is not connected")
        kind = type(request)
        if kind is messages.Join:
            if state.knock is not None and state.knock_room is not None:
                raise CoreError(
                    ErrorCode.KNOCK_PENDING, f"you are already knocking on {state.knock_room.id}"
                )
            if state.room is not None:
                raise CoreError(ErrorCode.ALREADY_IN_ROOM, f"you are already in {state.room.id}")
        elif kind is messages.CancelKnock:
            if state.knock is None or state.knock_room is None:
                raise CoreError(ErrorCode.NO_KNOCK, "you are not knocking")
        elif kind is messages.Leave:
            if state.knock is None and state.room is None:
                raise CoreError(ErrorCode.NOT_IN_ROOM, "you are not in a room")
        elif kind in self._room_handlers and state.room is None:
            raise CoreError(ErrorCode.NOT_IN_ROOM, "you are not in a room")

    def admin_request(
        self, actor: Identity, room: str | None, request: messages.Request, now: float
    ) -> Result:
        """Perform a request as an operator, with owner rights in ``room`` without being in it.

        ``CreateRoom`` ignores ``room`` and makes the operator the owner of record.
        """
        if not actor.operator:
            raise CoreError(ErrorCode.NOT_PERMITTED, "only an operator may use the admin path")
        mark = len(self._events)
        try:
            result = self._admin_dispatch(actor, room, request, now)
        except CoreError:
            self._discard_events(mark)
            raise
        self._flush_speaking(now)
        return result

    def _dispatch(
        self,
        session: int,
        state: _Session,
        request: Any,
        now: float,
        trust: list[str],
        auto_approve: bool = False,
    ) -> Result:
        kind = type(request)
        user = state.identity.user
        if kind is messages.Join:
            return self._join(session, state, request, now, trust, auto_approve)
        if kind is messages.Leave:
            return self._leave(state, now)
        if kind is messages.CancelKnock:
            return self._cancel_knock(state)
        if kind is messages.CreateRoom:
            return self._create_room(user, request, now, operator=False)
        if kind is messages.StartRoom:
            return self._start_room(user, request.room, now, operator=False)
        if kind is messages.SubscribeRoom:
            return self._subscribe(user, request.room, now)
        if kind is messages.UnsubscribeRoom:
            return self._unsubscribe(user, request.room)
        if kind in (messages.ListRooms, messages.GetRoom):
            return self._directory_request(request)
        handler = self._room_handlers.get(kind)
        if handler is None:
            raise CoreError(
                ErrorCode.BAD_MESSAGE, f"{kind.__name__} is handled by the session layer"
            )
        room = state.room
        if room is None:
            raise CoreError(ErrorCode.NOT_IN_ROOM, "you are not in a room")
        member = room.members[user]
        actor = _Actor(user, member.role, room, member)
        check_caller(request, member.role, self._names_other(actor, getattr(request, "user", None)))
        return handler(actor, request, now)

    def _admin_dispatch(
        self, actor: Identity, room_id: str | None, request: Any, now: float
    ) -> Result:
        kind = type(request)
        if kind is messages.CreateRoom:
            return self._create_room(actor.user, request, now, operator=True)
        if kind is messages.StartRoom:
            return self._start_room(actor.user, request.room, now, operator=True)
        if kind in (messages.ListRooms, messages.GetRoom):
            return self._directory_request(request)
        handler = self._room_handlers.get(kind)
        if handler is None:
            raise CoreError(ErrorCode.INVALID_VALUE, f"{kind.__name__} is not an operator action")
        if room_id is None:
            raise CoreError(ErrorCode.INVALID_VALUE, "room is required")
        room = self._find_room(room_id)
        return handler(_Actor(actor.user, OPERATOR, room, None), request, now)

    def _directory_request(self, request: Any) -> Result:
        if isinstance(request, messages.ListRooms):
            return {"rooms": [to_builtins(s) for s in self.list_rooms(request.topic)]}
        return {"room": to_builtins(self._find_room(request.room).summary())}

    # ------------------------------------------------------------------ outputs and views

    def next_event(self) -> events.CoreEvent | None:
        """The next output, oldest first, or None."""
        return self._events.popleft() if self._events else None

    def list_rooms(self, topic: str | None = None) -> list[messages.RoomSummary]:
        """Live rooms (most members first), then scheduled ones (soonest first)."""
        wanted = topic.strip().lower() if topic else None
        shown = [
            room
            for room in self.rooms.values()
            if room.state != "closed" and (wanted is None or wanted in room.topics)
        ]
        live = sorted((r for r in shown if r.state == "live"), key=lambda r: -len(r.members))
        scheduled = sorted(
            (r for r in shown if r.state == "scheduled"), key=lambda r: r.scheduled_for or 0.0
        )
        return [room.summary() for room in live + scheduled]

    def room_snapshot(self, room: str, viewer: int | None = None) -> messages.RoomSnapshot:
        """The room as session ``viewer`` sees it; None is the operator's view (everything)."""
        found = self.rooms.get(room)
        if found is None:
            raise CoreError(ErrorCode.ROOM_NOT_FOUND, f"no room {room}")
        if viewer is None:
            return found.snapshot(None, host_view=True)
        member = self._member_of(found, viewer)
        return found.snapshot(member, member is not None and member.is_host)

    def _member_of(self, room: Room, session: int) -> Member | None:
        state = self._sessions.get(session)
        if state is None:
            return None
        member = room.members.get(state.identity.user)
        return member if member is not None and member.session == session else None

    # ------------------------------------------------------------------ media

    def receive_datagram(self, session: int, data: bytes, now: float) -> list[Outlet]:
        """Forward a media datagram; return the outlets that received a copy."""
        outlets = self.forwarder.forward(session, data, now)
        if self._speaking_dirty:
            self._flush_speaking(now)
        return outlets

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called (it may find nothing due)."""
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        """Expire knocks and bans, close abandoned rooms, send reminders, pace speaking."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, room, key = heapq.heappop(timers)
            if kind == _KNOCK_EXPIRY:
                self._expire_knock(room, key, now)
            elif kind == _ROOM_CLOSE:
                self._close_if_abandoned(room, now)
            elif kind == _BAN_EXPIRY:
                ban = room.bans.get(key)
                if ban is not None and not ban.active(now):
                    del room.bans[key]
                    if self.rooms.get(room.id) is room:
                        self._emit(events.BanChanged(room.id, key, None))
            elif kind == _REMINDER:
                self._remind(room)
            elif kind == _ROTATION:
                for member in room.members.values():
                    if member.flow is not None and member.flow.flow_id == int(key):
                        self._end_rotation(room, member)
            elif kind == _SPEAKING_EMIT:
                room.speaking_emit_at = None
                self._speaking_dirty[room] = None
            elif kind == _SPEAKING_HOLD:
                room.speaking_hold_at = None
                if room.state != "closed":
                    room.speaking.expire(now)
                    self._speaking_dirty[room] = None
        self._flush_speaking(now)

    def _push_timer(self, when: float, kind: str, room: Room, key: str = "") -> None:
        heapq.heappush(self._timers, (when, next(self._timer_order), kind, room, key))

    # ------------------------------------------------------------------ event helpers

    def _emit(self, event: events.CoreEvent) -> None:
        self._events.append(event)

    def _send(self, sessions: Iterable[int], message: messages.Event) -> None:
        targets = tuple(sessions)
        if targets:
            self._events.append(events.Deliver(targets, message))

    def _to_members(self, room: Room, message: messages.Event, exclude: int | None = None) -> None:
        self._send((m.session for m in room.members.values() if m.session != exclude), message)

    def _to_hosts(self, room: Room, message: messages.Event) -> None:
        self._send((m.session for m in room.members.values() if m.role in HOST_ROLES), message)

    def _discard_events(self, mark: int) -> None:
        while len(self._events) > mark:
            self._events.pop()

    def _moderation(self, actor: _Actor, action: str, target: str | None, **detail: Any) -> None:
        self._emit(events.ModerationTaken(actor.room.id, actor.user, action, target, detail))

    def _participant_updated(self, room: Room, member: Member) -> None:
        self._to_members(
            room, messages.ParticipantUpdated(room=room.id, participant=room.participant(member))
        )

    def _hand_queue_changed(self, room: Room) -> None:
        self._to_hosts(room, messages.HandQueue(room=room.id, users=room.hands.users()))

    def _counts_changed(self, room: Room) -> None:
        self._to_members(room, messages.RoomUpdated(room=room.summary()))

    # ------------------------------------------------------------------ rooms

    def _find_room(self, room_id: str) -> Room:
        room = self.rooms.get(room_id)
        if room is None:
            raise CoreError(ErrorCode.ROOM_NOT_FOUND, f"no room {room_id}")
        if room.state == "closed":
            raise CoreError(ErrorCode.ROOM_CLOSED, f"room {room_id} is closed")
        return room

    def _create_room(
        self, user: str, request: messages.CreateRoom, now: float, *, operator: bool
    ) -> Result:
        title = clean_title(request.title)
        topics = clean_topics(request.topics)
        policy = check_policy(request.policy)
        max_speakers = check_max_speakers(request.max_speakers, self.limits.max_speakers_cap)
        mute_on_join = check_flag("mute_on_join", request.mute_on_join)
        persistent = check_flag("persistent", request.persistent)
        scheduled_for = check_time("scheduled_for", request.scheduled_for)
        description = clean_description(request.description)
        if request.room is not None:
            room_id = check_room_id(request.room)
            existing = self.rooms.get(room_id)
            if existing is not None and existing.state != "closed":
                raise CoreError(ErrorCode.ROOM_EXISTS, f"room {room_id} already exists")
        else:
            room_id = random_room_id(self.random_bytes)
            while room_id in self.rooms:
                room_id = random_room_id(self.random_bytes)
        if not operator:
            self._check_server_ban(user, now)
            owned = sum(1 for r in self.rooms.values() if r.owner == user and r.state != "closed")
            if owned >= self.limits.max_rooms_per_user:
                raise CoreError(
                    ErrorCode.ROOM_LIMIT,
                    f"you already own {owned} rooms (at most {self.limits.max_rooms_per_user})",
                )
        room = Room(
            id=room_id,
            title=title,
            owner=user,
            created_at=now,
            topics=topics,
            policy=policy,
            max_speakers=max_speakers,
            mute_on_join=mute_on_join,
            persistent=persistent,
            scheduled_for=scheduled_for,
            description=description,
            state="scheduled" if scheduled_for is not None and scheduled_for > now else "live",
        )
        dirty = self._speaking_dirty
        room.speaking.on_change = lambda: dirty.setdefault(room)
        # A closed room of the same id is forgotten; the new one starts from scratch.
        self.rooms.pop(room_id, None)
        self._closed_ids.pop(room_id, None)
        self.rooms[room_id] = room
        self._emit(events.RoomCreated(room_id, user))
        self._room_changed(room)
        self._arm_close(room, now)
        self._arm_reminders(room, now)
        return {"room": to_builtins(room.summary())}

    def _start_room(self, user: str, room_id: str, now: float, *, operator: bool) -> Result:
        room = self._find_room(room_id)
        check(Action.START_ROOM, OPERATOR if operator else room.rank_role(user))
        if room.state != "scheduled":
            raise CoreError(ErrorCode.INVALID_VALUE, f"room {room_id} is already live")
        room.state = "live"
        self._counts_changed(room)
        self._room_changed(room)
        self._notify_started(room)
        self._emit(events.ModerationTaken(room.id, user, "start_room", None, {}))
        self._arm_close(room, now)
        return {"room": to_builtins(room.summary())}

    def _arm_close(self, room: Room, now: float) -> None:
        """Start the owner's grace period if the live room lacks its owner."""
        if (
            room.persistent
            or room.state != "live"
            or room.close_at is not None
            or room.owner_present()
        ):
            return
        room.close_at = now + self.limits.owner_grace
        self._push_timer(room.close_at, _ROOM_CLOSE, room)

    def _close_if_abandoned(self, room: Room, now: float) -> None:
        if room.close_at is None or room.close_at > now or room.state != "live":
            return
        room.close_at = None
        if room.owner_present():
            return
        successor = self._successor(room)
        if successor is not None:
            self._hand_over(room, successor, now)
        else:
            self._close(room, "owner_left" if room.members else "empty", now)

    def _close(self, room: Room, reason: str, now: float) -> None:
        if room.active_recording is not None:
            self._end_recording(room, "", "room_closed", now)
        self._to_members(room, messages.RoomClosed(room=room.id, reason=reason))
        for request in list(room.knocks.values()):
            self._resolve_knock(room, request, "denied", "", requester_reason="closed", hosts=False)
        for member in room.members.values():
            state = self._sessions.get(member.session)
            if state is not None and state.room is room:
                state.room = None
                state.outlet.queue.clear()
            if member.flow is not None:
                if member.flow.predecessor is not None:
                    old = member.flow.predecessor.flow_id
                    self._rotations.pop(member.flow.flow_id, None)
                    self._emit(events.FlowClosed(room.id, member.user, old))
                self._emit(events.FlowClosed(room.id, member.user, member.flow.flow_id))
            member.flow = None
            member.media_key = None
            self._emit(events.MemberLeft(room.id, member.user, member.session, "closed"))
        self.forwarder.drop_group(room.id)
        room.members.clear()
        room.hands.clear()
        room.speaking.clear()
        room.approved_users.clear()
        room.invites.clear()
        room.subscribers.clear()
        room.state = "closed"
        room.close_at = None
        self._emit(events.RoomClosed(room.id, reason))
        self._closed_ids[room.id] = None
        if len(self._closed_ids) > CLOSED_ROOMS_KEPT:
            oldest = next(iter(self._closed_ids))
            del self._closed_ids[oldest]
            if self.rooms[oldest].state == "closed":
                del self.rooms[oldest]

    # ------------------------------------------------------------------ joining and leaving

    def _join(
        self,
        session: int,
        state: _Session,
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
        self._check_server_ban(user, now)
        ban = room.bans.get(user)
        if ban is not None and ban.active(now):
            raise CoreError(ErrorCode.BANNED, _ban_message(room.id, ban))
        stored = room.stored_role(user)
        if room.state == "scheduled" and stored != "owner":
            raise CoreError(ErrorCode.ROOM_NOT_LIVE, f"room {room.id} has not started yet")
        present = room.members.get(user)
        invite: Invite | None = None
        if stored is None and present is None:
            if request.invite is not None:
                invite = self._usable_invite(room, request.invite, now)
            elif room.policy == "invite":
                raise CoreError(ErrorCode.INVITE_REQUIRED, f"room {room.id} needs an invite")
            elif room.policy == "approval" and user not in room.approved_users and not auto_approve:
                return self._knock(room, session, state, now, trust)
        role = self._entry_role(room, stored, present, invite)
        if invite is not None:
            invite.uses += 1
            self._emit(events.InviteChanged(replace(invite)))
        self._enter(room, session, state, role, now)
        return {"status": "joined", "role": role, "room": to_builtins(room.summary())}

    def _usable_invite(self, room: Room, token: str, now: float) -> Invite:
        invite = room.invites.get(token)
        if invite is None:
            raise CoreError(ErrorCode.INVITE_INVALID, "invite is unknown")
        problem = invite.problem(now)
        if problem is not None:
            raise CoreError(ErrorCode.INVITE_INVALID, f"invite is {problem}")
        return invite

    @staticmethod
    def _entry_role(
        room: Room, stored: messages.Role | None, present: Member | None, invite: Invite | None
    ) -> messages.Role:
        if stored is not None:
            return stored
        if present is not None and present.role == "speaker":
            # Another session of the same user hands over its place on stage.
            return "speaker"
        if invite is not None and invite.role == "speaker" and not room.stage_full():
            return "speaker"
        return "listener"

    def _enter(
        self, room: Room, session: int, state: _Session, role: messages.Role, now: float
    ) -> Member:
        identity = state.identity
        user = identity.user
        older = room.members.get(user)
        if older is not None:
            self._send((older.session,), messages.Removed(room=room.id, by=user, reason="replaced"))
            self._depart(room, older, "replaced", now)
        for request in [k for k in room.knocks.values() if k.user == user]:
            self._resolve_knock(room, request, "cancelled", user, requester_reason="replaced")
        member = Member(session=session, identity=identity, role=role, joined_at=now)
        room.members[user] = member
        state.room = room
        self.forwarder.join(room.id, state.outlet)
        if member.on_stage:
            member.muted_by_moderator = room.mute_on_join and role == "speaker"
            self._open_flow(room, member)
        if role == "owner":
            room.close_at = None
        self._send((session,), messages.RoomState(room=room.snapshot(member, member.is_host)))
        self._ask_consent(room, member)
        self._to_members(
            room,
            messages.ParticipantJoined(room=room.id, participant=room.participant(member)),
            exclude=session,
        )
        if member.media_key is not None:
            self._to_members(
                room, messages.MediaKeyEvent(room=room.id, key=member.media_key), exclude=session
            )
        self._to_members(room, messages.RoomUpdated(room=room.summary()), exclude=session)
        self._emit(events.MemberJoined(room.id, user, session, role))
        return member

    def _leave(self, state: _Session, now: float) -> Result:
        if state.knock is not None:
            return self._cancel_knock(state)
        room = state.room
        if room is None:
            raise CoreError(ErrorCode.NOT_IN_ROOM, "you are not in a room")
        self._depart(room, room.members[state.identity.user], "left", now)
        return {}

    def _depart(self, room: Room, member: Member, reason: str, now: float) -> None:
        """``member`` leaves ``room``: the others are told, the owner's absence handled."""
        user = member.user
        del room.members[user]
        state = self._sessions.get(member.session)
        if state is not None and state.room is room:
            state.room = None
            state.outlet.queue.clear()
        self.forwarder.leave(room.id, member.session)
        member.invited_by = None
        if room.hands.lower_hand(user):
            self._hand_queue_changed(room)
        if member.flow is not None:
            self._close_flow(room, member)
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
            successor = self._successor(room)
            if successor is not None:
                self._hand_over(room, successor, now)
            else:
                self._arm_close(room, now)

    def _successor(self, room: Room) -> Member | None:
        """The present moderator promoted earliest."""
        for user in room.moderators:
            member = room.members.get(user)
            if member is not None and member.role == "moderator":
                return member
        return None

    def _hand_over(self, room: Room, new_owner: Member, now: float) -> None:
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
            self._change_role(room, previous, "moderator", now)
        self._change_role(room, new_owner, "owner", now)
        self._to_members(room, messages.OwnerChanged(room=room.id, user=new_owner.user))
        self._room_changed(room)

    # ------------------------------------------------------------------ knocks

    def _knock(
        self, room: Room, session: int, state: _Session, now: float, trust: list[str]
    ) -> Result:
        user = state.identity.user
        for earlier in [k for k in room.knocks.values() if k.user == user]:
            self._resolve_knock(room, earlier, "cancelled", user, requester_reason="replaced")
        request_id = random_token(self.random_bytes, REQUEST_ID_BYTES)
        while request_id in room.knocks:
            request_id = random_token(self.random_bytes, REQUEST_ID_BYTES)
        request = JoinRequest(
            request_id=request_id,
            room=room.id,
            session=session,
            identity=state.identity,
            trust=list(trust),
            requested_at=now,
            expires_at=now + self.limits.knock_ttl,
        )
        room.knocks[request_id] = request
        state.knock = request
        state.knock_room = room
        info = request.info()
        self._to_hosts(room, messages.Knock(room=room.id, request=info))
        self._emit(events.KnockReceived(room.id, info))
        self._push_timer(request.expires_at, _KNOCK_EXPIRY, room, request_id)
        return {"status": "knocking", "request_id": request_id, "expires_at": request.expires_at}

    def _resolve_knock(
        self,
        room: Room,
        request: JoinRequest,
        outcome: Any,
        by: str,
        *,
        requester_reason: str | None = None,
        hosts: bool = True,
    ) -> None:
        """Take a knock off the room; tell the requester (if ``requester_reason``) and hosts."""
        del room.knocks[request.request_id]
        state = self._sessions.get(request.session)
        if state is not None and state.knock is request:
            state.knock = None
            state.knock_room = None
        if requester_reason is not None:
            self._send(
                (request.session,), messages.KnockDenied(room=room.id, reason=requester_reason)
            )
        if hosts:
            self._to_hosts(
                room,
                messages.KnockResolved(
                    room=room.id, request_id=request.request_id, outcome=outcome, by=by
                ),
            )

    def _cancel_knock(self, state: _Session) -> Result:
        if state.knock is None or state.knock_room is None:
            raise CoreError(ErrorCode.NO_KNOCK, "you are not knocking")
        self._resolve_knock(state.knock_room, state.knock, "cancelled", state.identity.user)
        return {}

    def _expire_knock(self, room: Room, request_id: str, now: float) -> None:
        request = room.knocks.get(request_id)
        if request is not None and request.expires_at <= now:
            self._resolve_knock(room, request, "expired", "", requester_reason="expired")

    def _approve_knock(self, actor: _Actor, request: messages.ApproveKnock, now: float) -> Result:
        room = actor.room
        check(Action.APPROVE_KNOCK, actor.role)
        knock = self._pending_knock(room, request.request_id)
        state = self._sessions[knock.session]
        self._resolve_knock(room, knock, "approved", actor.user)
        if knock.user not in room.approved_users:
            room.approved_users.add(knock.user)
            self._emit(events.ApprovalChanged(room.id, knock.user, True))
        role = self._entry_role(
            room, room.stored_role(knock.user), room.members.get(knock.user), None
        )
        self._enter(room, knock.session, state, role, now)
        self._moderation(actor, "approve_knock", knock.user, request_id=knock.request_id)
        return {"user": knock.user}

    def _deny_knock(self, actor: _Actor, request: messages.DenyKnock, now: float) -> Result:
        room = actor.room
        check(Action.DENY_KNOCK, actor.role)
        knock = self._pending_knock(room, request.request_id)
        reason = request.reason or "denied"
        self._resolve_knock(room, knock, "denied", actor.user, requester_reason=reason)
        self._moderation(
            actor, "deny_knock", knock.user, request_id=knock.request_id, reason=request.reason
        )
        return {}

    @staticmethod
    def _pending_knock(room: Room, request_id: str) -> JoinRequest:
        knock = room.knocks.get(request_id)
        if knock is None:
            raise CoreError(ErrorCode.REQUEST_NOT_FOUND, f"no pending knock {request_id}")
        return knock

    # ------------------------------------------------------------------ roles and the stage

    @staticmethod
    def _self(actor: _Actor) -> Member:
        if actor.member is None:
            raise CoreError(ErrorCode.INVALID_VALUE, "user is required: operators are not members")
        return actor.member

    @staticmethod
    def _names_other(actor: _Actor, user: str | None) -> bool:
        return user is not None and (actor.member is None or user != actor.user)

    @staticmethod
    def _present(room: Room, user: str) -> Member:
        member = room.members.get(user)
        if member is None:
            raise CoreError(ErrorCode.PARTICIPANT_NOT_FOUND, f"{user} is not in the room")
        return member

    @staticmethod
    def _not_self(actor: _Actor, user: str, action: str) -> None:
        if actor.member is not None and user == actor.user:
            raise CoreError(ErrorCode.INVALID_VALUE, f"you cannot {action} yourself")

    def _change_role(self, room: Room, member: Member, role: messages.Role, now: float) -> None:
        """Give a present member a new role, moving them on or off the stage as needed."""
        old = member.role
        if old == role:
            return
        was_on_stage, was_host = member.on_stage, member.is_host
        member.role = role
        if member.on_stage and not was_on_stage:
            member.invited_by = None
            if room.hands.lower_hand(member.user):
                self._hand_queue_changed(room)
            member.muted = True
            member.muted_by_moderator = room.mute_on_join and role == "speaker"
            self._open_flow(room, member)
            assert member.media_key is not None
            self._to_members(room, messages.MediaKeyEvent(room=room.id, key=member.media_key))
            self._ask_consent(room, member)
        elif was_on_stage and not member.on_stage:
            member.muted = True
            member.muted_by_moderator = False
            self._close_flow(room, member)
        self._participant_updated(room, member)
        if member.is_host != was_host:
            # What the member may see changed (knocks, hand queue): resynchronise them.
            self._send(
                (member.session,),
                messages.RoomState(room=room.snapshot(member, member.is_host)),
            )
        if member.on_stage != was_on_stage:
            self._counts_changed(room)
        self._emit(events.RoleChanged(room.id, member.user, old, role))

    def _open_flow(self, room: Room, member: Member) -> None:
        user = member.user
        epoch = room.key_epochs.get(user, -1) + 1
        room.key_epochs[user] = epoch
        flow_id = self._flow_ids.allocate()
        ssrc = new_ssrc(self.random_bytes, room.ssrcs)
        room.ssrcs.add(ssrc)
        material = new_key_material(self.random_bytes)
        flow = Flow(flow_id, member.session, ssrc, room.id)
        flow.muted = member.muted or member.muted_by_moderator
        flow.on_level = room.speaking.track(user).update
        flow.on_seq_jump = self._seq_jump
        self.forwarder.add_flow(flow)
        for monitor in self._monitors:
            self.forwarder.tap(flow, monitor)
        member.flow = flow
        member.media_key = media_key(user, flow_id, ssrc, material, epoch)
        self._emit(events.FlowOpened(room.id, member.media_key))

    def _close_flow(self, room: Room, member: Member) -> None:
        flow = member.flow
        if flow is None:
            return
        self._end_rotation(room, member)
        recording = room.active_recording
        if recording is not None:
            # A new stage turn asks for consent again.
            recording.consent.pop(member.user, None)
            self._sync_recorded(room, member)
        self.forwarder.retire_flow(flow)
        room.speaking.forget(member.user)
        member.flow = None
        member.media_key = None
        self._emit(events.FlowClosed(room.id, member.user, flow.flow_id))
        self._to_members(
            room, messages.MediaKeyRevoked(room=room.id, user=member.user, flow_id=flow.flow_id)
        )

    # ------------------------------------------------------------------ rotation at a seq wrap

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
            self._end_rotation(room, member)
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
        self._open_flow(room, member)
        flow = member.flow
        assert flow is not None and member.media_key is not None
        flow.predecessor = old
        flow.last_seq = NOTIFY_FIRST_PACKET
        self._rotations[flow.flow_id] = recording.id if recording and recorded else None
        if recording is not None and recorded:
            # Consent is per stage turn, and this is the same turn: record the new flow too.
            self.forwarder.tap(flow, recording.outlet)
            recording.recorded[member.user] = flow.flow_id
            self._emit(events.RecordingTrackAdded(room.id, recording.id, member.media_key))
        self._to_members(room, messages.MediaKeyEvent(room=room.id, key=member.media_key))
        self._push_timer(now + ROTATION_GRACE, _ROTATION, room, str(flow.flow_id))

    def _end_rotation(self, room: Room, member: Member) -> None:
        """Retire the flow that ``member``'s current flow replaced, if it is still forwarded."""
        flow = member.flow
        old = flow.predecessor if flow is not None else None
        if flow is None or old is None:
            return
        flow.predecessor = None
        recording_id = self._rotations.pop(flow.flow_id, None)
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

    # ------------------------------------------------------------------ recording

    def _start_recording(
        self, actor: _Actor, request: messages.StartRecording, now: float
    ) -> Result:
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
        outlet = Outlet(next(self._tap_sessions), self.limits.recording_queue)
        room.active_recording = Recording(recording_id, room.id, actor.user, now, outlet)
        room.recording = True
        self._emit(events.RecordingStarted(room.id, recording_id, actor.user, now, outlet))
        self._to_members(
            room, messages.RecordingStarted(room=room.id, by=actor.user, recording=recording_id)
        )
        self._counts_changed(room)
        for member in room.members.values():
            self._ask_consent(room, member)
        self._moderation(actor, "start_recording", None, recording=recording_id)
        return {"recording": recording_id}

    def _stop_recording(self, actor: _Actor, request: messages.StopRecording, now: float) -> Result:
        room = actor.room
        check(Action.STOP_RECORDING, actor.role)
        recording = room.active_recording
        if recording is None:
            raise CoreError(ErrorCode.NOT_RECORDING, f"room {room.id} is not being recorded")
        self._end_recording(room, actor.user, "stopped", now)
        self._moderation(actor, "stop_recording", None, recording=recording.id)
        return {"recording": recording.id}

    def _recording_consent(
        self, actor: _Actor, request: messages.RecordingConsent, now: float
    ) -> Result:
        member = self._self(actor)
        check(Action.RECORDING_CONSENT, member.role)
        room = actor.room
        recording = room.active_recording
        if recording is None:
            raise CoreError(ErrorCode.NOT_RECORDING, f"room {room.id} is not being recorded")
        consent = check_flag("consent", request.consent)
        recording.consent[member.user] = consent
        self._sync_recorded(room, member)
        return {"consent": consent, "recording": recording.id}

    def stop_recording(self, room_id: str, recording_id: str, reason: str, now: float) -> bool:
        """End a recording from outside a request (its recorder failed); False if not running.

        The room's members get ``recording_stopped`` with ``reason``, as after a host's stop.
        """
        room = self.rooms.get(room_id)
        recording = room.active_recording if room is not None else None
        if room is None or recording is None or recording.id != recording_id:
            return False
        self._end_recording(room, "", reason, now)
        return True

    def add_monitor(self, limit: int) -> tuple[Outlet, list[tuple[str, messages.MediaKey]]]:
        """A tap on every media flow of every room, now and later, for audio analysis.

        Returns the outlet (the caller drains it off the forwarding path) and the keys of the
        flows open now; later ones come as ``FlowOpened`` events.
        """
        outlet = Outlet(next(self._tap_sessions), limit)
        self._monitors.append(outlet)
        keys = []
        for room in self.rooms.values():
            for member in room.members.values():
                if member.flow is not None and member.media_key is not None:
                    self.forwarder.tap(member.flow, outlet)
                    keys.append((room.id, member.media_key))
        return outlet, keys

    def remove_monitor(self, outlet: Outlet) -> None:
        """Stop a tap made by :meth:`add_monitor`."""
        if outlet in self._monitors:
            self._monitors.remove(outlet)
        for room in self.rooms.values():
            for member in room.members.values():
                if member.flow is not None:
                    self.forwarder.untap(member.flow, outlet)

    def _ask_consent(self, room: Room, member: Member) -> None:
        recording = room.active_recording
        if recording is not None and member.on_stage and member.user not in recording.consent:
            self._send(
                (member.session,),
                messages.RecordingConsentRequested(room=room.id, recording=recording.id),
            )

    def _sync_recorded(self, room: Room, member: Member) -> None:
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

    def _end_recording(self, room: Room, by: str, reason: str, now: float) -> None:
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

    @staticmethod
    def _sync_mute(member: Member) -> None:
        if member.flow is not None:
            member.flow.muted = member.muted or member.muted_by_moderator
            if member.flow.predecessor is not None:
                member.flow.predecessor.muted = member.flow.muted

    def _raise_hand(self, actor: _Actor, request: messages.RaiseHand, now: float) -> Result:
        member = self._self(actor)
        check(Action.RAISE_HAND, member.role)
        if actor.room.hands.raise_hand(member.user, now):
            self._hand_queue_changed(actor.room)
            self._participant_updated(actor.room, member)
        return {}

    def _lower_hand(self, actor: _Actor, request: messages.LowerHand, now: float) -> Result:
        room = actor.room
        other = self._names_other(actor, request.user)
        if other:
            assert request.user is not None
            target = self._present(room, request.user)
            check(Action.LOWER_HAND_OF, actor.role, target.role)
        else:
            target = self._self(actor)
            check(Action.LOWER_HAND, target.role)
        if room.hands.lower_hand(target.user):
            self._hand_queue_changed(room)
            self._participant_updated(room, target)
        if other:
            self._moderation(actor, "lower_hand", target.user)
        return {}

    def _invite_to_speak(
        self, actor: _Actor, request: messages.InviteToSpeak, now: float
    ) -> Result:
        room = actor.room
        target = self._present(room, request.user)
        check(Action.INVITE_TO_SPEAK, actor.role, target.role)
        if room.stage_full():
            raise CoreError(ErrorCode.STAGE_FULL, f"the stage is full ({room.max_speakers})")
        target.invited_by = actor.user
        self._send((target.session,), messages.SpeakInvitation(room=room.id, by=actor.user))
        self._moderation(actor, "invite_to_speak", target.user)
        return {}

    def _accept_speak(self, actor: _Actor, request: messages.AcceptSpeak, now: float) -> Result:
        member = self._self(actor)
        check(Action.ACCEPT_SPEAK, member.role)
        if member.invited_by is None:
            raise CoreError(ErrorCode.NO_INVITATION, "nobody invited you to speak")
        if actor.room.stage_full():
            raise CoreError(ErrorCode.STAGE_FULL, f"the stage is full ({actor.room.max_speakers})")
        self._change_role(actor.room, member, "speaker", now)
        return {}

    def _decline_speak(self, actor: _Actor, request: messages.DeclineSpeak, now: float) -> Result:
        member = self._self(actor)
        check(Action.DECLINE_SPEAK, member.role)
        if member.invited_by is None:
            raise CoreError(ErrorCode.NO_INVITATION, "nobody invited you to speak")
        member.invited_by = None
        self._to_hosts(
            actor.room, messages.SpeakInvitationDeclined(room=actor.room.id, user=member.user)
        )
        return {}

    def _move_to_audience(
        self, actor: _Actor, request: messages.MoveToAudience, now: float
    ) -> Result:
        room = actor.room
        other = self._names_other(actor, request.user)
        if other:
            assert request.user is not None
            target = self._present(room, request.user)
            check(Action.MOVE_TO_AUDIENCE, actor.role, target.role)
        else:
            target = self._self(actor)
            check(Action.MOVE_SELF_TO_AUDIENCE, target.role)
        self._change_role(room, target, "listener", now)
        if other:
            self._moderation(actor, "move_to_audience", target.user)
        return {}

    def _mute(self, actor: _Actor, request: messages.Mute, now: float) -> Result:
        room = actor.room
        if self._names_other(actor, request.user):
            assert request.user is not None
            target = self._present(room, request.user)
            check(Action.MUTE, actor.role, target.role)
            newly = not target.muted_by_moderator
            changed = newly or not target.muted
            target.muted = True
            target.muted_by_moderator = True
            self._sync_mute(target)
            if changed:
                self._participant_updated(room, target)
            if newly:
                # The muted member and the hosts learn who muted and why (e.g. a plugin).
                muted = messages.Muted(room=room.id, by=actor.user, reason=request.reason)
                self._send((target.session,), muted)
                self._to_hosts(
                    room,
                    messages.MemberMuted(
                        room=room.id, user=target.user, by=actor.user, reason=request.reason
                    ),
                )
            detail = {"reason": request.reason} if request.reason else {}
            self._moderation(actor, "mute", target.user, **detail)
            return {}
        member = self._self(actor)
        check(Action.MUTE_SELF, member.role)
        if not member.muted:
            member.muted = True
            self._sync_mute(member)
            self._participant_updated(room, member)
        return {}

    def _unmute(self, actor: _Actor, request: messages.Unmute, now: float) -> Result:
        room = actor.room
        if self._names_other(actor, request.user):
            assert request.user is not None
            target = self._present(room, request.user)
            check(Action.UNMUTE, actor.role, target.role)
            # A host only lifts their own kind of mute: the microphone stays the user's to open.
            if target.muted_by_moderator:
                target.muted_by_moderator = False
                self._sync_mute(target)
                self._participant_updated(room, target)
            self._moderation(actor, "unmute", target.user)
            return {}
        member = self._self(actor)
        check(Action.UNMUTE_SELF, member.role)
        if member.muted_by_moderator:
            raise CoreError(ErrorCode.MUTED_BY_MODERATOR, "a moderator muted you")
        if member.muted:
            member.muted = False
            self._sync_mute(member)
            self._participant_updated(room, member)
        return {}

    def _remove(self, actor: _Actor, request: messages.Remove, now: float) -> Result:
        room = actor.room
        self._not_self(actor, request.user, "remove")
        target = self._present(room, request.user)
        check(Action.REMOVE, actor.role, target.role)
        self._send(
            (target.session,),
            messages.Removed(room=room.id, by=actor.user, reason=request.reason),
        )
        self._depart(room, target, "removed", now)
        self._moderation(actor, "remove", target.user, reason=request.reason)
        return {}

    def _ban(self, actor: _Actor, request: messages.Ban, now: float) -> Result:
        room = actor.room
        user = request.user
        self._not_self(actor, user, "ban")
        duration = check_positive("duration", request.duration)
        check(Action.BAN, actor.role, room.rank_role(user))
        until = now + duration if duration is not None else None
        ban = Ban(reason=request.reason, until=until, by=actor.user)
        room.bans[user] = ban
        self._emit(events.BanChanged(room.id, user, ban))
        if until is not None:
            self._push_timer(until, _BAN_EXPIRY, room, user)
        if user in room.moderators:
            room.moderators.remove(user)
            self._room_changed(room)
        if user in room.approved_users:
            room.approved_users.discard(user)
            self._emit(events.ApprovalChanged(room.id, user, False))
        if user in room.subscribers:
            room.subscribers.discard(user)
            self._emit(events.SubscriptionChanged(room.id, user, False))
        for knock in [k for k in room.knocks.values() if k.user == user]:
            self._resolve_knock(room, knock, "denied", actor.user, requester_reason="banned")
        target = room.members.get(user)
        if target is not None:
            self._send(
                (target.session,),
                messages.Removed(
                    room=room.id, by=actor.user, reason=request.reason, banned=True, until=until
                ),
            )
            self._depart(room, target, "banned", now)
        self._moderation(actor, "ban", user, reason=request.reason, duration=duration, until=until)
        return {}

    def _unban(self, actor: _Actor, request: messages.Unban, now: float) -> Result:
        room = actor.room
        check(Action.UNBAN, actor.role)
        ban = room.bans.get(request.user)
        if ban is None or not ban.active(now):
            raise CoreError(ErrorCode.PARTICIPANT_NOT_FOUND, f"{request.user} is not banned")
        del room.bans[request.user]
        self._emit(events.BanChanged(room.id, request.user, None))
        self._moderation(actor, "unban", request.user)
        return {}

    def _promote(self, actor: _Actor, request: messages.Promote, now: float) -> Result:
        room = actor.room
        self._not_self(actor, request.user, "promote")
        target = self._present(room, request.user)
        check(Action.PROMOTE, actor.role, target.role)
        room.moderators.append(target.user)
        self._change_role(room, target, "moderator", now)
        self._room_changed(room)
        self._moderation(actor, "promote", target.user)
        return {}

    def _demote(self, actor: _Actor, request: messages.Demote, now: float) -> Result:
        room = actor.room
        user = request.user
        self._not_self(actor, user, "demote")
        target = room.members.get(user)
        if target is None and user not in room.moderators:
            raise CoreError(ErrorCode.PARTICIPANT_NOT_FOUND, f"{user} is not in the room")
        check(Action.DEMOTE, actor.role, room.rank_role(user))
        room.moderators.remove(user)
        if target is not None:
            self._change_role(room, target, "speaker", now)
        self._room_changed(room)
        self._moderation(actor, "demote", user)
        return {}

    def _transfer_ownership(
        self, actor: _Actor, request: messages.TransferOwnership, now: float
    ) -> Result:
        room = actor.room
        self._not_self(actor, request.user, "transfer the room to")
        target = self._present(room, request.user)
        check(Action.TRANSFER_OWNERSHIP, actor.role, target.role)
        previous = room.owner
        self._hand_over(room, target, now)
        self._moderation(actor, "transfer_ownership", target.user, previous_owner=previous)
        return {}

    # ------------------------------------------------------------------ room settings

    def _update_room(self, actor: _Actor, request: messages.UpdateRoom, now: float) -> Result:
        room = actor.room
        check(Action.UPDATE_ROOM, actor.role)
        wanted: dict[str, Any] = {}
        if request.title is not None:
            wanted["title"] = clean_title(request.title)
        if request.topics is not None:
            wanted["topics"] = clean_topics(request.topics)
        if request.policy is not None:
            wanted["policy"] = check_policy(request.policy)
        if request.max_speakers is not None:
            wanted["max_speakers"] = check_max_speakers(
                request.max_speakers, self.limits.max_speakers_cap
            )
        if request.mute_on_join is not None:
            wanted["mute_on_join"] = check_flag("mute_on_join", request.mute_on_join)
        if request.description is not None:
            wanted["description"] = clean_description(request.description)
        changed = {key: value for key, value in wanted.items() if getattr(room, key) != value}
        for key, value in changed.items():
            setattr(room, key, value)
        if changed:
            self._counts_changed(room)
            self._room_changed(room)
        self._moderation(actor, "update_room", None, **changed)
        return {}

    def _close_room(self, actor: _Actor, request: messages.CloseRoom, now: float) -> Result:
        check(Action.CLOSE_ROOM, actor.role)
        self._moderation(actor, "close_room", None)
        reason = "closed_by_operator" if actor.role == OPERATOR else "closed_by_host"
        self._close(actor.room, reason, now)
        return {}

    def _create_invite(self, actor: _Actor, request: messages.CreateInvite, now: float) -> Result:
        room = actor.room
        check(Action.CREATE_INVITE, actor.role)
        role = check_invite_role(request.role)
        expires_in = check_positive("expires_in", request.expires_in)
        max_uses = check_max_uses(request.max_uses)
        token = random_token(self.random_bytes, INVITE_TOKEN_BYTES)
        while token in room.invites:
            token = random_token(self.random_bytes, INVITE_TOKEN_BYTES)
        invite = Invite(
            token=token,
            room=room.id,
            role=role,
            created_by=actor.user,
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
            max_uses=max_uses,
        )
        room.invites[token] = invite
        self._emit(events.InviteChanged(replace(invite)))
        self._moderation(
            actor,
            "create_invite",
            None,
            token=token,
            role=role,
            expires_at=invite.expires_at,
            max_uses=max_uses,
        )
        return {"invite": to_builtins(invite.info())}

    def _revoke_invite(self, actor: _Actor, request: messages.RevokeInvite, now: float) -> Result:
        check(Action.REVOKE_INVITE, actor.role)
        invite = actor.room.invites.get(request.token)
        if invite is None or invite.revoked:
            raise CoreError(
                ErrorCode.INVITE_INVALID,
                "invite is unknown" if invite is None else "invite is revoked",
            )
        invite.revoked = True
        self._emit(events.InviteChanged(replace(invite)))
        self._moderation(actor, "revoke_invite", None, token=request.token)
        return {}

    def _list_invites(self, actor: _Actor, request: messages.ListInvites, now: float) -> Result:
        check(Action.LIST_INVITES, actor.role)
        usable = [i for i in actor.room.invites.values() if i.problem(now) is None]
        return {"invites": [to_builtins(i.info()) for i in usable]}

    # ------------------------------------------------------------------ records and restore

    def room_record(self, room: str) -> RoomRecord:
        """A copy of everything of ``room`` that a store keeps (see :mod:`.records`)."""
        found = self.rooms.get(room)
        if found is None:
            raise CoreError(ErrorCode.ROOM_NOT_FOUND, f"no room {room}")
        return room_record(found)

    def restore_room(self, record: RoomRecord, now: float) -> None:
        """Bring back a stored room, normally before the first session connects.

        The settings are checked like those of ``create_room`` (a CoreError names what is
        wrong); ``max_speakers`` is lowered to the current cap; expired bans are dropped.
        Timers are armed as if the room had been here all along: ban expiries, the reminders of a
        scheduled room still ahead, the owner's grace period of a live room that is not
        persistent. No event is emitted: the store already holds what it restores.
        """
        settings = record.settings
        room_id = check_room_id(settings.room)
        existing = self.rooms.get(room_id)
        if existing is not None and existing.state != "closed":
            raise CoreError(ErrorCode.ROOM_EXISTS, f"room {room_id} already exists")
        if settings.state not in ("scheduled", "live"):
            raise CoreError(ErrorCode.INVALID_VALUE, "state must be scheduled or live")
        if not isinstance(settings.owner, str) or not settings.owner:
            raise CoreError(ErrorCode.INVALID_VALUE, "owner must be a user id")
        created_at = check_time("created_at", settings.created_at)
        room = Room(
            id=room_id,
            title=clean_title(settings.title),
            owner=settings.owner,
            created_at=created_at if created_at is not None else now,
            topics=clean_topics(list(settings.topics)),
            policy=check_policy(settings.policy),
            max_speakers=min(
                check_max_speakers(settings.max_speakers), self.limits.max_speakers_cap
            ),
            mute_on_join=check_flag("mute_on_join", settings.mute_on_join),
            persistent=check_flag("persistent", settings.persistent),
            scheduled_for=check_time("scheduled_for", settings.scheduled_for),
            description=clean_description(settings.description),
            state=settings.state,
            moderators=[u for u in dict.fromkeys(settings.moderators) if u != settings.owner],
        )
        for user, ban in record.bans.items():
            if ban.active(now):
                room.bans[user] = replace(ban)
                if ban.until is not None:
                    self._push_timer(ban.until, _BAN_EXPIRY, room, user)
        for invite in record.invites:
            room.invites[invite.token] = replace(invite, room=room_id)
        room.approved_users.update(record.approved_users)
        if room.state == "scheduled":
            room.subscribers.update(record.subscribers)
        dirty = self._speaking_dirty
        room.speaking.on_change = lambda: dirty.setdefault(room)
        self.rooms.pop(room_id, None)
        self._closed_ids.pop(room_id, None)
        self.rooms[room_id] = room
        self._arm_close(room, now)
        self._arm_reminders(room, now)

    def restore_server_ban(self, user: str, ban: Ban, now: float) -> None:
        """Bring back a stored server-wide ban (ignored if it has expired). Emits nothing."""
        if ban.active(now):
            self.server_bans[user] = replace(ban)

    def _room_changed(self, room: Room) -> None:
        self._emit(events.RoomSettingsChanged(room_settings(room)))

    # ------------------------------------------------------------------ server-wide bans

    def ban_user_globally(
        self,
        actor: Identity,
        user: str,
        now: float,
        *,
        reason: str = "",
        duration: float | None = None,
    ) -> Result:
        """Operator action: ban ``user`` from the whole server, for ``duration`` s or for good.

        The user is removed from every room they are in (``removed`` with ``banned`` true), their
        knocks are denied, and ``join``, ``create_room`` and ``subscribe_room`` are refused with
        ``banned`` until the ban ends. Their standing in rooms (ownership, moderator status) is
        kept for when the ban is lifted. Banning again replaces the ban. Emits ``BanChanged``
        (room None) and ``ModerationTaken`` (room ``""``, action ``server_ban``); the caller
        pumps the events like after ``admin_request``. Returns ``{"user", "until"}``.
        """
        if not actor.operator:
            raise CoreError(ErrorCode.NOT_PERMITTED, "only an operator may ban from the server")
        if not isinstance(user, str) or not 1 <= len(user) <= 256:
            raise CoreError(ErrorCode.INVALID_VALUE, "user must be a user id")
        if user == actor.user:
            raise CoreError(ErrorCode.INVALID_VALUE, "you cannot ban yourself")
        if not isinstance(reason, str):
            raise CoreError(ErrorCode.INVALID_VALUE, "reason must be a string")
        seconds = check_positive("duration", duration)
        until = now + seconds if seconds is not None else None
        ban = Ban(reason=reason, until=until, by=actor.user)
        self.server_bans[user] = ban
        self._emit(events.BanChanged(None, user, ban))
        for room in list(self.rooms.values()):
            if room.state == "closed":
                continue
            for knock in [k for k in room.knocks.values() if k.user == user]:
                self._resolve_knock(room, knock, "denied", actor.user, requester_reason="banned")
            target = room.members.get(user)
            if target is not None:
                self._send(
                    (target.session,),
                    messages.Removed(
                        room=room.id, by=actor.user, reason=reason, banned=True, until=until
                    ),
                )
                self._depart(room, target, "banned", now)
        detail = {"reason": reason, "duration": seconds, "until": until}
        self._emit(events.ModerationTaken("", actor.user, "server_ban", user, detail))
        self._flush_speaking(now)
        return {"user": user, "until": until}

    def unban_user_globally(self, actor: Identity, user: str, now: float) -> Result:
        """Operator action: lift ``user``'s server-wide ban (``participant_not_found`` if none).

        Emits ``BanChanged`` (room None, ban None) and ``ModerationTaken`` (room ``""``, action
        ``server_unban``). Returns ``{}``.
        """
        if not actor.operator:
            raise CoreError(ErrorCode.NOT_PERMITTED, "only an operator may lift a server ban")
        ban = self.server_bans.get(user)
        if ban is None or not ban.active(now):
            raise CoreError(
                ErrorCode.PARTICIPANT_NOT_FOUND, f"{user} is not banned from the server"
            )
        del self.server_bans[user]
        self._emit(events.BanChanged(None, user, None))
        self._emit(events.ModerationTaken("", actor.user, "server_unban", user, {}))
        return {}

    def active_server_bans(self, now: float) -> dict[str, Ban]:
        """The server-wide bans in force at ``now``, by user id."""
        return {user: ban for user, ban in self.server_bans.items() if ban.active(now)}

    def _check_server_ban(self, user: str, now: float) -> None:
        ban = self.server_bans.get(user)
        if ban is not None and ban.active(now):
            raise CoreError(ErrorCode.BANNED, _ban_message("this server", ban))

    # ------------------------------------------------------------------ scheduled rooms

    def _subscribe(self, user: str, room_id: str, now: float) -> Result:
        room = self._find_room(room_id)
        self._check_server_ban(user, now)
        ban = room.bans.get(user)
        if ban is not None and ban.active(now):
            raise CoreError(ErrorCode.BANNED, _ban_message(room.id, ban))
        if room.state != "scheduled":
            raise CoreError(ErrorCode.INVALID_VALUE, f"room {room_id} is already live: join it")
        if user not in room.subscribers:
            room.subscribers.add(user)
            self._emit(events.SubscriptionChanged(room.id, user, True))
        return {}

    def _unsubscribe(self, user: str, room_id: str) -> Result:
        room = self.rooms.get(room_id)
        if room is not None and user in room.subscribers:
            room.subscribers.discard(user)
            self._emit(events.SubscriptionChanged(room.id, user, False))
        return {}

    def _arm_reminders(self, room: Room, now: float) -> None:
        """Schedule the reminders of a scheduled room that are still ahead."""
        start = room.scheduled_for
        if room.state != "scheduled" or start is None:
            return
        lead = self.limits.reminder_lead
        if lead > 0 and start - lead > now:
            self._push_timer(start - lead, _REMINDER, room)
        if start > now:
            self._push_timer(start, _REMINDER, room)

    def _remind(self, room: Room) -> None:
        """Send ``room_reminder`` to the sessions of the subscribers and of the owner."""
        start = room.scheduled_for
        if room.state != "scheduled" or start is None or self.rooms.get(room.id) is not room:
            return
        users = room.subscribers | {room.owner}
        self._send(
            (sid for sid, state in self._sessions.items() if state.identity.user in users),
            messages.RoomReminder(room=room.id, title=room.title, starts_at=start),
        )

    def _notify_started(self, room: Room) -> None:
        """The room went live: tell subscribers who are not in it, and end the subscriptions."""
        if not room.subscribers:
            return
        users = room.subscribers
        self._send(
            (
                sid
                for sid, state in self._sessions.items()
                if state.identity.user in users and state.room is not room
            ),
            messages.RoomStarted(room=room.summary()),
        )
        for user in sorted(users):
            self._emit(events.SubscriptionChanged(room.id, user, False))
        room.subscribers.clear()

    # ------------------------------------------------------------------ speaking

    def _flush_speaking(self, now: float) -> None:
        while self._speaking_dirty:
            room = next(iter(self._speaking_dirty))
            del self._speaking_dirty[room]
            self._update_speaking(room, now)

    def _update_speaking(self, room: Room, now: float) -> None:
        """Send the room's speaking set if it changed, at most once per interval."""
        if room.state == "closed":
            return
        if room.speaking_hold_at is None:
            deadline = room.speaking.deadline()
            if deadline is not None:
                room.speaking_hold_at = deadline
                self._push_timer(deadline, _SPEAKING_HOLD, room)
        users = room.speaking.speaking_users()
        if users == room.speaking_sent:
            return
        due = room.speaking_sent_at + self.limits.speaking_interval
        if now >= due:
            levels = room.speaking.levels()
            self._to_members(room, messages.Speaking(room=room.id, speakers=levels))
            self._emit(events.SpeakingChanged(room.id, [level.user for level in levels]))
            room.speaking_sent = users
            room.speaking_sent_at = now
        elif room.speaking_emit_at is None:
            room.speaking_emit_at = due
            self._push_timer(due, _SPEAKING_EMIT, room)


def _ban_message(room: str, ban: Ban) -> str:
    message = f"you are banned from {room}"
    if ban.reason:
        message += f": {ban.reason}"
    if ban.until is None:
        return message + " (permanently)"
    return message + f" (until {ban.until:.0f})"
