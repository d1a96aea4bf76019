"""Permission abuse over the network: every privileged action, tried by every lesser role.

A real salond and real QUIC clients: an approval room with an owner, two moderators, two
speakers, two listeners, a pending knock, a banned user, a raised hand and a spare invite.
Every request that the permission matrix (PROTOCOL.md section 10) refuses to a role is sent by
a member of that role (and by an authenticated outsider), against every kind of target. Each
one must be answered with the error code of the matrix, and change nothing: the room's whole
state is compared before and after, and the only message the server sends is the error reply
itself (no event reaches anyone).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from salon.client.connection import RequestError, SalonClient
from salon.daemon.core.permissions import ALLOWED, Action, outcome
from salon.daemon.wire import messages as msg
from salon.daemon.wire.messages import ErrorCode
from tests.test_reliability_support import record, scaled

pytestmark = pytest.mark.soak

ROOM = "guarded"


@dataclass(frozen=True)
class Attempt:
    """One privileged request: its type and fields, the matrix row, and whom it aims at."""

    type: str
    action: Action
    fields: tuple[tuple[str, str], ...] = ()
    target: str | None = None
    """The cast member the request names (its role is the target's column), or None."""


def attempts() -> list[Attempt]:
    """Every privileged request, against every kind of member it can name."""
    found: list[Attempt] = [
        Attempt("approve_knock", Action.APPROVE_KNOCK, (("request_id", "$knock"),)),
        Attempt("deny_knock", Action.DENY_KNOCK, (("request_id", "$knock"),)),
        Attempt("lower_hand", Action.LOWER_HAND_OF, (("user", "$listener2"),), "listener2"),
        Attempt("invite_to_speak", Action.INVITE_TO_SPEAK, (("user", "$listener2"),), "listener2"),
        Attempt("unban", Action.UNBAN, (("user", "$banned"),)),
        Attempt("update_room", Action.UPDATE_ROOM, (("title", "Hijacked"),)),
        Attempt("close_room", Action.CLOSE_ROOM),
        Attempt("create_invite", Action.CREATE_INVITE, (("role", "speaker"),)),
        Attempt("revoke_invite", Action.REVOKE_INVITE, (("token", "$invite"),)),
        Attempt("list_invites", Action.LIST_INVITES),
        Attempt("start_recording", Action.START_RECORDING),
        Attempt("stop_recording", Action.STOP_RECORDING),
        Attempt("start_room", Action.START_ROOM, (("room", ROOM),)),
    ]
    targeted = [
        ("move_to_audience", Action.MOVE_TO_AUDIENCE, ("speaker2", "moderator2", "owner")),
        ("mute", Action.MUTE, ("speaker2", "moderator2", "owner")),
        ("unmute", Action.UNMUTE, ("speaker2", "moderator2", "owner")),
        ("remove", Action.REMOVE, ("listener2", "speaker2", "moderator2", "owner")),
        ("ban", Action.BAN, ("listener2", "speaker2", "moderator2", "owner")),
        ("promote", Action.PROMOTE, ("listener2", "speaker2")),
        ("demote", Action.DEMOTE, ("moderator2",)),
        ("transfer_ownership", Action.TRANSFER_OWNERSHIP, ("listener2", "speaker2", "moderator2")),
    ]
    for type_, action, targets in targeted:
        for target in targets:
            found.append(Attempt(type_, action, (("user", f"${target}"),), target))
    return found


ROLE_OF = {
    "owner": "owner",
    "moderator": "moderator",
    "moderator2": "moderator",
    "speaker": "speaker",
    "speaker2": "speaker",
    "listener": "listener",
    "listener2": "listener",
}
ACTORS = ("moderator", "speaker", "listener", "outsider")


def expected_refusal(attempt: Attempt, actor: str) -> ErrorCode | None:
    """The documented refusal of ``attempt`` by ``actor``, or None if the actor may do it."""
    if actor == "outsider":
        # Not a member: room actions are refused for want of a room; start_room names the
        # room, and an outsider ranks as a listener there.
        if attempt.action is Action.START_ROOM:
            return outcome(Action.START_ROOM, "listener")
        return ErrorCode.NOT_IN_ROOM
    target_role = ROLE_OF[attempt.target] if attempt.target else None
    verdict = outcome(attempt.action, ROLE_OF[actor], target_role)
    return None if verdict is ALLOWED else verdict


def room_state(live: Any) -> dict[str, Any]:
    """Everything the core keeps about the room that a request could change."""
    core = live.daemon.core
    room = core.rooms[ROOM]
    return {
        "snapshot": msg.to_builtins(core.room_snapshot(ROOM)),
        "members": {
            user: (m.session, m.role, m.muted, m.muted_by_moderator, m.invited_by)
            for user, m in room.members.items()
        },
        "owner": room.owner,
        "moderators": list(room.moderators),
        "knocks": sorted(room.knocks),
        "invites": {t: (i.role, i.uses, i.revoked) for t, i in room.invites.items()},
        "bans": {u: (b.reason, b.until) for u, b in room.bans.items()},
        "hands": room.hands.users(),
        "state": room.state,
        "recording": room.recording,
        "approved": sorted(room.approved_users),
        "flows": sorted(core.forwarder.flows),
    }


async def build_cast(live: Any) -> tuple[dict[str, SalonClient], dict[str, str]]:
    """The room's members by cast name, and the values the attempts name (``$knock``...)."""
    owner = await live.client("Owner")
    await owner.create_room("Guarded", room=ROOM, policy="approval")
    await owner.join(ROOM)
    listener_invite = (await owner.call("create_invite", role="listener"))["invite"]["token"]
    speaker_invite = (await owner.call("create_invite", role="speaker"))["invite"]["token"]
    cast: dict[str, SalonClient] = {"owner": owner}
    for name in ("moderator", "moderator2", "listener", "listener2", "banned"):
        cast[name] = await live.client(name.capitalize())
        await cast[name].join(ROOM, invite=listener_invite)
    for name in ("speaker", "speaker2"):
        cast[name] = await live.client(name.capitalize())
        await cast[name].join(ROOM, invite=speaker_invite)
    for name in ("moderator", "moderator2"):
        await owner.call("promote", user=cast[name].user)
    await owner.call("ban", user=cast["banned"].user, reason="test")
    await cast["listener2"].call("raise_hand")
    for name in ("owner", "moderator2", "speaker2"):
        await cast[name].call("unmute")
    knocker = await live.client("Knocker")
    knock = await knocker.join(ROOM)
    assert knock["status"] == "knocking"
    cast["outsider"] = await live.client("Outsider")
    spare = (await owner.call("create_invite", role="speaker"))["invite"]["token"]
    values = {f"${name}": client.user for name, client in cast.items()}
    values |= {"$knock": knock["request_id"], "$invite": spare}
    return cast, values


async def test_every_privileged_action_by_every_lesser_role_is_refused(live):
    rounds = scaled(1, 10)
    cast, values = await build_cast(live)
    stats = live.daemon.server.stats
    # Events of the set-up are not what this test is about.
    await asyncio.sleep(0.2)
    for client in cast.values():
        client.drain_events()
    tried: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    cases = attempts()
    for _ in range(rounds):
        for actor in ACTORS:
            for attempt in cases:
                code = expected_refusal(attempt, actor)
                if code is None:
                    continue  # this role may do it: not an abuse
                fields = {key: values.get(value, value) for key, value in attempt.fields}
                before = room_state(live)
                sent_before = stats.messages_out
                try:
                    result = await cast[actor].call(attempt.type, **fields)
                except RequestError as exc:
                    assert exc.code == code.value, (actor, attempt, exc)
                else:
                    raise AssertionError(f"{actor} did {attempt} and got {result}")
                assert room_state(live) == before, (actor, attempt)
                # The error reply was the only message the server sent: no event went out.
                assert stats.messages_out - sent_before == 1, (actor, attempt)
                tried[actor] += 1
                codes[code.value] += 1
            # Stay under the message rate (50 per second): this test is about rights.
            await asyncio.sleep(0.3)
    await asyncio.sleep(0.2)
    for name, client in cast.items():
        assert not client.closed, name
        assert not client.drain_events(), f"{name} received events from refused requests"
    # Every lesser role was refused something, and the room still works for its owner.
    assert set(tried) == set(ACTORS)
    await cast["owner"].call("update_room", title="Still mine")
    assert live.daemon.core.rooms[ROOM].title == "Still mine"
    await asyncio.gather(*(client.close() for client in cast.values()))
    record(
        "permission_abuse",
        request_kinds=len({a.type for a in cases}),
        attempts=sum(tried.values()),
        attempts_by_role=dict(tried),
        refusals_by_code=dict(codes),
        state_changes=0,
        events_leaked=0,
    )
