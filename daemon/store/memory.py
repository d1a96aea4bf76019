"""A store that keeps everything in memory: for tests, and for a salond that must not write.

It implements the whole :class:`~salon.daemon.store.base.Store` interface with the same
semantics as :class:`~salon.daemon.store.sqlite.SqliteStore` (nothing survives the process).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec

from salon.daemon.core import Ban, Invite, RoomRecord, RoomSettings

from .base import AuditEntry, StoredState, StoreError


class MemoryStore:
    """Rooms, bans and the audit log in dictionaries; every write is "durable" at once."""

    def __init__(self) -> None:
        self.location = "memory"
        self.available = True
        self.rooms: dict[str, RoomSettings] = {}
        self.bans: dict[tuple[str | None, str], Ban] = {}
        self.invites: dict[tuple[str, str], Invite] = {}
        self.approvals: set[tuple[str, str]] = set()
        self.subscriptions: set[tuple[str, str]] = set()
        self.audit: list[AuditEntry] = []
        self._ids = itertools.count(1)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def load(self) -> StoredState:
        records = {room: RoomRecord(settings) for room, settings in self.rooms.items()}
        state = StoredState(rooms=list(records.values()))
        for (room, user), ban in self.bans.items():
            if room is None:
                state.server_bans[user] = replace(ban)
            elif room in records:
                records[room].bans[user] = replace(ban)
        for (room, _), invite in self.invites.items():
            if room in records:
                records[room].invites.append(replace(invite))
        for room, user in sorted(self.approvals):
            if room in records:
                records[room].approved_users.append(user)
        for room, user in sorted(self.subscriptions):
            if room in records:
                records[room].subscribers.append(user)
        return state

    def save_room(self, settings: RoomSettings) -> None:
        self.rooms[settings.room] = settings

    def delete_room(self, room: str) -> None:
        self.rooms.pop(room, None)
        for key in [k for k in self.bans if k[0] == room]:
            del self.bans[key]
        for key in [k for k in self.invites if k[0] == room]:
            del self.invites[key]
        self.approvals = {k for k in self.approvals if k[0] != room}
        self.subscriptions = {k for k in self.subscriptions if k[0] != room}

    def save_ban(self, room: str | None, user: str, ban: Ban) -> None:
        self.bans[(room, user)] = replace(ban)

    def delete_ban(self, room: str | None, user: str) -> None:
        self.bans.pop((room, user), None)

    def save_invite(self, invite: Invite) -> None:
        self.invites[(invite.room, invite.token)] = replace(invite)

    def set_approved(self, room: str, user: str, approved: bool) -> None:
        if approved:
            self.approvals.add((room, user))
        else:
            self.approvals.discard((room, user))

    def set_subscribed(self, room: str, user: str, subscribed: bool) -> None:
        if subscribed:
            self.subscriptions.add((room, user))
        else:
            self.subscriptions.discard((room, user))

    def add_audit(self, entry: AuditEntry) -> None:
        self.audit.append(
            msgspec.structs.replace(entry, id=next(self._ids), detail=dict(entry.detail))
        )

    async def backup(self, destination: Path) -> dict[str, Any]:
        raise StoreError("this store keeps nothing on disk: there is nothing to back up")

    async def commit(self) -> None:
        pass

    async def audit_log(
        self, limit: int = 100, room: str | None = None, before: int | None = None
    ) -> list[AuditEntry]:
        found = [
            entry
            for entry in reversed(self.audit)
            if (room is None or entry.room == room) and (before is None or entry.id < before)
        ]
        return found[: max(0, limit)]
