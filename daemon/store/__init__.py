"""Persistence: what salond keeps across restarts and crashes (SQLite by default).

- :mod:`.base`: the :class:`Store` interface, :class:`AuditEntry`, :class:`StoreError`.
- :mod:`.sqlite`: :class:`SqliteStore`, the embedded default (``state_dir/salon.db``).
- :mod:`.memory`: :class:`MemoryStore`, everything in memory (tests).
- :mod:`.persistence`: :class:`Persistence`, which keeps a store in step with the core's
  events and restores the core from it at start.
"""

from __future__ import annotations

from .base import AuditEntry, Store, StoredState, StoreError
from .memory import MemoryStore
from .persistence import Persistence, RestoreSummary
from .sqlite import DATABASE_NAME, SCHEMA_VERSION, SqliteStore

__all__ = [
    "DATABASE_NAME",
    "SCHEMA_VERSION",
    "AuditEntry",
    "MemoryStore",
    "Persistence",
    "RestoreSummary",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoredState",
]


def _implementations() -> tuple[type[Store], ...]:
    """Both stores implement :class:`Store` (mypy checks this assignment)."""
    return (SqliteStore, MemoryStore)
