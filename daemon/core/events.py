"""What the core asks its caller to do or tells it happened; pulled with ``SalonCore.next_event``.

:class:`Deliver` carries the control events for clients; the others describe state changes for
the upper layers (hooks, store, audit log, metrics) and are never sent to clients as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from salon.daemon.wire import messages

from .forwarder import Outlet
from .records import RoomSettings
from .room import Ban, Invite


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
    "The room id; empty for a server-wide action (``server_ban``, ``server_unban``)."

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


@dataclass
class KnockResolved:
    """A knock left the room's list: approved, denied, cancelled by the requester, or expired."""

    room: str
    "The room id."

    request_id: str
    "The knock's id (``JoinRequestInfo.request_id``)."

    user: str
    "The requester's user id."

    outcome: str
    "approved, denied, cancelled or expired."

    by: str
    "Who resolved it (the requester when cancelled; empty when it expired)."


@dataclass
class HandQueueChanged:
    """A hand rose or was lowered (by its owner, a host, or by leaving the audience)."""

    room: str
    "The room id."

    users: list[str]
    "The raised hands after the change, oldest first."


@dataclass
class ParticipantChanged:
    """A member's visible state changed in place: mute, hand (``participant_updated``)."""

    room: str
    "The room id."

    participant: messages.Participant
    "The member as everyone in the room now sees them."


@dataclass
class RoomSettingsChanged:
    """A room's lasting attributes changed: created, updated, started, owner or moderators.

    For the store; carries a copy of the new values, so it may be handled later."""

    settings: RoomSettings
    "The room's settings after the change."


@dataclass
class BanChanged:
    """A ban was set, or lifted (by a host, an operator or its expiry)."""

    room: str | None
    "The room id; None for a server-wide ban."

    user: str
    "The banned user's id."

    ban: Ban | None
    "The ban now in force (never mutated afterwards); None when it was lifted."


@dataclass
class InviteChanged:
    """An invite link was created, revoked or used (its ``uses`` went up)."""

    invite: Invite
    "A copy of the invite after the change."


@dataclass
class ApprovalChanged:
    """A user was admitted after a knock (they re-enter without knocking), or lost that."""

    room: str
    "The room id."

    user: str
    "The user's id."

    approved: bool
    "True: approved; False: the approval was withdrawn (a ban)."


@dataclass
class SubscriptionChanged:
    """A user subscribed to a scheduled room's reminders, or the subscription ended."""

    room: str
    "The room id."

    user: str
    "The user's id."

    subscribed: bool
    "True: subscribed; False: unsubscribed, banned, or the room started."


@dataclass
class FlowOpened:
    """A stage member got a media flow: the key that decrypts it, for audio features."""

    room: str
    "The room id."

    key: messages.MediaKey
    "The flow's id, SSRC and SRTP key (``key.user`` is the member)."


@dataclass
class FlowClosed:
    """A media flow was retired: the member left the stage, the room or the server."""

    room: str
    "The room id."

    user: str
    "The member's user id."

    flow_id: int
    "The retired flow."


@dataclass
class RecordingStarted:
    """A room's recording started; copies of recorded datagrams go to ``outlet``."""

    room: str
    "The room id."

    recording: str
    "The recording's id."

    by: str
    "The host or operator who started it."

    at: float
    "When it started (the core's clock): the recording's time zero."

    outlet: Outlet
    "The tap the forwarder fills with the recorded flows' datagrams (never sent anywhere)."


@dataclass
class RecordingTrackAdded:
    """A consenting stage member's flow is recorded from now on."""

    room: str
    "The room id."

    recording: str
    "The recording's id."

    key: messages.MediaKey
    "The member's flow and SRTP key."


@dataclass
class RecordingTrackRemoved:
    """A flow is no longer recorded: consent withdrawn, or the member left the stage."""

    room: str
    "The room id."

    recording: str
    "The recording's id."

    user: str
    "The member's user id."

    flow_id: int
    "The flow no longer recorded."


@dataclass
class RecordingStopped:
    """A room's recording ended; nothing more reaches its outlet."""

    room: str
    "The room id."

    recording: str
    "The recording's id."

    by: str
    "Who stopped it; empty when the room closed or the recorder failed."

    reason: str
    "stopped, room_closed or failed."

    at: float
    "When it ended (the core's clock)."


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
    | KnockResolved
    | HandQueueChanged
    | ParticipantChanged
    | RoomSettingsChanged
    | BanChanged
    | InviteChanged
    | ApprovalChanged
    | SubscriptionChanged
    | FlowOpened
    | FlowClosed
    | RecordingStarted
    | RecordingTrackAdded
    | RecordingTrackRemoved
    | RecordingStopped
)
