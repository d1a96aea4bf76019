"""Control-stream message schemas for ``salon/1``.

Every message is a JSON object with a ``"type"`` field. Requests (client to server) also carry
an ``"id"``; the server answers each with :class:`Ok` or :class:`Error` carrying ``"re": id``.
Events (server to client) carry no id. PROTOCOL.md is the normative description of each one;
``tests/test_protocol_doc.py`` keeps the two in step.

Decoding never raises anything but :class:`MessageError`, whose ``code`` is an
:class:`ErrorCode` the server can send back as is.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal, Union

import msgspec

PROTOCOL_VERSION = "salon/1"
MAX_MESSAGE_SIZE = 64 * 1024

Role = Literal["owner", "moderator", "speaker", "listener"]
Policy = Literal["open", "approval", "invite"]
RoomStateName = Literal["scheduled", "live", "closed"]
InviteRole = Literal["listener", "speaker"]


class ErrorCode(str, enum.Enum):
    """Machine-readable error codes; the ``code`` field of an ``error`` message."""

    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    NOT_AUTHENTICATED = "not_authenticated"
    ALREADY_AUTHENTICATED = "already_authenticated"
    AUTH_FAILED = "auth_failed"
    RATE_LIMITED = "rate_limited"
    ROOM_NOT_FOUND = "room_not_found"
    ROOM_EXISTS = "room_exists"
    ROOM_CLOSED = "room_closed"
    ROOM_NOT_LIVE = "room_not_live"
    ROOM_LIMIT = "room_limit"
    NOT_IN_ROOM = "not_in_room"
    ALREADY_IN_ROOM = "already_in_room"
    KNOCK_PENDING = "knock_pending"
    NO_KNOCK = "no_knock"
    NOT_PERMITTED = "not_permitted"
    BANNED = "banned"
    INVITE_REQUIRED = "invite_required"
    INVITE_INVALID = "invite_invalid"
    REQUEST_NOT_FOUND = "request_not_found"
    PARTICIPANT_NOT_FOUND = "participant_not_found"
    STAGE_FULL = "stage_full"
    NOT_ON_STAGE = "not_on_stage"
    ALREADY_ON_STAGE = "already_on_stage"
    NO_INVITATION = "no_invitation"
    MUTED_BY_MODERATOR = "muted_by_moderator"
    ALREADY_RECORDING = "already_recording"
    NOT_RECORDING = "not_recording"
    INVALID_VALUE = "invalid_value"
    INVALID_TEXT = "invalid_text"
    DENIED_BY_PLUGIN = "denied_by_plugin"
    SHUTTING_DOWN = "shutting_down"
    STORE_UNAVAILABLE = "store_unavailable"
    STREAM_UNAVAILABLE = "stream_unavailable"
    HOME_UNREACHABLE = "home_unreachable"
    INTERNAL_ERROR = "internal_error"


class MessageError(ValueError):
    """A control message could not be decoded; ``code`` says why, ``request_id`` echoes its id."""

    def __init__(self, code: ErrorCode, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


# --------------------------------------------------------------------------- shared structs


class Participant(msgspec.Struct, kw_only=True):
    """A member of a room as every other member sees them."""

    user: str
    display_name: str
    role: Role
    muted: bool = True
    muted_by_moderator: bool = False
    hand_raised: bool = False
    verified: dict[str, str] = {}


class RoomSummary(msgspec.Struct, kw_only=True):
    """A room as listed for discovery."""

    room: str
    title: str
    topics: list[str] = []
    policy: Policy = "open"
    state: RoomStateName = "live"
    owner: str = ""
    speakers: int = 0
    listeners: int = 0
    max_speakers: int = 10
    mute_on_join: bool = False
    persistent: bool = False
    scheduled_for: float | None = None
    description: str = ""
    recording: bool = False


class RedFlowKey(msgspec.Struct, kw_only=True):
    """A speaker's redundancy flow (PROTOCOL.md 11.10): its own flow id, SSRC and SRTP key."""

    flow_id: int
    ssrc: int
    key: str


class MediaKey(msgspec.Struct, kw_only=True):
    """SRTP parameters of one speaker's media flow. ``key`` is base64(master key || master salt)."""

    user: str
    flow_id: int
    ssrc: int
    profile: str = "AEAD_AES_128_GCM"
    key: str
    epoch: int = 0
    red_flow: RedFlowKey | None = None
    """The speaker's redundancy flow, if its client sends one (it declared ``"red_flow"``)."""


class JoinRequestInfo(msgspec.Struct, kw_only=True):
    """A knock on an approval room, as the owner and moderators see it."""

    request_id: str
    user: str
    display_name: str
    verified: dict[str, str] = {}
    trust: list[str] = []
    requested_at: float
    expires_at: float


class InviteInfo(msgspec.Struct, kw_only=True):
    """An invite link: whoever presents ``token`` joins the room with ``role``."""

    token: str
    room: str
    role: InviteRole
    created_by: str
    expires_at: float | None = None
    max_uses: int | None = None
    uses: int = 0


class SpeakerLevel(msgspec.Struct, kw_only=True):
    """One speaker's current audio level, 0 (loud) to 127 (silence) -dBov as in RFC 6464."""

    user: str
    level: int


class Limits(msgspec.Struct, kw_only=True):
    """The limits in force for a session: the ``limits`` of the ``hello`` result."""

    max_message_size: int
    max_datagram_size: int
    message_rate: float
    message_burst: int
    min_bitrate: int
    """Lowest Opus bitrate (bits per second) a speaker's adaptation may go down to."""
    max_bitrate: int
    """Highest Opus bitrate (bits per second) a speaker may send."""


class NodeAddress(msgspec.Struct, kw_only=True):
    """Another node of the server's cluster a client may reconnect to: the ``nodes`` of the
    ``hello`` result (PROTOCOL.md 17)."""

    server: str
    fingerprint: str
    node: str


MAX_NODE_ADDRESSES = 8
"""Nodes a ``hello`` result lists at most (PROTOCOL.md 17)."""


def json_number(value: float) -> int | float:
    """``value`` as a ``number`` field carries it: an integer when whole (50, not 50.0)."""
    return int(value) if float(value).is_integer() else value


class RoomSnapshot(msgspec.Struct, kw_only=True):
    """The full state of a room as the receiving member may see it."""

    summary: RoomSummary
    participants: list[Participant] = []
    hand_queue: list[str] = []
    knocks: list[JoinRequestInfo] = []
    media_keys: list[MediaKey] = []
    you: str = ""
    partial: bool = False
    """True when ``participants`` leaves members out (a big audience): page them with
    ``list_participants``."""
    hand_queue_total: int = 0
    """Raised hands in all (hosts only); ``hand_queue`` may list only the first ones."""
    knocks_total: int = 0
    """Pending knocks in all (hosts only); ``knocks`` may list only the oldest ones."""


# --------------------------------------------------------------------------- requests

MAX_REQUEST_ID = 2**53 - 1
MAX_REDIRECTS = 3
"""Redirects a client follows for one join at most (PROTOCOL.md 17); ``hello`` ``redirects``
is bounded by it."""
"""The largest request id (so that clients with JavaScript-style numbers can echo it exactly)."""


class _Request(msgspec.Struct, tag_field="type", kw_only=True):
    """Base of every request. Unknown fields are ignored so that the protocol can grow."""

    id: Annotated[int, msgspec.Meta(ge=0, le=MAX_REQUEST_ID)]


CAPABILITY_RED = "red"
"""The ``hello`` capability of a client that decodes RED payloads (PROTOCOL.md 11.9)."""
CAPABILITY_RED_FLOW = "red_flow"
"""The ``hello`` capability of a client that sends a redundancy flow when asked and uses one
it receives (PROTOCOL.md 11.10)."""
MAX_CAPABILITIES = 16
"""Most entries a ``hello``'s ``capabilities`` may list."""


class Hello(_Request, kw_only=True, tag="hello"):
    """Opens the session: protocol version, display name and credentials for the auth layer."""

    version: str
    display_name: str
    credentials: dict[str, str] = {}
    client: str = ""
    redirects: Annotated[int, msgspec.Meta(ge=0, le=MAX_REDIRECTS)] | None = None
    capabilities: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=32)]],
        msgspec.Meta(max_length=MAX_CAPABILITIES),
    ] = []
    """Optional features the client supports, e.g. ``"red"``; unknown names are ignored."""


class Ping(_Request, kw_only=True, tag="ping"):
    """Liveness check; answered with ``ok``."""


class ListRooms(_Request, kw_only=True, tag="list_rooms"):
    """Rooms that are live or scheduled, optionally only those with ``topic``."""

    topic: str | None = None


class GetRoom(_Request, kw_only=True, tag="get_room"):
    """One room's summary."""

    room: str


class CreateRoom(_Request, kw_only=True, tag="create_room"):
    """Create a room; the caller becomes its owner. ``room`` is an optional slug."""

    room: str | None = None
    title: str
    topics: list[str] = []
    policy: Policy = "open"
    max_speakers: int = 10
    mute_on_join: bool = False
    persistent: bool = False
    scheduled_for: float | None = None
    description: str = ""


class StartRoom(_Request, kw_only=True, tag="start_room"):
    """Owner turns a scheduled room live."""

    room: str


class SubscribeRoom(_Request, kw_only=True, tag="subscribe_room"):
    """Be reminded (``room_reminder``, ``room_started``) when scheduled room ``room`` starts."""

    room: str


class UnsubscribeRoom(_Request, kw_only=True, tag="unsubscribe_room"):
    """Stop the reminders of ``room``; succeeds even when not subscribed."""

    room: str


class Join(_Request, kw_only=True, tag="join"):
    """Join a room (or knock on an approval room); ``invite`` is an invite token."""

    room: str
    invite: str | None = None


class CancelKnock(_Request, kw_only=True, tag="cancel_knock"):
    """Withdraw a pending knock."""


class Leave(_Request, kw_only=True, tag="leave"):
    """Leave the current room."""


class ApproveKnock(_Request, kw_only=True, tag="approve_knock"):
    """Owner or moderator admits a knocking requester."""

    request_id: str


class DenyKnock(_Request, kw_only=True, tag="deny_knock"):
    """Owner or moderator refuses a knocking requester."""

    request_id: str
    reason: str = ""


class RaiseHand(_Request, kw_only=True, tag="raise_hand"):
    """A listener asks to speak; joins the end of the hand queue."""


class LowerHand(_Request, kw_only=True, tag="lower_hand"):
    """Lower one's own hand, or (moderators) ``user``'s hand."""

    user: str | None = None


class InviteToSpeak(_Request, kw_only=True, tag="invite_to_speak"):
    """Owner or moderator invites a listener onto the stage; the listener accepts or declines."""

    user: str


class AcceptSpeak(_Request, kw_only=True, tag="accept_speak"):
    """Accept an invitation to speak: the caller joins the stage."""


class DeclineSpeak(_Request, kw_only=True, tag="decline_speak"):
    """Decline an invitation to speak."""


class MoveToAudience(_Request, kw_only=True, tag="move_to_audience"):
    """Leave the stage yourself (no ``user``) or move ``user`` back to the audience."""

    user: str | None = None


class Mute(_Request, kw_only=True, tag="mute"):
    """Mute yourself (no ``user``) or, as a moderator, mute ``user`` (enforced by the server)."""

    user: str | None = None
    reason: str = ""


class Unmute(_Request, kw_only=True, tag="unmute"):
    """Unmute yourself, or as a moderator lift the moderator mute on ``user``."""

    user: str | None = None


class Remove(_Request, kw_only=True, tag="remove"):
    """Remove ``user`` from the room; they may come back."""

    user: str
    reason: str = ""


class Ban(_Request, kw_only=True, tag="ban"):
    """Remove ``user`` and refuse their return, for ``duration`` seconds or for good."""

    user: str
    reason: str = ""
    duration: float | None = None


class Unban(_Request, kw_only=True, tag="unban"):
    """Lift a ban on ``user``."""

    user: str


class Promote(_Request, kw_only=True, tag="promote"):
    """Make ``user`` a moderator (owner only); a moderator is on stage."""

    user: str


class Demote(_Request, kw_only=True, tag="demote"):
    """Turn moderator ``user`` back into a speaker (owner only)."""

    user: str


class TransferOwnership(_Request, kw_only=True, tag="transfer_ownership"):
    """Owner hands the room to ``user``, a member; the old owner becomes a moderator."""

    user: str


class UpdateRoom(_Request, kw_only=True, tag="update_room"):
    """Change the current room's settings; omitted fields keep their value."""

    title: str | None = None
    topics: list[str] | None = None
    policy: Policy | None = None
    max_speakers: int | None = None
    mute_on_join: bool | None = None
    description: str | None = None


class CloseRoom(_Request, kw_only=True, tag="close_room"):
    """Close the current room for everyone (owner, or a moderator)."""


class CreateInvite(_Request, kw_only=True, tag="create_invite"):
    """Create an invite link for the current room."""

    role: InviteRole = "listener"
    expires_in: float | None = None
    max_uses: int | None = None


class RevokeInvite(_Request, kw_only=True, tag="revoke_invite"):
    """Revoke an invite link of the current room."""

    token: str


MAX_PARTICIPANTS_PAGE = 500
"""Largest ``limit`` of a ``list_participants`` request."""


class ListParticipants(_Request, kw_only=True, tag="list_participants"):
    """A page of the current room's members in user id order, after the cursor ``after``."""

    after: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTICIPANTS_PAGE)] = 100


class ListInvites(_Request, kw_only=True, tag="list_invites"):
    """The current room's invite links."""


class StartRecording(_Request, kw_only=True, tag="start_recording"):
    """Owner or moderator starts recording the room; each stage member is asked to consent."""


class StopRecording(_Request, kw_only=True, tag="stop_recording"):
    """Owner or moderator stops the room's recording."""


class RecordingConsent(_Request, kw_only=True, tag="recording_consent"):
    """A stage member agrees (or no longer agrees) to be in the running recording."""

    consent: bool


class SetStream(_Request, kw_only=True, tag="set_stream"):
    """An audience member asks for the room's stream (HLS) instead of real-time media, or back."""

    on: bool


MAX_REPORTED_FLOWS = 32
"""Most flows one ``receiver_report`` may describe."""
MAX_REPORT_PACKETS = 1000
"""Most packets one flow's entry may count (a report covers at most a few seconds)."""


class FlowReception(msgspec.Struct, kw_only=True):
    """What a listener received of one speaker's flow since its previous report."""

    flow_id: Annotated[int, msgspec.Meta(ge=0, le=(1 << 62) - 1)]
    expected: Annotated[int, msgspec.Meta(ge=1, le=MAX_REPORT_PACKETS)]
    lost: Annotated[int, msgspec.Meta(ge=0, le=MAX_REPORT_PACKETS)]
    late: Annotated[int, msgspec.Meta(ge=0, le=MAX_REPORT_PACKETS)] = 0
    jitter_ms: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 0.0


class ReceiverReport(_Request, kw_only=True, tag="receiver_report"):
    """A listener's loss, late packets and jitter per speaker flow (every 1-2 s while it hears
    audio); the server aggregates them per speaker and tells the speaker (``loss_report``)."""

    reports: Annotated[list[FlowReception], msgspec.Meta(max_length=MAX_REPORTED_FLOWS)]


Request = Union[
    Hello,
    Ping,
    ListRooms,
    GetRoom,
    CreateRoom,
    StartRoom,
    SubscribeRoom,
    UnsubscribeRoom,
    Join,
    CancelKnock,
    Leave,
    ApproveKnock,
    DenyKnock,
    RaiseHand,
    LowerHand,
    InviteToSpeak,
    AcceptSpeak,
    DeclineSpeak,
    MoveToAudience,
    Mute,
    Unmute,
    Remove,
    Ban,
    Unban,
    Promote,
    Demote,
    TransferOwnership,
    UpdateRoom,
    CloseRoom,
    CreateInvite,
    RevokeInvite,
    ListInvites,
    ListParticipants,
    StartRecording,
    StopRecording,
    RecordingConsent,
    SetStream,
    ReceiverReport,
]

REQUEST_TYPES: dict[str, type[_Request]] = {
    cls.__struct_config__.tag: cls
    for cls in Request.__args__  # type: ignore[attr-defined]
}

STORED_REQUESTS: frozenset[str] = frozenset(
    {
        "create_room",
        "start_room",
        "subscribe_room",
        "unsubscribe_room",
        "approve_knock",
        "deny_knock",
        "invite_to_speak",
        "remove",
        "ban",
        "unban",
        "promote",
        "demote",
        "transfer_ownership",
        "update_room",
        "close_room",
        "create_invite",
        "revoke_invite",
        "start_recording",
        "stop_recording",
    }
)
"""Requests whose every success changes what the server stores (a setting, a ban, an invite, an
audit entry): refused with ``store_unavailable`` before they take effect while the server's
database is unavailable (PROTOCOL.md section 9.1)."""


# --------------------------------------------------------------------------- replies


class Ok(msgspec.Struct, tag="ok", tag_field="type", kw_only=True):
    """Success reply to request ``re``; ``result`` depends on the request (see PROTOCOL.md)."""

    re: int
    result: dict[str, Any] = {}


class Error(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    """Failure reply to request ``re`` (``null`` when the request had no readable id)."""

    re: int | None
    code: str
    message: str


# --------------------------------------------------------------------------- events


class _Event(msgspec.Struct, tag_field="type", kw_only=True):
    pass


class RoomState(_Event, kw_only=True, tag="room_state"):
    """Full room state; sent when you enter a room and whenever a resync is needed."""

    room: RoomSnapshot


class RoomUpdated(_Event, kw_only=True, tag="room_updated"):
    """The room's settings or counts changed."""

    room: RoomSummary


class RoomClosed(_Event, kw_only=True, tag="room_closed"):
    """The room was closed; you are no longer in it."""

    room: str
    reason: str


class RoomReminder(_Event, kw_only=True, tag="room_reminder"):
    """A scheduled room you subscribed to (or own) starts at ``starts_at``: soon, or now."""

    room: str
    title: str
    starts_at: float


class RoomStarted(_Event, kw_only=True, tag="room_started"):
    """A scheduled room you subscribed to is now live: it can be joined."""

    room: RoomSummary


class ParticipantJoined(_Event, kw_only=True, tag="participant_joined"):
    """Someone entered the room."""

    room: str
    participant: Participant


class ParticipantLeft(_Event, kw_only=True, tag="participant_left"):
    """Someone left: ``reason`` is left, disconnected, removed or banned."""

    room: str
    user: str
    reason: str


class ParticipantUpdated(_Event, kw_only=True, tag="participant_updated"):
    """A member's role, mute or hand changed."""

    room: str
    participant: Participant


class OwnerChanged(_Event, kw_only=True, tag="owner_changed"):
    """Ownership of the room passed to ``user``."""

    room: str
    user: str


MAX_HANDS_LISTED = 100
"""Raised hands a ``hand_queue`` event lists at most (the first ones); ``total`` counts all."""


class HandQueue(_Event, kw_only=True, tag="hand_queue"):
    """The ordered raised-hand queue (sent to the owner and moderators)."""

    room: str
    users: list[str]
    total: int = 0
    """Raised hands in all; ``users`` lists at most the first 100."""


class Knock(_Event, kw_only=True, tag="knock"):
    """Someone asks to enter an approval room (sent to the owner and moderators)."""

    room: str
    request: JoinRequestInfo


class KnockResolved(_Event, kw_only=True, tag="knock_resolved"):
    """A knock was approved, denied, cancelled or expired (to the owner and moderators)."""

    room: str
    request_id: str
    outcome: Literal["approved", "denied", "cancelled", "expired"]
    by: str = ""


class KnockDenied(_Event, kw_only=True, tag="knock_denied"):
    """Your knock was denied or expired; you are not in the room."""

    room: str
    reason: str


class SpeakInvitation(_Event, kw_only=True, tag="speak_invitation"):
    """A moderator invites you onto the stage: answer with accept_speak or decline_speak."""

    room: str
    by: str


class SpeakInvitationDeclined(_Event, kw_only=True, tag="speak_invitation_declined"):
    """``user`` declined an invitation to speak (to the owner and moderators)."""

    room: str
    user: str


class MediaKeyEvent(_Event, kw_only=True, tag="media_key"):
    """A speaker's media flow and SRTP key: decrypt datagrams with this ``flow_id`` using it."""

    room: str
    key: MediaKey


class MediaKeyRevoked(_Event, kw_only=True, tag="media_key_revoked"):
    """A speaker left the stage: forget the key of ``flow_id``."""

    room: str
    user: str
    flow_id: int


MAX_SPEAKING_LISTED = 100
"""Speakers a ``speaking`` event lists at most (the loudest)."""


class Speaking(_Event, kw_only=True, tag="speaking"):
    """Who is speaking now, loudest first (sent at a bounded rate)."""

    room: str
    speakers: list[SpeakerLevel]


class Muted(_Event, kw_only=True, tag="muted"):
    """A moderator muted you; the server drops your audio until lifted."""

    room: str
    by: str
    reason: str = ""


class MemberMuted(_Event, kw_only=True, tag="member_muted"):
    """To the hosts: ``by`` (a host, an operator or a plugin) muted stage member ``user``."""

    room: str
    user: str
    by: str
    reason: str = ""


class Removed(_Event, kw_only=True, tag="removed"):
    """You were removed (``banned`` true: and banned) from the room."""

    room: str
    by: str
    reason: str = ""
    banned: bool = False
    until: float | None = None


class RecordingStarted(_Event, kw_only=True, tag="recording_started"):
    """A host started recording the room; only consenting stage members are recorded."""

    room: str
    by: str
    recording: str


class RecordingStopped(_Event, kw_only=True, tag="recording_stopped"):
    """The room's recording ended (``reason``: stopped, room_closed or failed)."""

    room: str
    by: str
    recording: str
    reason: str


class RecordingConsentRequested(_Event, kw_only=True, tag="recording_consent_requested"):
    """The room is being recorded: answer with recording_consent (you are not recorded until)."""

    room: str
    recording: str


class RecordingConsentChanged(_Event, kw_only=True, tag="recording_consent_changed"):
    """Stage member ``user`` is now (``consent`` true) or no longer in the recording."""

    room: str
    user: str
    consent: bool


class ServerShutdown(_Event, kw_only=True, tag="server_shutdown"):
    """The server is stopping; reconnect after ``reconnect_after`` seconds."""

    reason: str
    reconnect_after: float = 5.0


class Stream(_Event, kw_only=True, tag="stream"):
    """How this member receives the room's audio now: the playlist to fetch, or real time."""

    room: str
    playlist: str | None
    """URL of the room's HLS playlist signed for this member; null: real-time media."""


class LossReport(_Event, kw_only=True, tag="loss_report"):
    """To a speaker: how their flow ``flow_id`` reaches the room (at most once a second).

    ``loss`` is the fraction to protect against: the larger of ``uplink_loss`` (measured by the
    server from sequence numbers) and the 75th percentile of the listeners' reported loss.
    """

    room: str
    flow_id: int
    loss: float
    uplink_loss: float
    late: float
    jitter_ms: float
    reporters: int
    red: bool
    """Whether the speaker may send RED: every other member of the room declared ``"red"``."""
    red_flow: bool = False
    """Whether the speaker should send its redundancy flow: a listener needs it (11.10)."""


Event = Union[
    RoomState,
    RoomUpdated,
    RoomClosed,
    RoomReminder,
    RoomStarted,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    OwnerChanged,
    HandQueue,
    Knock,
    KnockResolved,
    KnockDenied,
    SpeakInvitation,
    SpeakInvitationDeclined,
    MediaKeyEvent,
    MediaKeyRevoked,
    Speaking,
    Muted,
    MemberMuted,
    Removed,
    RecordingStarted,
    RecordingStopped,
    RecordingConsentRequested,
    RecordingConsentChanged,
    ServerShutdown,
    Stream,
    LossReport,
]

EVENT_TYPES: dict[str, type[_Event]] = {
    cls.__struct_config__.tag: cls
    for cls in Event.__args__  # type: ignore[attr-defined]
}

ServerMessage = Union[Ok, Error, Event]


# --------------------------------------------------------------------------- codec


class _IdOnly(msgspec.Struct):
    id: int | None = None
    type: Any = None


_request_decoder = msgspec.json.Decoder(Request)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_id_decoder = msgspec.json.Decoder(_IdOnly)
_encoder = msgspec.json.Encoder()


def peek_request_id(data: bytes) -> int | None:
    """The ``id`` of a message that may be otherwise invalid, or None when it has no id a
    request may carry (an integer from 0 to 2^53-1): an out-of-range id is not echoed."""
    try:
        found = _id_decoder.decode(data).id
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(found, int) and 0 <= found <= MAX_REQUEST_ID:
        return found
    return None


def decode_request(data: bytes) -> Request:
    """Decode one client message; raises :class:`MessageError` with a precise reason."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageError(ErrorCode.TOO_LARGE, f"message of {len(data)} bytes exceeds 65536")
    try:
        return _request_decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        request_id = peek_request_id(data)
        # Only a string naming no request is an unknown type; a `type` of the wrong JSON type
        # (a number, null...) or a missing one is a malformed message like any other.
        if text.startswith("Invalid value") and text.endswith("at `$.type`"):
            raise MessageError(ErrorCode.UNKNOWN_TYPE, text, request_id) from None
        raise MessageError(ErrorCode.BAD_MESSAGE, text, request_id) from None
    except msgspec.DecodeError as exc:
        raise MessageError(ErrorCode.BAD_MESSAGE, f"not a JSON object: {exc}") from None
    except UnicodeDecodeError:
        raise MessageError(ErrorCode.BAD_MESSAGE, "message is not valid UTF-8") from None
    except RecursionError:
        raise MessageError(ErrorCode.BAD_MESSAGE, "message is nested too deeply") from None


def decode_server_message(data: bytes) -> ServerMessage:
    """Decode one server message (client side); raises :class:`MessageError`."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageError(ErrorCode.TOO_LARGE, f"message of {len(data)} bytes exceeds 65536")
    try:
        return _server_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MessageError(ErrorCode.BAD_MESSAGE, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MessageError(ErrorCode.BAD_MESSAGE, f"not a JSON object: {exc}") from None
    except UnicodeDecodeError:
        raise MessageError(ErrorCode.BAD_MESSAGE, "message is not valid UTF-8") from None
    except RecursionError:
        raise MessageError(ErrorCode.BAD_MESSAGE, "message is nested too deeply") from None


def encode(message: msgspec.Struct) -> bytes:
    """Encode any message struct to its JSON bytes (without framing)."""
    return _encoder.encode(message)


def to_builtins(message: msgspec.Struct) -> dict[str, Any]:
    """A message as plain Python data (for results, logs and the admin API)."""
    result = msgspec.to_builtins(message)
    assert isinstance(result, dict)
    return result
