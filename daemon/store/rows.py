"""The stored form of rooms, bans, invites, recordings and audit entries, shared by every SQL store.

Both SQL stores (SQLite and PostgreSQL) keep the same tables with the same columns and the same
values (JSON text for lists and objects, 0/1 for flags, Unix times as floats), so a row read from
one can be written to the other as it is (``salonctl store copy``) and both give the same
checksum (:func:`table_checksum`). This module turns objects into rows and rows into objects.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from salon.daemon.core import Ban, Invite, RoomRecord, RoomSettings

from .base import AuditEntry, StoredState

if TYPE_CHECKING:
    from salon.daemon.recording.index import RecordingInfo

SERVER_WIDE = ""
"""The ``room`` column of server-wide bans (and of server-wide audit entries)."""

Row = Sequence[Any]


@dataclass(frozen=True)
class Table:
    """One stored table: its name, its columns in order, and the columns that identify a row."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]


TABLES: tuple[Table, ...] = (
    Table(
        "rooms",
        (
            "id",
            "title",
            "owner",
            "created_at",
            "topics",
            "policy",
            "max_speakers",
            "mute_on_join",
            "persistent",
            "scheduled_for",
            "description",
            "state",
            "moderators",
            "saved_at",
        ),
        ("id",),
    ),
    Table("bans", ("room", "user", "reason", "until", "banned_by"), ("room", "user")),
    Table(
        "invites",
        (
            "room",
            "token",
            "role",
            "created_by",
            "created_at",
            "expires_at",
            "max_uses",
            "uses",
            "revoked",
        ),
        ("room", "token"),
    ),
    Table("approvals", ("room", "user"), ("room", "user")),
    Table("subscriptions", ("room", "user"), ("room", "user")),
    Table("audit_log", ("id", "at", "room", "actor", "action", "target", "detail"), ("id",)),
    Table(
        "recordings",
        (
            "id",
            "room",
            "path",
            "started_at",
            "started_by",
            "ended_at",
            "duration",
            "speakers",
            "status",
            "bytes",
        ),
        ("id",),
    ),
)
"""Every table a salond database holds, in the order a copy writes them."""


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def from_json(text: Any, fallback: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return fallback


# --------------------------------------------------------------------------- objects -> rows


def room_row(settings: RoomSettings) -> tuple[Any, ...]:
    return (
        settings.room,
        settings.title,
        settings.owner,
        settings.created_at,
        to_json(list(settings.topics)),
        settings.policy,
        settings.max_speakers,
        int(settings.mute_on_join),
        int(settings.persistent),
        settings.scheduled_for,
        settings.description,
        settings.state,
        to_json(list(settings.moderators)),
        time.time(),
    )


def ban_row(room: str | None, user: str, ban: Ban) -> tuple[Any, ...]:
    return (SERVER_WIDE if room is None else room, user, ban.reason, ban.until, ban.by)


def invite_row(invite: Invite) -> tuple[Any, ...]:
    return (
        invite.room,
        invite.token,
        invite.role,
        invite.created_by,
        invite.created_at,
        invite.expires_at,
        invite.max_uses,
        invite.uses,
        int(invite.revoked),
    )


def audit_row(entry: AuditEntry) -> tuple[Any, ...]:
    """The row of a new entry, without its id (the database numbers it)."""
    return (entry.at, entry.room, entry.actor, entry.action, entry.target, to_json(entry.detail))


def recording_row(info: RecordingInfo) -> tuple[Any, ...]:
    return (
        info.id,
        info.room,
        info.path,
        info.started_at,
        info.by,
        info.ended_at,
        info.duration,
        to_json(list(info.speakers)),
        info.status,
        info.bytes,
    )


# --------------------------------------------------------------------------- rows -> objects

ROOM_COLUMNS = (
    "id, title, owner, created_at, topics, policy, max_speakers, mute_on_join, persistent,"
    " scheduled_for, description, state, moderators"
)
INVITE_COLUMNS = "room, token, role, created_by, created_at, expires_at, max_uses, uses, revoked"
AUDIT_COLUMNS = "id, at, room, actor, action, target, detail"
RECORDING_COLUMNS = (
    "id, room, path, started_at, started_by, ended_at, duration, speakers, status, bytes"
)


def build_state(
    rooms: Iterable[Row],
    bans: Iterable[Row],
    invites: Iterable[Row],
    approvals: Iterable[Row],
    subscriptions: Iterable[Row],
) -> StoredState:
    """Everything stored, from the rows of each table (rooms in ``ROOM_COLUMNS`` order by
    creation, bans as room, user, reason, until, banned_by, invites in ``INVITE_COLUMNS``
    order by creation, approvals and subscriptions as room, user ordered by user)."""
    records: dict[str, RoomRecord] = {}
    for row in rooms:
        settings = RoomSettings(
            room=row[0],
            title=row[1],
            owner=row[2],
            created_at=row[3],
            topics=tuple(from_json(row[4], [])),
            policy=row[5],
            max_speakers=row[6],
            mute_on_join=bool(row[7]),
            persistent=bool(row[8]),
            scheduled_for=row[9],
            description=row[10],
            state=row[11],
            moderators=tuple(from_json(row[12], [])),
        )
        records[settings.room] = RoomRecord(settings)
    state = StoredState(rooms=list(records.values()))
    for room, user, reason, until, by in bans:
        ban = Ban(reason=reason, until=until, by=by)
        if room == SERVER_WIDE:
            state.server_bans[user] = ban
        elif room in records:
            records[room].bans[user] = ban
    for row in invites:
        if row[0] in records:
            records[row[0]].invites.append(
                Invite(
                    token=row[1],
                    room=row[0],
                    role=row[2],
                    created_by=row[3],
                    created_at=row[4],
                    expires_at=row[5],
                    max_uses=row[6],
                    uses=row[7],
                    revoked=bool(row[8]),
                )
            )
    for room, user in approvals:
        if room in records:
            records[room].approved_users.append(user)
    for room, user in subscriptions:
        if room in records:
            records[room].subscribers.append(user)
    return state


def audit_entries(rows: Iterable[Row]) -> list[AuditEntry]:
    """Audit entries from rows in ``AUDIT_COLUMNS`` order."""
    return [
        AuditEntry(
            id=row[0],
            at=row[1],
            room=row[2],
            actor=row[3],
            action=row[4],
            target=row[5],
            detail=from_json(row[6], {}),
        )
        for row in rows
    ]


def recording_infos(rows: Iterable[Row]) -> list[RecordingInfo]:
    """Recordings' index entries from rows in ``RECORDING_COLUMNS`` order."""
    from salon.daemon.recording.index import RecordingInfo

    return [
        RecordingInfo(
            id=row[0],
            room=row[1],
            path=row[2],
            started_at=row[3],
            by=row[4],
            ended_at=row[5],
            duration=row[6],
            speakers=list(from_json(row[7], [])),
            status=row[8],
            bytes=row[9],
        )
        for row in rows
    ]


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """A ``WHERE`` clause joining the conditions whose value is not None, and its parameters."""
    used = [(clause, value) for clause, value in conditions if value is not None]
    clause = " WHERE " + " AND ".join(text for text, _ in used) if used else ""
    return clause, [value for _, value in used]


# --------------------------------------------------------------------------- verification


def table_checksum(rows: Iterable[Row]) -> str:
    """A SHA-256 over a table's rows, in key order, that is the same whichever SQL store they
    were read from (integers, floats, text and NULL are written out one way)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(to_json([_canonical(value) for value in row]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(value)
    return value
