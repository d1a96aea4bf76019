"""The audit log panel: who did what to which room, newest first."""

from __future__ import annotations

import time

from textual.widgets import DataTable

from salon.daemon.admin.protocol import AuditEntry

from ..text import plain

KEPT = 200
"""Entries shown; older ones stay in the daemon's log (``salonctl audit``)."""


def describe(entry: AuditEntry) -> str:
    return " ".join(f"{k}={v}" for k, v in entry.detail.items() if v not in (None, "", {}))


class AuditLog(DataTable[object]):
    """Audit entries, newest on top."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.entries: list[AuditEntry] = []

    def on_mount(self) -> None:
        self.add_columns("time", "room", "actor", "action", "target", "detail")

    def show(self, entries: list[AuditEntry]) -> None:
        """Replace the entries (given newest first)."""
        self.entries = list(entries[:KEPT])
        self._render_rows()

    def add(self, entry: AuditEntry) -> None:
        """A new entry on top."""
        self.entries.insert(0, entry)
        del self.entries[KEPT:]
        self._render_rows()

    def _render_rows(self) -> None:
        self.clear()
        for entry in self.entries:
            self.add_row(
                time.strftime("%H:%M:%S", time.localtime(entry.at)),
                plain(entry.room),
                plain(entry.actor),
                plain(entry.action),
                plain(entry.target or "-"),
                plain(describe(entry)),
            )
