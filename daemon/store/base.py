"""The store's interface: what salond keeps across restarts, and how it is written and read.

A store keeps rooms' lasting records (:class:`~salon.daemon.core.RoomRecord`), server-wide
bans and the audit log. Write methods only queue the change and never block the caller (they
are called on the event loop, next to the media path; the disk I/O happens elsewhere, e.g. on
the SQLite store's writer thread); :meth:`Store.commit` waits until everything queued so far is
durable, which is how salond acknowledges a moderation action only once it is on disk.
:class:`~salon.daemon.store.persistence.Persistence` turns core events into these calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from salon.daemon.admin.protocol import AuditEntry
from salon.daemon.core import Ban, Invite, RoomRecord, RoomSettings

__all__ = ["AuditEntry", "Store", "StoreError", "StoreUnavailable", "StoredState"]


class StoreError(Exception):
    """The store cannot be used (unreadable, damaged or foreign file, failed commit).

    The message names the file and says what the operator can do about it."""


class StoreUnavailable(StoreError):
    """The database cannot be reached for now (a PostgreSQL restart, a cut link).

    A change that could not be confirmed stays queued and is written once the database is
    back; the request that made it is answered with ``store_unavailable``, not acknowledged."""


@dataclass
class StoredState:
    """Everything a store holds, as loaded at start."""

    rooms: list[RoomRecord] = field(default_factory=list)
    "Every stored room with its bans, invites, approvals and subscriptions."

    server_bans: dict[str, Ban] = field(default_factory=dict)
    "Server-wide bans by user id (expired ones included)."


class Store(Protocol):
    """Where salond keeps what must survive a restart or a crash.

    Lifecycle: ``start`` (open, check, migrate; raises :class:`StoreError`), ``load`` once,
    then writes, ``stop`` (commit what is queued, close). Write methods only queue the change
    and return at once; ``commit`` returns when every change queued before the call is
    durable (or raises :class:`StoreError` if it could not be written). The admin API awaits
    ``commit`` (through ``RequestPipeline.commit_barriers``) before answering an action.
    """

    location: str
    "Where the data lives, for messages (a file path for SQLite; a URL without password)."

    available: bool
    "False while the store cannot write (its database is unreachable): see StoreUnavailable."

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def load(self) -> StoredState: ...

    def save_room(self, settings: RoomSettings) -> None:
        """Create or replace a room's settings."""

    def delete_room(self, room: str) -> None:
        """Forget a room with its bans, invites, approvals and subscriptions (not its audit)."""

    def save_ban(self, room: str | None, user: str, ban: Ban) -> None:
        """Set a ban (room None: server-wide), replacing any earlier one."""

    def delete_ban(self, room: str | None, user: str) -> None:
        """Lift a ban (room None: server-wide)."""

    def save_invite(self, invite: Invite) -> None:
        """Create or replace an invite (with its use count and revocation)."""

    def set_approved(self, room: str, user: str, approved: bool) -> None:
        """Remember (or forget) that a host admitted ``user`` to ``room`` after a knock."""

    def set_subscribed(self, room: str, user: str, subscribed: bool) -> None:
        """Remember (or forget) that ``user`` wants the reminders of scheduled ``room``."""

    def add_audit(self, entry: AuditEntry) -> None:
        """Append an entry to the audit log."""

    async def backup(self, destination: Path) -> dict[str, Any]:
        """Write a consistent copy of the stored state to the new file ``destination`` while
        salond runs (``salonctl backup``); StoreError when the store cannot (a server database
        is backed up with its own tools)."""
        ...

    async def commit(self) -> None:
        """Return once every change queued so far is durable."""

    async def audit_log(
        self, limit: int = 100, room: str | None = None, before: int | None = None
    ) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first; only ``room``'s (``""``: server-wide
        ones) when given; only entries older than id ``before`` when given (paging)."""
        ...
