"""The help screen: every key of the screen it was opened from, and the app's own."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Label, Static

KEY_NAMES = {"question_mark": "?", "escape": "esc", "P": "shift+p", "R": "shift+r"}


def binding_rows(bindings: list[BindingType]) -> list[tuple[str, str]]:
    rows = []
    for binding in bindings:
        if isinstance(binding, Binding) and binding.description:
            keys = ", ".join(KEY_NAMES.get(k.strip(), k.strip()) for k in binding.key.split(","))
            rows.append((keys, binding.description))
    return rows


class HelpScreen(ModalScreen[None]):
    """Key bindings; any of Escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, screen: Screen[object], app_bindings: list[BindingType]) -> None:
        super().__init__(classes="dialog")
        self.source = screen
        self.app_bindings = app_bindings

    def compose(self) -> ComposeResult:
        table = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
        table.add_column("key")
        table.add_column("action")
        title = getattr(self.source, "HELP_TITLE", type(self.source).__name__)
        for keys, description in binding_rows(list(self.source.BINDINGS)):
            table.add_row(keys, description)
        table.add_row("", "")
        for keys, description in binding_rows(self.app_bindings):
            table.add_row(keys, description)
        table.add_row("ctrl+p", "command palette: every action by name")
        with VerticalScroll(classes="dialog-body help-body"):
            yield Label(f"Keys — {title}", id="question")
            yield Static(table, id="help-table")
            yield Static(
                getattr(self.source, "HELP_TEXT", ""),
                classes="hint",
            )
            yield Label("Escape closes this help", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
