"""The life of rooms: create (or restore), start, update, close when asked or abandoned."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from . import events
from .context import Actor, Concern, CoreContext, TimerKind
from .errors import CoreError
from .ids import random_room_id
from .permissions import OPERATOR, Action, check
from .records import RoomRecord, RoomSettings, room_record
from .results import Done, Result, RoomResult, RoomsResult
from .room import (
    MAX_DESCRIPTION,
    MAX_TITLE,
    MAX_TOPIC,
    Room,
    check_flag,
    check_max_speakers,
    check_policy,
    check_room_id,
    check_time,
    clean_description,
    clean_title,
    clean_topics,
    restored_text,
)

CLOSED_ROOMS_KEPT = 1024
"""Closed rooms remembered (so that joining one says room_closed) before they are forgotten."""


class RoomLifecycle(Concern):
    """The rooms of the server from creation to closing, and their settings."""

    def __init__(self, ctx: CoreContext) -> None:
        super().__init__(ctx)
        ctx.on_timer(TimerKind.ROOM_CLOSE, self._close_if_abandoned)

    def create_room(
        self, user: str, request: messages.CreateRoom, now: float, *, operator: bool
    ) -> Result:
        fields = self._checked_settings(request, speakers_over_cap="refuse")
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
            self.ctx.check_server_ban(user, now)
            owned = sum(1 for r in self.rooms.values() if r.owner == user and r.state != "closed")
            if owned >= self.limits.max_rooms_per_user:
                raise CoreError(
                    ErrorCode.ROOM_LIMIT,
                    f"you already own {owned} rooms (at most {self.limits.max_rooms_per_user})",
                )
        scheduled_for = fields["scheduled_for"]
        room = Room(
            id=room_id,
            owner=user,
            created_at=now,
            state="scheduled" if scheduled_for is not None and scheduled_for > now else "live",
            **fields,
        )
        self._install(room, now)
        self._emit(events.RoomCreated(room_id, user))
        self._room_changed(room)
        return RoomResult(room.summary())

    def _checked_settings(
        self, given: messages.CreateRoom | RoomSettings, *, speakers_over_cap: str
    ) -> dict[str, Any]:
        """The settings a room is made with, each checked (a CoreError names what is wrong).

        One rule for a new room and a restored one; ``max_speakers`` above the current cap is
        refused (``"refuse"``, a request) or lowered to it (``"lower"``, a stored room).
        """
        cap = self.limits.max_speakers_cap
        if speakers_over_cap == "refuse":
            max_speakers = check_max_speakers(given.max_speakers, cap)
        else:
            max_speakers = min(check_max_speakers(given.max_speakers), cap)
        topics = given.topics
        title, description = given.title, given.description
        if speakers_over_cap != "refuse":
            # A stored room's text may predate the text rule: cleaned and cut, not refused.
            title = restored_text(title, MAX_TITLE)
            description = restored_text(description, MAX_DESCRIPTION, multiline=True)
            topics = [t for t in (restored_text(t, MAX_TOPIC) for t in topics) if t]
        return {
            "title": clean_title(title),
            # A stored room keeps its topics as a tuple; a request's must be a list.
            "topics": clean_topics(list(topics) if isinstance(topics, tuple) else topics),
            "policy": check_policy(given.policy),
            "max_speakers": max_speakers,
            "mute_on_join": check_flag("mute_on_join", given.mute_on_join),
            "persistent": check_flag("persistent", given.persistent),
            "scheduled_for": check_time("scheduled_for", given.scheduled_for),
            "description": clean_description(description),
        }

    def _install(self, room: Room, now: float) -> None:
        """Make ``room`` one of the server's and arm its timers (created or restored)."""
        dirty = self.ctx.speaking_dirty
        room.speaking.on_change = lambda: dirty.setdefault(room)
        # A closed room of the same id is forgotten; the new one starts from scratch.
        self.rooms.pop(room.id, None)
        self.ctx.closed_ids.pop(room.id, None)
        self.rooms[room.id] = room
        self.arm_close(room, now)
        self.ctx.schedule.arm_reminders(room, now)

    def start_room(self, user: str, room_id: str, now: float, *, operator: bool) -> Result:
        room = self._find_room(room_id)
        check(Action.START_ROOM, OPERATOR if operator else room.rank_role(user))
        if room.state != "scheduled":
            raise CoreError(ErrorCode.INVALID_VALUE, f"room {room_id} is already live")
        room.state = "live"
        self._counts_changed(room)
        self._room_changed(room)
        self.ctx.schedule.notify_started(room)
        self._emit(events.ModerationTaken(room.id, user, "start_room", None, {}))
        self.arm_close(room, now)
        return RoomResult(room.summary())

    def arm_close(self, room: Room, now: float) -> None:
        """Start the owner's grace period if the live room lacks its owner."""
        if (
            room.persistent
            or room.state != "live"
            or room.close_at is not None
            or room.owner_present()
        ):
            return
        room.close_at = now + self.limits.owner_grace
        self._push_timer(room.close_at, TimerKind.ROOM_CLOSE, room)

    def _close_if_abandoned(self, room: Room, _key: str, now: float) -> None:
        if room.close_at is None or room.close_at > now or room.state != "live":
            return
        room.close_at = None
        if room.owner_present():
            return
        successor = self.ctx.stage.successor(room)
        if successor is not None:
            self.ctx.stage.hand_over(room, successor, now)
        else:
            self.close(room, "owner_left" if room.members else "empty", now)

    def close(self, room: Room, reason: str, now: float) -> None:
        if room.active_recording is not None:
            self.ctx.recording.end_recording(room, "", "room_closed", now)
        self._to_members(room, messages.RoomClosed(room=room.id, reason=reason))
        for request in list(room.knocks.values()):
            self.ctx.knocks.resolve_knock(
                room, request, "denied", "", requester_reason="closed", hosts=False
            )
        for member in room.members.values():
            state = self._sessions.get(member.session)
            if state is not None and state.room is room:
                state.room = None
                state.outlet.queue.clear()
            if member.flow is not None:
                if member.flow.predecessor is not None:
                    old = member.flow.predecessor.flow_id
                    self.ctx.rotations.pop(member.flow.flow_id, None)
                    self._emit(events.FlowClosed(room.id, member.user, old))
                self._emit(events.FlowClosed(room.id, member.user, member.flow.flow_id))
            member.flow = None
            member.media_key = None
            self._emit(events.MemberLeft(room.id, member.user, member.session, "closed"))
        self.forwarder.drop_group(room.id)
        room.clear_members()
        room.hands.clear()
        room.speaking.clear()
        room.approved_users.clear()
        room.invites.clear()
        room.subscribers.clear()
        room.state = "closed"
        room.close_at = None
        self._emit(events.RoomClosed(room.id, reason))
        self.ctx.closed_ids[room.id] = None
        if len(self.ctx.closed_ids) > CLOSED_ROOMS_KEPT:
            oldest = next(iter(self.ctx.closed_ids))
            del self.ctx.closed_ids[oldest]
            if self.rooms[oldest].state == "closed":
                del self.rooms[oldest]

    def update_room(self, actor: Actor, request: messages.UpdateRoom, now: float) -> Result:
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
        return Done()

    def close_room(self, actor: Actor, request: messages.CloseRoom, now: float) -> Result:
        check(Action.CLOSE_ROOM, actor.role)
        self._moderation(actor, "close_room", None)
        reason = "closed_by_operator" if actor.role == OPERATOR else "closed_by_host"
        self.close(actor.room, reason, now)
        return Done()

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
            owner=settings.owner,
            created_at=created_at if created_at is not None else now,
            state=settings.state,
            moderators=[u for u in dict.fromkeys(settings.moderators) if u != settings.owner],
            **self._checked_settings(settings, speakers_over_cap="lower"),
        )
        for user, ban in record.bans.items():
            if ban.active(now):
                room.bans[user] = replace(ban)
                if ban.until is not None:
                    self._push_timer(ban.until, TimerKind.BAN_EXPIRY, room, user)
        for invite in record.invites:
            room.invites[invite.token] = replace(invite, room=room_id)
        room.approved_users.update(record.approved_users)
        if room.state == "scheduled":
            room.subscribers.update(record.subscribers)
        self._install(room, now)

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

    def directory_request(self, request: Any) -> Result:
        if isinstance(request, messages.ListRooms):
            return RoomsResult(fit_listing(self.list_rooms(request.topic)))
        return RoomResult(self._find_room(request.room).summary())


LISTING_BUDGET = messages.MAX_MESSAGE_SIZE - 8 * 1024
"""Bytes the rooms of a ``list_rooms`` reply may take: the message limit, less room for the
reply's envelope and what plugins add (``known_topics``)."""


def fit_listing(rooms: list[messages.RoomSummary]) -> list[messages.RoomSummary]:
    """The first ``rooms`` (the most listened first) whose summaries fit one reply: a server
    may leave rooms out of a listing (PROTOCOL.md ``list_rooms``); they can still be joined."""
    used = 2
    for index, room in enumerate(rooms):
        used += len(messages.encode(room)) + 1
        if used > LISTING_BUDGET:
            return rooms[:index]
    return rooms
