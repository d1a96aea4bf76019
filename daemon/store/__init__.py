"""Persistence: what salond keeps across restarts and crashes (SQLite by default).

- :mod:`.base`: the :class:`Store` interface, :class:`AuditEntry`, :class:`StoreError`.
- :mod:`.sqlite`: :class:`SqliteStore`, the embedded default (``state_dir/salon.db``).
- :mod:`.postgres`: :class:`PostgresStore`, for a shared PostgreSQL database (``[store] url``).
- :mod:`.rows`: the tables and their rows, shared by both SQL stores.
- :mod:`.memory`: :class:`MemoryStore`, everything in memory (tests).
- :mod:`.persistence`: :class:`Persistence`, which keeps a store in step with the core's
  events and restores the core from it at start.
"""

from __future__ import annotations

from pathlib import Path

from .base import AuditEntry, Store, StoredState, StoreError, StoreUnavailable
from .memory import MemoryStore
from .persistence import Persistence, RestoreSummary
from .postgres import PostgresStore, redact_url
from .sqlite import DATABASE_NAME, SCHEMA_VERSION, SqliteStore

__all__ = [
    "DATABASE_NAME",
    "SCHEMA_VERSION",
    "AuditEntry",
    "MemoryStore",
    "Persistence",
    "PostgresStore",
    "RestoreSummary",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredState",
    "open_store",
    "redact_url",
]


def _implementations() -> tuple[type[Store], ...]:
    """Both stores implement :class:`Store` (mypy checks this assignment)."""
    return (SqliteStore, PostgresStore, MemoryStore)


def open_store(url: str | None, state_dir: Path) -> SqliteStore | PostgresStore:
    """The store ``[store] url`` names: PostgreSQL for a ``postgresql://`` URL, else the
    SQLite file ``state_dir/salon.db`` (the default, with no url)."""
    if url:
        return PostgresStore(url)
    return SqliteStore(state_dir / DATABASE_NAME)
