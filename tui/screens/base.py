"""What every console screen shares: the connection bar, admin events, palette commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from textual.screen import Screen

from salon.daemon.admin.protocol import Event

from ..widgets.connection import ConnectionBar

if TYPE_CHECKING:
    from ..app import SalonAdminApp

PaletteCommand = tuple[str, str, Callable[[], Any]]
"""(title, help, callback) of one command palette entry."""


class AdminScreen(Screen[None]):
    """A screen fed by the admin connection."""

    HELP_TITLE = ""
    HELP_TEXT = ""

    @property
    def admin(self) -> SalonAdminApp:
        return cast("SalonAdminApp", self.app)

    def on_screen_resume(self) -> None:
        self.admin.show_connection(self.query_one(ConnectionBar))
        if self.admin.client is not None:
            self.reload()

    def reload(self) -> None:
        """Fetch everything shown from the daemon (after connecting, or on request)."""

    def admin_event(self, event: Event) -> None:
        """An event pushed by the daemon."""

    def palette_commands(self) -> list[PaletteCommand]:
        """This screen's actions for the command palette."""
        return []

    def action_refresh(self) -> None:
        self.reload()
