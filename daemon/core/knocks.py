"""Knocks: a join on an approval room waits for a host's answer, or expires."""

from __future__ import annotations

from typing import Any

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from . import events
from .context import Actor, Concern, CoreContext, Session, TimerKind
from .errors import CoreError
from .ids import REQUEST_ID_BYTES, random_token
from .permissions import Action, check
from .results import Done, Knocking, Result, UserResult
from .room import JoinRequest, Room, clean_reason


class Knocks(Concern):
    """Pending requests to enter approval rooms: knock, approve, deny, cancel, expire."""

    def __init__(self, ctx: CoreContext) -> None:
        super().__init__(ctx)
        ctx.on_timer(TimerKind.KNOCK_EXPIRY, self._expire_knock)

    def knock(
        self, room: Room, session: int, state: Session, now: float, trust: list[str]
    ) -> Result:
        user = state.identity.user
        for earlier in [k for k in room.knocks.values() if k.user == user]:
            self.resolve_knock(room, earlier, "cancelled", user, requester_reason="replaced")
        requested_at, expires_at = now, now + self.limits.knock_ttl
        returning = room.returning_knocks.pop(user, None)
        if returning is not None and now < returning.expires_at <= expires_at:
            # Knocking at the room's previous server (a cluster failover): the same knock.
            request_id = returning.request_id
            requested_at, expires_at = returning.requested_at, returning.expires_at
        else:
            request_id = random_token(self.random_bytes, REQUEST_ID_BYTES)
        while request_id in room.knocks:
            request_id = random_token(self.random_bytes, REQUEST_ID_BYTES)
        request = JoinRequest(
            request_id=request_id,
            room=room.id,
            session=session,
            identity=state.identity,
            trust=list(trust),
            requested_at=requested_at,
            expires_at=expires_at,
        )
        room.knocks[request_id] = request
        state.knock = request
        state.knock_room = room
        info = request.info()
        self._to_hosts(room, messages.Knock(room=room.id, request=info))
        self._emit(events.KnockReceived(room.id, info))
        self._push_timer(request.expires_at, TimerKind.KNOCK_EXPIRY, room, request_id)
        return Knocking(request_id=request_id, expires_at=request.expires_at)

    def resolve_knock(
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
        self._emit(events.KnockResolved(room.id, request.request_id, request.user, outcome, by))

    def cancel_knock(self, state: Session) -> Result:
        if state.knock is None or state.knock_room is None:
            raise CoreError(ErrorCode.NO_KNOCK, "you are not knocking")
        self.resolve_knock(state.knock_room, state.knock, "cancelled", state.identity.user)
        return Done()

    def _expire_knock(self, room: Room, request_id: str, now: float) -> None:
        request = room.knocks.get(request_id)
        if request is not None and request.expires_at <= now:
            self.resolve_knock(room, request, "expired", "", requester_reason="expired")

    def approve_knock(self, actor: Actor, request: messages.ApproveKnock, now: float) -> Result:
        room = actor.room
        check(Action.APPROVE_KNOCK, actor.role)
        knock = self._pending_knock(room, request.request_id)
        state = self._sessions[knock.session]
        self.resolve_knock(room, knock, "approved", actor.user)
        if knock.user not in room.approved_users:
            room.approved_users.add(knock.user)
            self._emit(events.ApprovalChanged(room.id, knock.user, True))
        role = self.ctx.membership.entry_role(
            room, room.stored_role(knock.user), room.members.get(knock.user), None, knock.user
        )
        self.ctx.membership.enter(room, knock.session, state, role, now)
        self._moderation(actor, "approve_knock", knock.user, request_id=knock.request_id)
        return UserResult(knock.user)

    def deny_knock(self, actor: Actor, request: messages.DenyKnock, now: float) -> Result:
        room = actor.room
        check(Action.DENY_KNOCK, actor.role)
        knock = self._pending_knock(room, request.request_id)
        given = clean_reason(request.reason)
        self.resolve_knock(room, knock, "denied", actor.user, requester_reason=given or "denied")
        self._moderation(actor, "deny_knock", knock.user, request_id=knock.request_id, reason=given)
        return Done()

    @staticmethod
    def _pending_knock(room: Room, request_id: str) -> JoinRequest:
        knock = room.knocks.get(request_id)
        if knock is None:
            raise CoreError(ErrorCode.REQUEST_NOT_FOUND, f"no pending knock {request_id}")
        return knock
