"""Invite links: create, revoke, list."""

from __future__ import annotations

from dataclasses import replace

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

from . import events
from .context import Actor, Concern
from .errors import CoreError
from .ids import INVITE_TOKEN_BYTES, random_token
from .permissions import Action, check
from .results import Done, InviteResult, InvitesResult, Result
from .room import Invite, Room, check_invite_role, check_max_uses, check_positive


class Invites(Concern):
    """The invite links of a room (using one is part of joining, see :mod:`.membership`)."""

    def create_invite(self, actor: Actor, request: messages.CreateInvite, now: float) -> Result:
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
        return InviteResult(invite.info())

    def revoke_invite(self, actor: Actor, request: messages.RevokeInvite, now: float) -> Result:
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
        return Done()

    def list_invites(self, actor: Actor, request: messages.ListInvites, now: float) -> Result:
        check(Action.LIST_INVITES, actor.role)
        invites = self.usable(actor.room, now)
        # The reply must fit one message: the newest invites that fit (hosts can make many).
        used = 2 + len(messages.encode(messages.Ok(re=messages.MAX_REQUEST_ID)))
        kept: list[messages.InviteInfo] = []
        for info in reversed(invites):
            used += len(messages.encode(info)) + 1
            if used > messages.MAX_MESSAGE_SIZE:
                break
            kept.append(info)
        return InvitesResult(kept[::-1])

    @staticmethod
    def usable(room: Room, now: float) -> list[messages.InviteInfo]:
        """The room's invites that would admit someone at ``now``."""
        return [i.info() for i in room.invites.values() if i.problem(now) is None]
