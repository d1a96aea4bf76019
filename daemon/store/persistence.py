"""Keeps a store in step with the core, and brings the core's rooms back at start.

:meth:`Persistence.observe` is registered as a ``SalonServer`` observer: it turns the core's
state-change events into store writes (queued, never blocking). The composition root also
registers the store's ``commit`` as a commit barrier, so a request is acknowledged only after
what it changed is durable. :meth:`Persistence.restore` runs once, before the server accepts
connections.

What is restored: persistent rooms and scheduled rooms, with their settings, owner, moderators,
bans, invites (use counts included), approved users and reminder subscriptions; and server-wide
bans. Live rooms that are not persistent are not restored (their members are gone) and are
deleted from the store, as are expired bans. Members, knocks, hands and media never are: they
are live state, and clients reconnect and rejoin.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from salon.daemon.core import CoreError, SalonCore, events
from salon.daemon.core.records import RoomRecord

from .base import AuditEntry, Store, StoreError

log = logging.getLogger("salon.store")

TOKEN_SHOWN = 6
"""Characters of an invite token kept in the audit log (a whole token would let its reader in)."""


@dataclass
class RestoreSummary:
    """What :meth:`Persistence.restore` brought back and dropped."""

    rooms: list[str] = field(default_factory=list)
    "Ids of the rooms restored (persistent and scheduled ones)."

    dropped_rooms: list[str] = field(default_factory=list)
    "Ids of stored rooms not restored (live and not persistent) and deleted from the store."

    server_bans: int = 0
    "Server-wide bans in force restored."

    expired_bans: int = 0
    "Bans found expired and deleted from the store."


def redact_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail of an audit entry with secrets shortened (invite tokens)."""
    token = detail.get("token")
    if isinstance(token, str) and len(token) > TOKEN_SHOWN:
        return {**detail, "token": token[:TOKEN_SHOWN] + "…"}
    return dict(detail)


class Persistence:
    """Translates core events into store writes; restores the core from the store."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self.frozen = False
        self.recorded = 0
        """Core events turned into store writes so far."""
        """Set by :meth:`freeze`: events are no longer recorded."""
        self.may_write: Callable[[str], bool] | None = None
        """In a cluster: whether this node may write a room's state (it has not lost the room
        to another node); the events of a room it may not write are not recorded."""
        self.fenced = 0
        """Events not recorded because this node may not write their room."""
        self._handlers: dict[type, Callable[[Any], None]] = {
            events.RoomCreated: self._room_created,
            events.RoomSettingsChanged: self._settings_changed,
            events.RoomClosed: self._room_closed,
            events.BanChanged: self._ban_changed,
            events.InviteChanged: self._invite_changed,
            events.ApprovalChanged: self._approval_changed,
            events.SubscriptionChanged: self._subscription_changed,
            events.ModerationTaken: self._moderation_taken,
        }

    # ------------------------------------------------------------------ core -> store

    def observe(self, event: events.CoreEvent) -> None:
        """A ``SalonServer`` observer: queue the writes ``event`` calls for (cheap, no I/O)."""
        handler = self._handlers.get(type(event))
        if handler is not None and not self.frozen:
            may_write = self.may_write
            if may_write is not None:
                room = getattr(event, "room", None)
                if isinstance(room, str) and room and not may_write(room):
                    self.fenced += 1
                    return
            self.recorded += 1
            handler(event)

    def freeze(self) -> None:
        """Stop recording: salond is shutting down.

        Closing every connection makes every member leave, and an owner who leaves hands the
        room to a moderator present: recorded, that would give rooms new owners at each restart.
        What was queued before stays queued (and is committed when the store stops).
        """
        self.frozen = True

    def _room_created(self, event: events.RoomCreated) -> None:
        # A closed room's id may be reused: whatever the store still has of it goes first.
        self.store.delete_room(event.room)
        self.store.add_audit(
            AuditEntry(at=self._clock(), room=event.room, actor=event.owner, action="create_room")
        )

    def _settings_changed(self, event: events.RoomSettingsChanged) -> None:
        self.store.save_room(event.settings)

    def _room_closed(self, event: events.RoomClosed) -> None:
        self.store.delete_room(event.room)

    def _ban_changed(self, event: events.BanChanged) -> None:
        if event.ban is None:
            self.store.delete_ban(event.room, event.user)
        else:
            self.store.save_ban(event.room, event.user, event.ban)

    def _invite_changed(self, event: events.InviteChanged) -> None:
        self.store.save_invite(event.invite)

    def _approval_changed(self, event: events.ApprovalChanged) -> None:
        self.store.set_approved(event.room, event.user, event.approved)

    def _subscription_changed(self, event: events.SubscriptionChanged) -> None:
        self.store.set_subscribed(event.room, event.user, event.subscribed)

    def _moderation_taken(self, event: events.ModerationTaken) -> None:
        self.store.add_audit(
            AuditEntry(
                at=self._clock(),
                room=event.room,
                actor=event.actor,
                action=event.action,
                target=event.target,
                detail=redact_detail(event.detail),
            )
        )

    # ------------------------------------------------------------------ store -> core

    async def load_room(self, room: str) -> RoomRecord | None:
        """One stored room, as the node taking it over as its home finds it (None: unknown)."""
        state = await self.store.load()
        return next((r for r in state.rooms if r.settings.room == room), None)

    async def restore(self, core: SalonCore, now: float, *, shared: bool = False) -> RestoreSummary:
        """Load the store into ``core`` (before any session connects) and tidy the store.

        ``shared``: other cluster nodes use the store too, so a live room that is not
        persistent may be running on one of them: it is neither restored nor deleted here
        (the node that becomes its home loads it, :meth:`load_room`).

        Raises :class:`StoreError` naming the store and the room when a stored room is invalid.
        """
        state = await self.store.load()
        summary = RestoreSummary()
        for record in state.rooms:
            settings = record.settings
            if shared and not settings.persistent and settings.state == "live":
                continue
            if not (settings.persistent or settings.state == "scheduled"):
                summary.dropped_rooms.append(settings.room)
                self.store.delete_room(settings.room)
                continue
            try:
                core.restore_room(record, now)
            except CoreError as exc:
                raise StoreError(
                    f"{self.store.location}: stored room {settings.room!r} cannot be restored: "
                    f"{exc.message}"
                ) from exc
            summary.rooms.append(settings.room)
            for user, ban in record.bans.items():
                if not ban.active(now):
                    summary.expired_bans += 1
                    self.store.delete_ban(settings.room, user)
        for user, ban in state.server_bans.items():
            if ban.active(now):
                core.restore_server_ban(user, ban, now)
                summary.server_bans += 1
            else:
                summary.expired_bans += 1
                self.store.delete_ban(None, user)
        await self.store.commit()
        return summary
