"""Moderation: mute and unmute, removal, room bans and server-wide bans."""

from __future__ import annotations

from dataclasses import replace

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from . import events
from .context import Actor, Concern, CoreContext, TimerKind
from .errors import CoreError
from .identity import Identity
from .permissions import Action, check
from .results import Done, Result, ServerBanResult
from .room import Ban, Member, Room, check_positive, clean_reason


class Moderation(Concern):
    """A host or operator acting on members: mute, remove, ban (per room or server-wide)."""

    def __init__(self, ctx: CoreContext) -> None:
        super().__init__(ctx)
        ctx.on_timer(TimerKind.BAN_EXPIRY, self._expire_ban)

    def _expire_ban(self, room: Room, user: str, now: float) -> None:
        ban = room.bans.get(user)
        if ban is not None and not ban.active(now):
            del room.bans[user]
            if self.rooms.get(room.id) is room:
                self._emit(events.BanChanged(room.id, user, None))

    @staticmethod
    def _sync_mute(member: Member) -> None:
        flow = member.flow
        if flow is not None:
            flow.muted = member.muted or member.muted_by_moderator
            old = flow.predecessor
            for other in (flow.red_flow, old, old.red_flow if old is not None else None):
                if other is not None:
                    other.muted = flow.muted

    def mute(self, actor: Actor, request: messages.Mute, now: float) -> Result:
        room = actor.room
        request.reason = clean_reason(request.reason)
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
            return Done()
        member = self._self(actor)
        check(Action.MUTE_SELF, member.role)
        if not member.muted:
            member.muted = True
            self._sync_mute(member)
            self._participant_updated(room, member)
        return Done()

    def unmute(self, actor: Actor, request: messages.Unmute, now: float) -> Result:
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
            return Done()
        member = self._self(actor)
        check(Action.UNMUTE_SELF, member.role)
        if member.muted_by_moderator:
            raise CoreError(ErrorCode.MUTED_BY_MODERATOR, "a moderator muted you")
        if member.muted:
            member.muted = False
            self._sync_mute(member)
            self._participant_updated(room, member)
        return Done()

    def remove(self, actor: Actor, request: messages.Remove, now: float) -> Result:
        room = actor.room
        request.reason = clean_reason(request.reason)
        self._not_self(actor, request.user, "remove")
        target = self._present(room, request.user)
        check(Action.REMOVE, actor.role, target.role)
        self._send(
            (target.session,),
            messages.Removed(room=room.id, by=actor.user, reason=request.reason),
        )
        self.ctx.membership.depart(room, target, "removed", now)
        # In an approval room, whoever is removed must knock again to come back.
        if target.user in room.approved_users:
            room.approved_users.discard(target.user)
            self._emit(events.ApprovalChanged(room.id, target.user, False))
        self._moderation(actor, "remove", target.user, reason=request.reason)
        return Done()

    def ban(self, actor: Actor, request: messages.Ban, now: float) -> Result:
        room = actor.room
        request.reason = clean_reason(request.reason)
        user = request.user
        self._not_self(actor, user, "ban")
        duration = check_positive("duration", request.duration)
        check(Action.BAN, actor.role, room.rank_role(user))
        until = now + duration if duration is not None else None
        ban = Ban(reason=request.reason, until=until, by=actor.user)
        room.bans[user] = ban
        self._emit(events.BanChanged(room.id, user, ban))
        if until is not None:
            self._push_timer(until, TimerKind.BAN_EXPIRY, room, user)
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
            self.ctx.knocks.resolve_knock(
                room, knock, "denied", actor.user, requester_reason="banned"
            )
        target = room.members.get(user)
        if target is not None:
            self._send(
                (target.session,),
                messages.Removed(
                    room=room.id, by=actor.user, reason=request.reason, banned=True, until=until
                ),
            )
            self.ctx.membership.depart(room, target, "banned", now)
        self._moderation(actor, "ban", user, reason=request.reason, duration=duration, until=until)
        return Done()

    def unban(self, actor: Actor, request: messages.Unban, now: float) -> Result:
        room = actor.room
        check(Action.UNBAN, actor.role)
        ban = room.bans.get(request.user)
        if ban is None or not ban.active(now):
            raise CoreError(ErrorCode.PARTICIPANT_NOT_FOUND, f"{request.user} is not banned")
        del room.bans[request.user]
        self._emit(events.BanChanged(room.id, request.user, None))
        self._moderation(actor, "unban", request.user)
        return Done()

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
        reason = clean_reason(reason)
        seconds = check_positive("duration", duration)
        until = now + seconds if seconds is not None else None
        ban = Ban(reason=reason, until=until, by=actor.user)
        self.ctx.server_bans[user] = ban
        self._emit(events.BanChanged(None, user, ban))
        for room in list(self.rooms.values()):
            if room.state == "closed":
                continue
            for knock in [k for k in room.knocks.values() if k.user == user]:
                self.ctx.knocks.resolve_knock(
                    room, knock, "denied", actor.user, requester_reason="banned"
                )
            target = room.members.get(user)
            if target is not None:
                self._send(
                    (target.session,),
                    messages.Removed(
                        room=room.id, by=actor.user, reason=reason, banned=True, until=until
                    ),
                )
                self.ctx.membership.depart(room, target, "banned", now)
        detail = {"reason": reason, "duration": seconds, "until": until}
        self._emit(events.ModerationTaken("", actor.user, "server_ban", user, detail))
        self.ctx.speaking.flush_speaking(now)
        return ServerBanResult(user, until)

    def unban_user_globally(self, actor: Identity, user: str, now: float) -> Result:
        """Operator action: lift ``user``'s server-wide ban (``participant_not_found`` if none).

        Emits ``BanChanged`` (room None, ban None) and ``ModerationTaken`` (room ``""``, action
        ``server_unban``). Returns ``{}``.
        """
        if not actor.operator:
            raise CoreError(ErrorCode.NOT_PERMITTED, "only an operator may lift a server ban")
        ban = self.ctx.server_bans.get(user)
        if ban is None or not ban.active(now):
            raise CoreError(
                ErrorCode.PARTICIPANT_NOT_FOUND, f"{user} is not banned from the server"
            )
        del self.ctx.server_bans[user]
        self._emit(events.BanChanged(None, user, None))
        self._emit(events.ModerationTaken("", actor.user, "server_unban", user, {}))
        return Done()

    def active_server_bans(self, now: float) -> dict[str, Ban]:
        """The server-wide bans in force at ``now``, by user id."""
        return {user: ban for user, ban in self.ctx.server_bans.items() if ban.active(now)}

    def restore_server_ban(self, user: str, ban: Ban, now: float) -> None:
        """Bring back a stored server-wide ban (ignored if it has expired). Emits nothing."""
        if ban.active(now):
            self.ctx.server_bans[user] = replace(ban)
