"""The main screen: every room with live counts, the server's stats and the audit log."""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Label

from salon.daemon.admin.client import AdminConnectionError, AdminError
from salon.daemon.admin.protocol import AuditEntry, Event, StatusInfo, convert

from ..messages import AuditLoaded, RoomsLoaded, StatusLoaded
from ..text import plain
from ..widgets.audit import AuditLog
from ..widgets.connection import ConnectionBar
from ..widgets.stats import StatsPanel
from .base import AdminScreen, PaletteCommand
from .dialogs import ConfirmScreen, CreateRoomScreen

POLICIES = ("open", "approval", "invite")
ROOM_EVENTS = frozenset(
    {
        "room_created",
        "room_closed",
        "room_updated",
        "recording",
        "member_joined",
        "member_left",
        "role_changed",
        "moderation",
    }
)
"""Admin events that change what the rooms list shows: each reloads it (bursts coalesced)."""


class RoomsScreen(AdminScreen):
    """Rooms, stats and audit log."""

    HELP_TITLE = "rooms"
    HELP_TEXT = (
        "Counts update live. Enter opens a room: its stage, audience, hands and knocks. Rooms the "
        "console creates are owned by the operator; keep them persistent, or they close once the "
        "owner's grace period passes with nobody owning them."
    )
    BINDINGS = [
        Binding("enter", "open_room", "Open"),
        Binding("n", "new_room", "New room"),
        Binding("c", "close_room", "Close room"),
        Binding("t", "edit_title", "Title"),
        Binding("o", "edit_topics", "Topics", show=False),
        Binding("y", "cycle_policy", "Policy", show=False),
        Binding("r", "refresh", "Refresh", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="rooms-screen")
        self._reload_pending = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBar(id="connection")
        with Horizontal(id="rooms-top"):
            with Vertical(id="rooms-pane", classes="pane"):
                yield Label("Rooms", classes="pane-title")
                yield DataTable(id="rooms", cursor_type="row", zebra_stripes=True)
            with Vertical(id="stats-pane", classes="pane"):
                yield Label("Server", classes="pane-title")
                yield StatsPanel(id="stats")
        with Vertical(id="audit-pane", classes="pane"):
            yield Label("Audit log", classes="pane-title")
            yield AuditLog(id="audit")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#rooms", DataTable)
        for label, key in (
            ("room", "room"),
            ("title", "title"),
            ("policy", "policy"),
            ("state", "state"),
            ("stage", "stage"),
            ("audience", "audience"),
            ("topics", "topics"),
            ("owner", "owner"),
        ):
            table.add_column(label, key=key)
        self.query_one(StatsPanel).show(None)

    # ------------------------------------------------------------------ data

    def reload(self) -> None:
        self.load_rooms()
        self.load_status_and_audit()

    @work(exclusive=True, group="rooms-load")
    async def load_rooms(self) -> None:
        client = self.admin.client
        if client is None:
            return
        try:
            rooms = await client.rooms()
        except (AdminError, AdminConnectionError):
            return
        self.post_message(RoomsLoaded(rooms, {}))

    @work(exclusive=True, group="rooms-status")
    async def load_status_and_audit(self) -> None:
        client = self.admin.client
        if client is None:
            return
        try:
            status = await client.status()
            entries = await client.audit(limit=100)
        except (AdminError, AdminConnectionError):
            return
        self.post_message(StatusLoaded(status))
        self.post_message(AuditLoaded(entries))

    @on(RoomsLoaded)
    def show_rooms(self, message: RoomsLoaded) -> None:
        table = self.query_one("#rooms", DataTable)
        selected = self.selected_room()
        table.clear()
        for room in message.rooms:
            table.add_row(
                plain(room.room),
                plain(room.title),
                room.policy,
                f"{room.state} ● rec" if room.recording else room.state,
                str(room.speakers),
                str(room.listeners),
                plain(", ".join(room.topics)),
                plain(room.owner),
                key=room.room,
            )
        if selected is not None:
            try:
                table.move_cursor(row=table.get_row_index(selected))
            except Exception:
                pass

    def _show_stats(self, status: StatusInfo | None) -> None:
        # Status can arrive while the screen is being mounted or torn down (a reconnect races
        # with screen changes): then there is no panel to update, and the next status will do.
        try:
            panel = self.query_one(StatsPanel)
        except NoMatches:
            return
        panel.show(status)

    @on(StatusLoaded)
    def show_status(self, message: StatusLoaded) -> None:
        self._show_stats(message.status)

    @on(AuditLoaded)
    def show_audit(self, message: AuditLoaded) -> None:
        try:
            self.query_one(AuditLog).show(message.entries)
        except NoMatches:  # not mounted yet or being torn down, as for the stats
            pass

    def admin_event(self, event: Event) -> None:
        if event.kind == "stats":
            self._show_stats(convert(event.data, StatusInfo))
        elif event.kind == "moderation":
            try:
                self.query_one(AuditLog).add(convert(event.data, AuditEntry))
            except NoMatches:  # not mounted yet or being torn down, as for the stats
                pass
        if event.kind in ROOM_EVENTS:
            self.schedule_rooms_reload()

    def schedule_rooms_reload(self) -> None:
        """Coalesce bursts of events (a hundred joins) into one reload."""
        if not self._reload_pending:
            self._reload_pending = True
            self.set_timer(0.15, self._reload_now)

    def _reload_now(self) -> None:
        self._reload_pending = False
        self.load_rooms()

    # ------------------------------------------------------------------ selection

    def selected_room(self) -> str | None:
        table = self.query_one("#rooms", DataTable)
        if table.row_count == 0:
            return None
        row = max(0, min(table.cursor_row, table.row_count - 1))
        key = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        return str(key) if key is not None else None

    def _room_or_warn(self) -> str | None:
        room = self.selected_room()
        if room is None:
            self.notify("no room selected", severity="warning")
        return room

    # ------------------------------------------------------------------ actions

    @on(DataTable.RowSelected, "#rooms")
    def row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_room()

    def action_open_room(self) -> None:
        room = self._room_or_warn()
        if room is not None:
            self.admin.open_room(room)

    def action_new_room(self) -> None:
        def create(fields: dict[str, Any] | None) -> None:
            if fields:
                room, title = fields.pop("room"), fields.pop("title")
                self.admin.perform(
                    f"created room {room or title!r}",
                    lambda c: c.create_room(room, title, **fields),
                )

        self.app.push_screen(CreateRoomScreen(classes="dialog"), create)

    def action_close_room(self) -> None:
        room = self._room_or_warn()
        if room is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.admin.perform(f"closed {room}", lambda c: c.close_room(room))

        self.app.push_screen(
            ConfirmScreen(f"Close room {room} for everyone in it?", "Close room"), confirmed
        )

    def action_edit_title(self) -> None:
        room = self._room_or_warn()
        if room is not None:
            self.admin.edit_title(room)

    def action_edit_topics(self) -> None:
        room = self._room_or_warn()
        if room is not None:
            self.admin.edit_topics(room)

    def action_cycle_policy(self) -> None:
        room = self._room_or_warn()
        if room is not None:
            table = self.query_one("#rooms", DataTable)
            current = str(table.get_cell(room, "policy"))
            self.admin.set_policy(room, POLICIES[(POLICIES.index(current) + 1) % len(POLICIES)])

    def palette_commands(self) -> list[PaletteCommand]:
        return [
            (
                "Open room",
                "Show the selected room's stage, audience and knocks",
                self.action_open_room,
            ),
            ("New room", "Create a room owned by the operator", self.action_new_room),
            (
                "Close room",
                "Close the selected room for everyone (asks first)",
                self.action_close_room,
            ),
            ("Set title", "Change the selected room's title", self.action_edit_title),
            ("Set topics", "Change the selected room's topics", self.action_edit_topics),
            (
                "Cycle policy",
                "open -> approval -> invite for the selected room",
                self.action_cycle_policy,
            ),
            ("Refresh", "Reload rooms, stats and audit log", self.action_refresh),
        ]
