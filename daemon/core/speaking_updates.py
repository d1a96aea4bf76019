"""Who is speaking: the room's speaking set, sent at a bounded rate; audio levels."""

from __future__ import annotations

from dataclasses import dataclass

from salon.daemon.wire import messages

from . import events
from .context import Concern, CoreContext, TimerKind
from .room import Room


@dataclass(frozen=True)
class MemberLevel:
    """A stage member's smoothed audio level: 0 loudest .. 127 silence (-dBov, RFC 6464)."""

    user: str
    level: int
    speaking: bool


class SpeakingUpdates(Concern):
    """Paces ``speaking`` events per room and answers level queries."""

    def __init__(self, ctx: CoreContext) -> None:
        super().__init__(ctx)
        ctx.on_timer(TimerKind.SPEAKING_EMIT, self._emit_due)
        ctx.on_timer(TimerKind.SPEAKING_HOLD, self._hold_over)

    def _emit_due(self, room: Room, _key: str, now: float) -> None:
        room.speaking_emit_at = None
        self.ctx.speaking_dirty[room] = None

    def _hold_over(self, room: Room, _key: str, now: float) -> None:
        room.speaking_hold_at = None
        if room.state != "closed":
            room.speaking.expire(now)
            self.ctx.speaking_dirty[room] = None

    def levels(self, room_id: str) -> list[MemberLevel]:
        """Every stage member's current level in the room, loudest first ([] if unknown)."""
        room = self.rooms.get(room_id)
        if room is None:
            return []
        activities = sorted(room.speaking.activities.values(), key=lambda a: a.smoothed)
        return [MemberLevel(a.user, round(a.smoothed), a.speaking) for a in activities]

    def flush_speaking(self, now: float) -> None:
        while self.ctx.speaking_dirty:
            room = next(iter(self.ctx.speaking_dirty))
            del self.ctx.speaking_dirty[room]
            self._update_speaking(room, now)

    def _update_speaking(self, room: Room, now: float) -> None:
        """Send the room's speaking set if it changed, at most once per interval."""
        if room.state == "closed":
            return
        if room.speaking_hold_at is None:
            deadline = room.speaking.deadline()
            if deadline is not None:
                room.speaking_hold_at = deadline
                self._push_timer(deadline, TimerKind.SPEAKING_HOLD, room)
        users = room.speaking.speaking_users()
        if users == room.speaking_sent:
            return
        due = room.speaking_sent_at + self.limits.speaking_interval
        if now >= due:
            levels = room.speaking.levels()
            # Loudest first; a stage of hundreds (moderators are not capped) is cut to the
            # loudest that one message always holds.
            listed = levels[: messages.MAX_SPEAKING_LISTED]
            self._to_members(room, messages.Speaking(room=room.id, speakers=listed))
            self._emit(events.SpeakingChanged(room.id, [level.user for level in levels]))
            room.speaking_sent = users
            room.speaking_sent_at = now
        elif room.speaking_emit_at is None:
            room.speaking_emit_at = due
            self._push_timer(due, TimerKind.SPEAKING_EMIT, room)
