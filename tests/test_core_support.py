"""Helpers shared by the core tests: an in-memory core with connected sessions, event drains,
a deep state dump to prove refusals change nothing, and a tiny media datagram builder.

The datagram builder is deliberately local (varint flow id, 12-byte RTP header, one-byte header
extension with the audio level) so that these tests do not depend on the wire package's own
RTP code.
"""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from typing import Any

import msgspec
import pytest

from salon.daemon.core import CoreError, Deliver, Identity, Limits, SalonCore
from salon.daemon.core.events import CoreEvent
from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode

START = 1_000.0


def build_request(cls: type, **fields: Any) -> Any:
    """A request struct with a dummy id."""
    return cls(id=1, **fields)


def varint(value: int) -> bytes:
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    return (value | 0x80000000).to_bytes(4, "big")


def media_datagram(
    flow_id: int,
    ssrc: int,
    level: int | None = None,
    sequence: int = 0,
    payload: bytes = b"\x55" * 60,
) -> bytes:
    """``varint(flow_id) || RTP`` with an optional RFC 6464 level in extension id 1."""
    first = 0x80 | (0x10 if level is not None else 0)
    header = struct.pack("!BBHII", first, 111, sequence & 0xFFFF, sequence * 960, ssrc)
    if level is not None:
        header += struct.pack("!HHBBBB", 0xBEDE, 1, 0x10, 0x80 | level, 0, 0)
    return varint(flow_id) + header + payload


class Harness:
    """A core, a clock and named sessions."""

    def __init__(self, limits: Limits | None = None, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.core = SalonCore(limits, random_bytes=rng.randbytes)
        self.now = START
        self.sessions: dict[str, int] = {}
        self._next_session = 1

    # -- sessions and requests

    def connect(
        self,
        user: str,
        *,
        name: str | None = None,
        verified: dict[str, str] | None = None,
        operator: bool = False,
        red: bool = False,
        red_flow: bool = False,
    ) -> int:
        session = self._next_session
        self._next_session += 1
        identity = Identity(
            user=user,
            display_name=name or user.title(),
            verified=verified or {},
            operator=operator,
        )
        self.core.connect(session, identity, self.now, red=red, red_flow=red_flow)
        self.sessions.setdefault(user, session)
        return session

    def do(self, session: int, cls: type, **fields: Any) -> dict[str, Any]:
        return self.core.handle_request(session, build_request(cls, **fields), self.now)

    def refuse(self, session: int, code: ErrorCode, cls: type, **fields: Any) -> CoreError:
        """Assert the request is refused with ``code`` and that nothing changed."""
        self.drain()
        before = dump(self.core)
        with pytest.raises(CoreError) as info:
            self.do(session, cls, **fields)
        assert info.value.code == code, info.value.message
        assert dump(self.core) == before
        assert self.drain() == []
        return info.value

    def admin(self, room: str | None, cls: type, /, **fields: Any) -> Any:
        """A request on the operator path, by operator ``root``."""
        actor = Identity(user="root", display_name="Operator", operator=True)
        return self.core.admin_request(actor, room, build_request(cls, **fields), self.now)

    # -- time

    def advance(self, seconds: float) -> None:
        """Move the clock, firing every timer due on the way in order."""
        target = self.now + seconds
        while True:
            deadline = self.core.get_timer()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            self.core.handle_timer(self.now)
        self.now = target
        self.core.handle_timer(self.now)

    # -- outputs

    def drain(self) -> list[CoreEvent]:
        out = []
        while (event := self.core.next_event()) is not None:
            out.append(event)
        return out

    # -- building rooms

    def room(self, owner: str = "owner", room: str = "r1", **settings: Any) -> str:
        """Create ``room`` owned by ``owner`` (connected if needed) and join the owner."""
        session = self.sessions.get(owner) or self.connect(owner)
        self.do(
            session, messages.CreateRoom, room=room, title=settings.pop("title", "Room"), **settings
        )
        self.do(session, messages.Join, room=room)
        return room

    def join(self, user: str, room: str = "r1", **fields: Any) -> int:
        session = self.sessions.get(user) or self.connect(user)
        self.do(session, messages.Join, room=room, **fields)
        return session

    def speaker(self, user: str, room: str = "r1", by: str = "owner") -> int:
        """``user`` joins and is brought onto the stage by ``by``."""
        session = self.sessions.get(user)
        if session is None or self.core.session_room(session) != room:
            session = self.join(user, room)
        self.do(self.sessions[by], messages.InviteToSpeak, user=user)
        self.do(session, messages.AcceptSpeak)
        return session

    def moderator(self, user: str, room: str = "r1", by: str = "owner") -> int:
        session = self.sessions.get(user)
        if session is None or self.core.session_room(session) != room:
            session = self.join(user, room)
        self.do(self.sessions[by], messages.Promote, user=user)
        return session

    def member(self, user: str, room: str = "r1") -> Any:
        return self.core.rooms[room].members[user]


def inbox(events: list[CoreEvent]) -> dict[int, list[messages.Event]]:
    """Control events per session, in order."""
    boxes: dict[int, list[messages.Event]] = defaultdict(list)
    for event in events:
        if isinstance(event, Deliver):
            for session in event.sessions:
                boxes[session].append(event.message)
    return boxes


def received(events: list[CoreEvent], kind: type) -> dict[int, list[Any]]:
    """Messages of type ``kind`` per session."""
    return {
        session: [m for m in box if isinstance(m, kind)]
        for session, box in inbox(events).items()
        if any(isinstance(m, kind) for m in box)
    }


def recipients(events: list[CoreEvent], kind: type) -> set[int]:
    """Every session that received a message of type ``kind``."""
    return set(received(events, kind))


def of_type(events: list[CoreEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def dump(core: SalonCore) -> Any:
    """Everything observable about the core's state, as plain comparable data."""
    rooms = {}
    for room_id, room in core.rooms.items():
        rooms[room_id] = {
            "snapshot": msgspec.to_builtins(core.room_snapshot(room_id)),
            "moderators": list(room.moderators),
            "members": {
                user: (
                    m.session,
                    m.role,
                    m.muted,
                    m.muted_by_moderator,
                    m.invited_by,
                    m.flow.flow_id if m.flow else None,
                    m.flow.muted if m.flow else None,
                )
                for user, m in room.members.items()
            },
            "knocks": {k: (r.session, r.expires_at) for k, r in room.knocks.items()},
            "invites": {
                t: (i.role, i.uses, i.revoked, i.expires_at, i.max_uses)
                for t, i in room.invites.items()
            },
            "bans": {u: (b.reason, b.until, b.by) for u, b in room.bans.items()},
            "approved": sorted(room.approved_users),
            "hands": room.hands.users(),
            "close_at": room.close_at,
            "epochs": dict(room.key_epochs),
            "ssrcs": sorted(room.ssrcs),
            "speaking": sorted(room.speaking.speaking_users()),
        }
    sessions = {
        session: (
            state.identity.user,
            state.room.id if state.room else None,
            state.knock.request_id if state.knock else None,
            len(state.outlet.queue),
        )
        for session, state in core._sessions.items()
    }
    flows = {
        flow_id: (
            f.session,
            f.ssrc,
            f.active,
            f.muted,
            sorted(o.session for o in f.recipients),
        )
        for flow_id, f in core.forwarder.flows.items()
    }
    return {
        "rooms": rooms,
        "sessions": sessions,
        "flows": flows,
        "timers": len(core._timers),
        "forwarder": (
            core.forwarder.received,
            core.forwarder.forwarded,
            dict(core.forwarder.drops),
        ),
    }
