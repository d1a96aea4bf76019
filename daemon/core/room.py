"""Room state: the room, its members, knocks, invites and bans, and the validation of settings.

These are plain records; the rules that change them live in :mod:`.service`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from salon.daemon.wire import messages
from salon.daemon.wire.messages import ErrorCode
from salon.daemon.wire.text import TextError, check_text, fit_text

from .errors import CoreError
from .forwarder import Flow
from .hands import HandQueue
from .identity import Identity
from .ids import ROOM_ID_PATTERN
from .permissions import HOST_ROLES, STAGE_ROLES
from .recording import Recording
from .speaking import SpeakingDetector

MAX_TITLE = 200
MAX_TOPICS = 10
MAX_TOPIC = 40
MAX_DESCRIPTION = 2000
MAX_REASON = 200
MIN_SPEAKERS = 1
MAX_SPEAKERS = 100
POLICIES = ("open", "approval", "invite")
INVITE_ROLES = ("listener", "speaker")


# --------------------------------------------------------------------------- records


@dataclass(eq=False)
class Member:
    """A session present in a room."""

    session: int
    identity: Identity
    role: messages.Role
    joined_at: float
    muted: bool = True
    """Self mute; everyone starts muted and unmutes when they want to talk."""
    muted_by_moderator: bool = False
    """Set by a host's mute (or mute_on_join); only a host lifts it."""
    invited_by: str | None = None
    """User id of the host whose invitation to speak is pending."""
    flow: Flow | None = None
    """The media flow while on stage."""
    media_key: messages.MediaKey | None = None
    """The flow's key as sent to the members."""
    last_report: float = -math.inf
    """When this member's last receiver report was accepted."""
    red: bool = False
    """The member's client decodes RED payloads, so speakers may send it RED."""
    red_flow: bool = False
    """The member's client sends and uses redundancy flows (PROTOCOL.md 11.10)."""

    @property
    def user(self) -> str:
        return self.identity.user

    @property
    def on_stage(self) -> bool:
        return self.role in STAGE_ROLES

    @property
    def is_host(self) -> bool:
        return self.role in HOST_ROLES


@dataclass(eq=False)
class JoinRequest:
    """A pending knock on an approval room."""

    request_id: str
    room: str
    session: int
    identity: Identity
    trust: list[str]
    requested_at: float
    expires_at: float

    @property
    def user(self) -> str:
        return self.identity.user

    def info(self) -> messages.JoinRequestInfo:
        return messages.JoinRequestInfo(
            request_id=self.request_id,
            user=self.identity.user,
            display_name=self.identity.display_name,
            verified=dict(self.identity.verified),
            trust=list(self.trust),
            requested_at=self.requested_at,
            expires_at=self.expires_at,
        )


@dataclass(frozen=True, slots=True)
class ReturningKnock:
    """A knock pending at a room's previous server (docs/cluster.md), given back to its user."""

    request_id: str
    requested_at: float
    expires_at: float


@dataclass(eq=False)
class Invite:
    """An invite link of a room."""

    token: str
    room: str
    role: messages.InviteRole
    created_by: str
    created_at: float
    expires_at: float | None = None
    max_uses: int | None = None
    uses: int = 0
    revoked: bool = False

    def problem(self, now: float) -> str | None:
        """Why the invite cannot be used now (revoked, expired, used up), or None."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "used up"
        return None

    def info(self) -> messages.InviteInfo:
        return messages.InviteInfo(
            token=self.token,
            room=self.room,
            role=self.role,
            created_by=self.created_by,
            expires_at=self.expires_at,
            max_uses=self.max_uses,
            uses=self.uses,
        )


@dataclass(eq=False)
class Ban:
    """A user refused entry to a room, until ``until`` (None: for good)."""

    reason: str
    until: float | None
    by: str

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclass(eq=False)
class Room:
    """A room and everything the core keeps about it."""

    id: str
    title: str
    owner: str
    created_at: float
    topics: list[str] = field(default_factory=list)
    policy: messages.Policy = "open"
    max_speakers: int = 10
    mute_on_join: bool = False
    persistent: bool = False
    scheduled_for: float | None = None
    description: str = ""
    state: messages.RoomStateName = "live"
    recording: bool = False
    active_recording: Recording | None = None
    """The recording running now (``recording`` is True exactly while there is one)."""
    moderators: list[str] = field(default_factory=list)
    """Moderators' user ids, earliest promoted first; kept while they are away."""
    members: dict[str, Member] = field(default_factory=dict)
    """Present members by user id, in order of entry. Change it only through
    :meth:`add_member`, :meth:`remove_member` and :meth:`clear_members`, which keep the
    indexes below in step."""
    member_index: list[str] = field(default_factory=list)
    """Present members' user ids in sorted order: the order ``list_participants`` pages in, so
    that a cursor (a user id) keeps its place while others come and go."""
    stage_members: dict[str, Member] = field(default_factory=dict)
    """The present members on stage, in the order they came on stage (a room's listeners are
    never walked to find its stage)."""
    knocks: dict[str, JoinRequest] = field(default_factory=dict)
    """Pending knocks by request id."""
    invites: dict[str, Invite] = field(default_factory=dict)
    bans: dict[str, Ban] = field(default_factory=dict)
    approved_users: set[str] = field(default_factory=set)
    """Users admitted once after a knock; they re-enter without knocking."""
    subscribers: set[str] = field(default_factory=set)
    """Users to remind when this scheduled room is about to start (``subscribe_room``)."""
    hands: HandQueue = field(default_factory=HandQueue)
    returning_stage: set[str] = field(default_factory=set)
    """After the room moved to this server from a failed one (docs/cluster.md): users who were
    on stage there, put back on stage when they rejoin (if there is room)."""
    returning_hands: dict[str, float] = field(default_factory=dict)
    """Likewise: users whose hand was up there, and since when; raised again when they rejoin
    as listeners, in their first order."""
    returning_knocks: dict[str, ReturningKnock] = field(default_factory=dict)
    """Likewise: users who were knocking there; a knock of theirs gets its request id and
    expiry back."""
    speaking: SpeakingDetector = field(default_factory=SpeakingDetector)
    key_epochs: dict[str, int] = field(default_factory=dict)
    """Last key epoch given to each user, so a new stage turn gets epoch + 1."""
    ssrcs: set[int] = field(default_factory=set)
    """SSRCs handed out in this room, never given twice."""
    close_at: float | None = None
    """When the room closes for want of its owner (or of anyone); None when not due."""
    counts_due: float | None = None
    """When coalesced counts (a big audience's ``room_updated``) go out; None: none pending."""
    counts_sent_at: float = -math.inf
    """When the last coalesced ``room_updated`` went out."""
    speaking_sent: frozenset[str] = frozenset()
    speaking_sent_at: float = -math.inf
    speaking_emit_at: float | None = None
    speaking_hold_at: float | None = None

    # -- derived views

    def stored_role(self, user: str) -> messages.Role | None:
        """The role ``user`` holds by the room's records (owner, moderator) or None."""
        if user == self.owner:
            return "owner"
        if user in self.moderators:
            return "moderator"
        return None

    def rank_role(self, user: str) -> messages.Role:
        """The role to rank ``user`` by: present role, else recorded role, else listener."""
        member = self.members.get(user)
        if member is not None:
            return member.role
        return self.stored_role(user) or "listener"

    def add_member(self, member: Member) -> None:
        user = member.user
        assert user not in self.members
        self.members[user] = member
        bisect.insort(self.member_index, user)
        if member.on_stage:
            self.stage_members[user] = member

    def remove_member(self, user: str) -> None:
        del self.members[user]
        index = bisect.bisect_left(self.member_index, user)
        del self.member_index[index]
        self.stage_members.pop(user, None)

    def clear_members(self) -> None:
        self.members.clear()
        self.member_index.clear()
        self.stage_members.clear()

    def role_changed(self, member: Member) -> None:
        """Keep the stage index in step after ``member.role`` changed."""
        if member.on_stage:
            self.stage_members.setdefault(member.user, member)
        else:
            self.stage_members.pop(member.user, None)

    def stage_count(self) -> int:
        return len(self.stage_members)

    def listener_count(self) -> int:
        return len(self.members) - len(self.stage_members)

    def stage_full(self) -> bool:
        return self.stage_count() >= self.max_speakers

    def hosts(self) -> list[Member]:
        return [m for m in self.stage_members.values() if m.role in HOST_ROLES]

    def owner_present(self) -> bool:
        member = self.members.get(self.owner)
        return member is not None and member.role == "owner"

    def summary(self) -> messages.RoomSummary:
        stage = self.stage_count()
        return messages.RoomSummary(
            room=self.id,
            title=self.title,
            topics=list(self.topics),
            policy=self.policy,
            state=self.state,
            owner=self.owner,
            speakers=stage,
            listeners=len(self.members) - stage,
            max_speakers=self.max_speakers,
            mute_on_join=self.mute_on_join,
            persistent=self.persistent,
            scheduled_for=self.scheduled_for,
            description=self.description,
            recording=self.recording,
        )

    def participant(self, member: Member) -> messages.Participant:
        return messages.Participant(
            user=member.user,
            display_name=member.identity.display_name,
            role=member.role,
            muted=member.muted,
            muted_by_moderator=member.muted_by_moderator,
            hand_raised=member.user in self.hands,
            verified=dict(member.identity.verified),
        )

    def snapshot(
        self, viewer: Member | None, host_view: bool, listeners: int = 100
    ) -> messages.RoomSnapshot:
        """The room as ``viewer`` may see it (knocks and hands only with ``host_view``), bounded:
        see :func:`.snapshot.bounded_snapshot`; at most ``listeners`` listeners besides the
        viewer and, for hosts, the raised hands."""
        from .snapshot import bounded_snapshot

        return bounded_snapshot(self, viewer, host_view, listeners)

    def page(self, after: str | None, limit: int) -> tuple[list[Member], str | None]:
        """Up to ``limit`` present members whose user id sorts after ``after`` (from the start
        when None), in user id order, and the cursor of the next page (None: this is the last).

        A member present from the first page to the last is listed exactly once, whoever comes
        and goes meanwhile; one who comes or goes meanwhile is listed at most once."""
        index = self.member_index
        start = 0 if after is None else bisect.bisect_right(index, after)
        users = index[start : start + limit]
        page = [self.members[user] for user in users]
        more = start + limit < len(index)
        return page, (users[-1] if more and users else None)


# --------------------------------------------------------------------------- validation


def _invalid(message: str) -> CoreError:
    return CoreError(ErrorCode.INVALID_VALUE, message)


def check_room_id(room: Any) -> str:
    if not isinstance(room, str) or not ROOM_ID_PATTERN.fullmatch(room):
        raise _invalid("room must be 1..64 of a-z 0-9 _ - starting with a letter or digit")
    return room


def _text(field: str, value: Any, *, limit: int, minimum: int = 1, multiline: bool = False) -> str:
    """The one text rule (:mod:`salon.daemon.wire.text`) as a CoreError: ``invalid_text`` for a
    refused character, ``invalid_value`` for a length out of bounds."""
    try:
        return check_text(field, value, max_width=limit, min_width=minimum, multiline=multiline)
    except TextError as exc:
        if exc.bad_characters:
            raise CoreError(ErrorCode.INVALID_TEXT, str(exc)) from None
        if minimum:
            raise _invalid(f"{field} must be {minimum}..{limit} characters") from None
        raise _invalid(f"{field} must be at most {limit} characters") from None


def clean_title(title: Any) -> str:
    if not isinstance(title, str):
        raise _invalid(f"title must be 1..{MAX_TITLE} characters")
    return _text("title", title, limit=MAX_TITLE)


def clean_topics(topics: Any) -> list[str]:
    """Lower-cased, stripped, de-duplicated in order; at most 10 of 1..40 characters."""
    if not isinstance(topics, list):
        raise _invalid("topics must be a list of strings")
    cleaned: list[str] = []
    for topic in topics:
        if not isinstance(topic, str):
            raise _invalid("topics must be a list of strings")
        try:
            topic = _text("topics", topic, limit=MAX_TOPIC).lower()
        except CoreError as exc:
            if exc.code is ErrorCode.INVALID_TEXT:
                raise
            raise _invalid(f"each of topics must be 1..{MAX_TOPIC} characters") from None
        if topic not in cleaned:
            cleaned.append(topic)
    if len(cleaned) > MAX_TOPICS:
        raise _invalid(f"topics holds at most {MAX_TOPICS} topics")
    return cleaned


def clean_reason(reason: Any) -> str:
    """A moderator's reason (deny, mute, remove, ban): up to 200 characters, may be empty."""
    if not isinstance(reason, str):
        raise _invalid("reason must be a string")
    return _text("reason", reason, limit=MAX_REASON, minimum=0)


def restored_text(value: Any, limit: int, *, multiline: bool = False) -> Any:
    """Stored text made to pass the text rule (data written before the rule existed, when
    lengths were counted in characters, not cells): cleaned and cut to ``limit`` cells. Only
    text with nothing visible left is still refused by the check that follows."""
    if not isinstance(value, str):
        return value
    return fit_text(value, limit, multiline=multiline)


def check_policy(policy: Any) -> messages.Policy:
    if policy not in POLICIES:
        raise _invalid("policy must be open, approval or invite")
    return policy


def check_max_speakers(value: Any, cap: int = MAX_SPEAKERS) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid("max_speakers must be an integer")
    highest = min(cap, MAX_SPEAKERS)
    if not MIN_SPEAKERS <= value <= highest:
        raise _invalid(f"max_speakers must be {MIN_SPEAKERS}..{highest}")
    return value


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid(f"{name} must be true or false")
    return value


def clean_description(description: Any) -> str:
    if not isinstance(description, str):
        raise _invalid("description must be a string")
    return _text("description", description, limit=MAX_DESCRIPTION, minimum=0, multiline=True)


def check_time(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(f"{name} must be a number of seconds")
    return float(value)


def check_positive(name: str, value: Any) -> float | None:
    seconds = check_time(name, value)
    if seconds is not None and seconds <= 0:
        raise _invalid(f"{name} must be positive")
    return seconds


def check_max_uses(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid("max_uses must be a positive integer")
    return value


def check_invite_role(role: Any) -> messages.InviteRole:
    if role not in INVITE_ROLES:
        raise _invalid("role must be listener or speaker")
    return role
