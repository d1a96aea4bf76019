"""What the core asks its caller to do or tells it happened; pulled with ``SalonCore.next_event``.

:class:`Deliver` carries the control events for clients; the others describe state changes for
the upper layers (hooks, store, audit log, metrics) and are never sent to clients as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from salon.daemon.wire import messages


@dataclass
class Deliver:
    """Send a control event to some sessions."""

    sessions: tuple[int, ...]
    "The sessions that must receive the event, in no particular order."

    message: messages.Event
    "The event to send (the same object for every session: encode it once)."


@dataclass
class RoomCreated:
    """A room was created (live or scheduled)."""

    room: str
    "The room id."

    owner: str
    "The user id of its owner."


@dataclass
class RoomClosed:
    """A room was closed; its members were told and left it."""

    room: str
    "The room id."

    reason: str
    "closed_by_host, closed_by_operator, owner_left or empty."


@dataclass
class MemberJoined:
    """A session entered a room."""

    room: str
    "The room id."

    user: str
    "The member's user id."

    session: int
    "The member's session."

    role: str
    "The role they entered with."


@dataclass
class MemberLeft:
    """A session left a room."""

    room: str
    "The room id."

    user: str
    "The member's user id."

    session: int
    "The member's session."

    reason: str
    "left, disconnected, removed, banned, replaced or closed."


@dataclass
class RoleChanged:
    """A present member's role changed."""

    room: str
    "The room id."

    user: str
    "The member's user id."

    old: str
    "The role before."

    new: str
    "The role after."


@dataclass
class SpeakingChanged:
    """The set of members speaking in a room changed (paced like the ``speaking`` event)."""

    room: str
    "The room id."

    speakers: list[str]
    "User ids of the members speaking now, loudest first."


@dataclass
class ModerationTaken:
    """A host or operator acted on a room or one of its members; for the audit log."""

    room: str
    "The room id."

    actor: str
    "The user id of whoever acted (an operator's own user id on the admin path)."

    action: str
    "The request type, e.g. ban, approve_knock, update_room."

    target: str | None
    "The user acted upon, if any."

    detail: dict[str, Any] = field(default_factory=dict)
    "Action-specific facts (reason, duration, changed fields, invite token...)."


@dataclass
class KnockReceived:
    """Someone knocked on an approval room; the hosts present were sent a ``knock`` event."""

    room: str
    "The room id."

    request: messages.JoinRequestInfo
    "The knock as the hosts see it."


CoreEvent: TypeAlias = (
    Deliver
    | RoomCreated
    | RoomClosed
    | MemberJoined
    | MemberLeft
    | RoleChanged
    | SpeakingChanged
    | ModerationTaken
    | KnockReceived
)
