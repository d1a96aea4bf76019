"""What the core's request handlers return: one typed result per kind of answer.

Each is the ``result`` of the ``ok`` reply (PROTOCOL.md), encoded with
:func:`~salon.daemon.wire.messages.to_builtins`: the field names and their order are the wire's.
:meth:`~.service.SalonCore.handle_request` and ``admin_request`` hand callers that plain form.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from salon.daemon.wire import messages


class Done(msgspec.Struct):
    """A request that answers nothing more than success (``{}``)."""


class RoomResult(msgspec.Struct):
    """``create_room``, ``start_room``, ``get_room``: the room as listed."""

    room: messages.RoomSummary


class RoomsResult(msgspec.Struct):
    """``list_rooms``: live rooms, then scheduled ones."""

    rooms: list[messages.RoomSummary]


class Joined(msgspec.Struct, kw_only=True):
    """``join`` admitted the session, with ``role``."""

    status: Literal["joined"] = "joined"
    role: messages.Role
    room: messages.RoomSummary


class Knocking(msgspec.Struct, kw_only=True):
    """``join`` became a knock on an approval room; the hosts decide before ``expires_at``."""

    status: Literal["knocking"] = "knocking"
    request_id: str
    expires_at: float


class UserResult(msgspec.Struct):
    """``approve_knock``: the user admitted."""

    user: str


class InviteResult(msgspec.Struct):
    """``create_invite``: the new invite."""

    invite: messages.InviteInfo


class InvitesResult(msgspec.Struct):
    """``list_invites``: the usable invites."""

    invites: list[messages.InviteInfo]


class ParticipantsResult(msgspec.Struct, kw_only=True):
    """``list_participants``: one page of members, their media keys, and where to go on."""

    participants: list[messages.Participant]
    media_keys: list[messages.MediaKey]
    next: str | None
    total: int


class RecordingResult(msgspec.Struct):
    """``start_recording``, ``stop_recording``: the recording's id."""

    recording: str


class ConsentResult(msgspec.Struct):
    """``recording_consent``: the consent now on record for the current recording."""

    consent: bool
    recording: str


class ServerBanResult(msgspec.Struct):
    """``ban_user_globally``: whom, and until when (None: for good)."""

    user: str
    until: float | None


Result = (
    Done
    | RoomResult
    | RoomsResult
    | Joined
    | Knocking
    | UserResult
    | InviteResult
    | InvitesResult
    | ParticipantsResult
    | RecordingResult
    | ConsentResult
    | ServerBanResult
)
"""Every result a core request handler returns."""
