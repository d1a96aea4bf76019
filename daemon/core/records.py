"""What of a room outlives the process: the records a store keeps and the core restores.

Live state (members, knocks, hands, media flows, speaking) is deliberately absent: after a
restart clients reconnect and rejoin. The core builds these records (``SalonCore.room_record``,
the ``RoomSettingsChanged`` event) and takes them back (``SalonCore.restore_room``); it never
reads or writes storage itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from salon.daemon.wire import messages

from .room import Ban, Invite, Room


@dataclass(frozen=True)
class RoomSettings:
    """A room's lasting attributes: everything of it a store keeps besides its sets."""

    room: str
    "The room id."

    title: str
    "The title."

    owner: str
    "The owner's user id."

    created_at: float
    "When the room was created (Unix time)."

    topics: tuple[str, ...] = ()
    "Topics, cleaned as the core keeps them."

    policy: messages.Policy = "open"
    "The join policy."

    max_speakers: int = 10
    "The size of the stage."

    mute_on_join: bool = False
    "Whether speakers coming on stage start muted by moderator."

    persistent: bool = False
    "Whether the room stays live without its owner and is restored after a restart."

    scheduled_for: float | None = None
    "The announced start time, if the room was scheduled."

    description: str = ""
    "The longer free text."

    state: messages.RoomStateName = "live"
    "scheduled or live (closed rooms are not kept)."

    moderators: tuple[str, ...] = ()
    "Moderators' user ids, earliest promoted first."


@dataclass
class RoomRecord:
    """A room as a store keeps it: its settings and the sets attached to it."""

    settings: RoomSettings
    "The room's attributes."

    bans: dict[str, Ban] = field(default_factory=dict)
    "Bans by user id (expired ones may be present; the core drops them on restore)."

    invites: list[Invite] = field(default_factory=list)
    "Invite links, with their use counts; revoked ones included."

    approved_users: list[str] = field(default_factory=list)
    "Users a host admitted after a knock; they re-enter without knocking."

    subscribers: list[str] = field(default_factory=list)
    "Users who asked for the reminders of a scheduled room."


def room_settings(room: Room) -> RoomSettings:
    """A frozen copy of ``room``'s lasting attributes."""
    return RoomSettings(
        room=room.id,
        title=room.title,
        owner=room.owner,
        created_at=room.created_at,
        topics=tuple(room.topics),
        policy=room.policy,
        max_speakers=room.max_speakers,
        mute_on_join=room.mute_on_join,
        persistent=room.persistent,
        scheduled_for=room.scheduled_for,
        description=room.description,
        state=room.state,
        moderators=tuple(room.moderators),
    )


def room_record(room: Room) -> RoomRecord:
    """A copy of everything of ``room`` a store keeps (safe to hold while the room changes)."""
    return RoomRecord(
        settings=room_settings(room),
        bans={user: replace(ban) for user, ban in room.bans.items()},
        invites=[replace(invite) for invite in room.invites.values()],
        approved_users=sorted(room.approved_users),
        subscribers=sorted(room.subscribers),
    )
