"""Scheduled rooms: subscriptions, reminders before the start, the started notice."""

from __future__ import annotations

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from . import events
from .context import Concern, CoreContext, TimerKind, ban_message
from .errors import CoreError
from .results import Done, Result
from .room import Room


class Schedule(Concern):
    """Who waits for a scheduled room, and telling them when it is near and when it starts."""

    def __init__(self, ctx: CoreContext) -> None:
        super().__init__(ctx)
        ctx.on_timer(TimerKind.REMINDER, self._remind)

    def subscribe(self, user: str, room_id: str, now: float) -> Result:
        room = self._find_room(room_id)
        self.ctx.check_server_ban(user, now)
        ban = room.bans.get(user)
        if ban is not None and ban.active(now):
            raise CoreError(ErrorCode.BANNED, ban_message(room.id, ban))
        if room.state != "scheduled":
            raise CoreError(ErrorCode.INVALID_VALUE, f"room {room_id} is already live: join it")
        if user not in room.subscribers:
            room.subscribers.add(user)
            self._emit(events.SubscriptionChanged(room.id, user, True))
        return Done()

    def unsubscribe(self, user: str, room_id: str) -> Result:
        room = self.rooms.get(room_id)
        if room is not None and user in room.subscribers:
            room.subscribers.discard(user)
            self._emit(events.SubscriptionChanged(room.id, user, False))
        return Done()

    def arm_reminders(self, room: Room, now: float) -> None:
        """Schedule the reminders of a scheduled room that are still ahead."""
        start = room.scheduled_for
        if room.state != "scheduled" or start is None:
            return
        lead = self.limits.reminder_lead
        if lead > 0 and start - lead > now:
            self._push_timer(start - lead, TimerKind.REMINDER, room)
        if start > now:
            self._push_timer(start, TimerKind.REMINDER, room)

    def _remind(self, room: Room, _key: str, _now: float) -> None:
        """Send ``room_reminder`` to the sessions of the subscribers and of the owner."""
        start = room.scheduled_for
        if room.state != "scheduled" or start is None or self.rooms.get(room.id) is not room:
            return
        users = room.subscribers | {room.owner}
        self._send(
            (sid for sid, state in self._sessions.items() if state.identity.user in users),
            messages.RoomReminder(room=room.id, title=room.title, starts_at=start),
        )

    def notify_started(self, room: Room) -> None:
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
