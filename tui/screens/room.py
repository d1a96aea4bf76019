"""One room: stage with live speaking meters, audience, hand queue and knocks."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.coordinate import Coordinate
from textual.css.query import NoMatches
from textual.events import DescendantFocus
from textual.widgets import DataTable, Footer, Header, Label, Static

from salon.daemon.admin.client import AdminClient, AdminConnectionError, AdminError
from salon.daemon.admin.protocol import Event, MeterLevel, RoomDetail, convert
from salon.daemon.wire.confusables import name_warning
from salon.daemon.wire.messages import JoinRequestInfo, Participant
from salon.daemon.wire.text import printable

from ..messages import RoomGone, RoomLoaded
from ..text import plain
from ..widgets.connection import ConnectionBar
from ..widgets.meter import meter
from ..widgets.profile import KnockProfile
from .base import AdminScreen, PaletteCommand
from .dialogs import ConfirmScreen, ReasonConfirmScreen

POLICIES = ("open", "approval", "invite")
IN_PLACE_EVENTS = frozenset({"hand_queue", "participant", "knock", "knock_resolved"})
"""Admin events whose data is the change itself: applied to the shown room without asking the
daemon again. Other events of this room (joins, roles, settings) reload its detail once."""
MEMBER_TABLES = ("stage", "audience", "hands")
ROLE_MARK = {"owner": "owner", "moderator": "mod", "speaker": "speaker", "listener": ""}


class RoomScreen(AdminScreen):
    """The operator's view of one room; actions apply to the highlighted person."""

    HELP_TITLE = "room"
    HELP_TEXT = (
        "Actions on people apply to the highlighted row of the stage, audience or hand queue (Tab "
        "moves between them); knock actions to the highlighted knock, whose requester's profile "
        "(verified identity, trust signals) shows below the knocks. Closing the room, removing "
        "and banning ask first."
    )
    BINDINGS = [
        Binding("escape", "back", "Rooms"),
        Binding("a", "approve", "Approve"),
        Binding("d", "deny", "Deny"),
        Binding("i", "invite_to_speak", "Invite up"),
        Binding("v", "to_audience", "To audience"),
        Binding("m", "toggle_mute", "Mute/unmute"),
        Binding("h", "lower_hand", "Lower hand", show=False),
        Binding("k", "remove", "Remove"),
        Binding("b", "ban", "Ban"),
        Binding("u", "unban", "Unban", show=False),
        Binding("p", "promote", "Promote", show=False),
        Binding("P", "demote", "Demote", show=False),
        Binding("l", "invite_link", "Invite link", show=False),
        Binding("t", "edit_title", "Title", show=False),
        Binding("o", "edit_topics", "Topics", show=False),
        Binding("y", "cycle_policy", "Policy", show=False),
        Binding("R", "toggle_recording", "Record/stop", show=False),
        Binding("c", "close_room", "Close room", show=False),
        Binding("r", "refresh", "Refresh", show=False),
    ]

    def __init__(self, room: str) -> None:
        super().__init__(id="room-screen")
        self.room = room
        self.detail: RoomDetail | None = None
        self.member_table = "stage"
        self._reload_pending = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBar(id="connection")
        yield Static(self.room, id="room-summary")
        with Horizontal(id="room-body"):
            with Vertical(id="people", classes="pane"):
                yield Label("Stage", classes="pane-title", id="stage-title")
                yield DataTable(id="stage", cursor_type="row")
                yield Label("Audience", classes="pane-title", id="audience-title")
                yield DataTable(id="audience", cursor_type="row", zebra_stripes=True)
            with Vertical(id="requests", classes="pane"):
                yield Label("Hand queue", classes="pane-title", id="hands-title")
                yield DataTable(id="hands", cursor_type="row")
                yield Label("Knocks", classes="pane-title", id="knocks-title")
                yield DataTable(id="knocks", cursor_type="row")
                yield Label("Requester", classes="pane-title")
                yield KnockProfile(id="profile")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.room
        columns = {
            "stage": [
                ("role", "role"),
                ("name", "name"),
                ("level", "level"),
                ("mic", "mic"),
                ("user", "user"),
            ],
            "audience": [("name", "name"), ("user", "user"), ("hand", "hand")],
            "hands": [("#", "pos"), ("name", "name"), ("user", "user")],
            "knocks": [
                ("name", "name"),
                ("user", "user"),
                ("verified", "verified"),
                ("waiting", "waiting"),
            ],
        }
        for table_id, specs in columns.items():
            table = self.query_one(f"#{table_id}", DataTable)
            for label, key in specs:
                table.add_column(label, key=key)
        self.query_one(KnockProfile).show(None)
        self.admin.watch_room(self.room)
        self.query_one("#stage", DataTable).focus()
        # The knocks' waiting time counts up on screen; it needs no word from the daemon.
        self.set_interval(1.0, self._show_waiting)

    def on_unmount(self) -> None:
        self.admin.watch_room(None)

    # ------------------------------------------------------------------ data

    def reload(self) -> None:
        self.load_room()

    @work(exclusive=True, group="room-load")
    async def load_room(self) -> None:
        client = self.admin.client
        if client is None:
            return
        try:
            detail = await client.room(self.room)
        except AdminError as exc:
            self.post_message(RoomGone(self.room, exc.message))
            return
        except AdminConnectionError:
            return
        self.post_message(RoomLoaded(detail))

    def schedule_reload(self) -> None:
        if not self._reload_pending:
            self._reload_pending = True
            self.set_timer(0.1, self._reload_now)

    def _reload_now(self) -> None:
        self._reload_pending = False
        self.load_room()

    def admin_event(self, event: Event) -> None:
        # Every change this screen shows comes as an event (docs/admin.md, "Events"): nothing
        # here polls the daemon.
        if event.room != self.room:
            return
        if event.kind == "levels":
            self.show_levels(convert(event.data.get("levels", []), list[MeterLevel]))
        elif event.kind in IN_PLACE_EVENTS and self.detail is not None:
            self.show_detail(self._changed(self.detail, event))
        else:
            self.schedule_reload()

    @staticmethod
    def _changed(detail: RoomDetail, event: Event) -> RoomDetail:
        """``detail`` with the change ``event`` describes applied."""
        data = event.data
        changes: dict[str, Any] = {}
        if event.kind == "hand_queue":
            changes["hand_queue"] = [str(user) for user in data.get("users", [])]
        elif event.kind == "participant":
            changed = convert(data["participant"], Participant)
            changes["participants"] = [
                changed if m.user == changed.user else m for m in detail.participants
            ]
        elif event.kind == "knock":
            knock = convert(data["request"], JoinRequestInfo)
            others = [k for k in detail.knocks if k.request_id != knock.request_id]
            changes["knocks"] = [*others, knock]
        elif event.kind == "knock_resolved":
            gone = data.get("request_id")
            changes["knocks"] = [k for k in detail.knocks if k.request_id != gone]
        return msgspec.structs.replace(detail, **changes)

    @on(RoomGone)
    def room_gone(self, message: RoomGone) -> None:
        if self.detail is not None and self.detail.summary.state != "closed":
            self.notify(f"{message.room}: {message.reason}", severity="warning")
        summary = self.query_one("#room-summary", Static)
        summary.update(plain(f"{message.room} — {message.reason}", style="bold red"))

    @on(RoomLoaded)
    def show_room(self, message: RoomLoaded) -> None:
        self.show_detail(message.detail)

    def show_detail(self, detail: RoomDetail) -> None:
        self.detail = detail
        s = detail.summary
        summary = Text()
        summary.append(f"{s.room}", style="bold")
        summary.append(f" — {printable(s.title)}   ")
        summary.append(f"{s.state} · {s.policy}", style="bold cyan")
        summary.append(f" · owner {printable(s.owner or '-')}")
        summary.append(f" · {s.speakers}/{s.max_speakers} on stage")
        summary.append(f" · {s.listeners} listening")
        if detail.partial:
            # A big room: the daemon lists the first listeners only (PROTOCOL.md 18).
            listed = sum(1 for m in detail.participants if m.role == "listener")
            summary.append(f" ({listed} listed; salonctl members {s.room} lists all)")
        if s.topics:
            summary.append(f" · topics: {printable(', '.join(s.topics))}")
        if s.mute_on_join:
            summary.append(" · mute on join")
        if s.recording:
            summary.append(" · ● recording", style="bold red")
        if detail.invites:
            summary.append(f" · {len(detail.invites)} invite links")
        if detail.bans:
            summary.append(f" · banned: {printable(', '.join(b.user for b in detail.bans))}")
        stream = detail.stream
        if stream is not None and (stream.mixing or stream.stream_listeners):
            summary.append(
                f" · {stream.realtime_listeners} real-time / {stream.stream_listeners} streaming"
                f" · {stream.segments_served} segments served",
                style="bold magenta",
            )
        if s.state == "closed":
            summary.append("   CLOSED", style="bold red")
        self.query_one("#room-summary", Static).update(summary)
        levels = {level.user: level for level in detail.levels}
        stage = [m for m in detail.participants if m.role != "listener"]
        audience = [m for m in detail.participants if m.role == "listener"]
        names = {m.user: m.display_name for m in detail.participants}
        self._fill(
            "stage",
            [
                (
                    m.user,
                    [
                        ROLE_MARK[m.role],
                        plain(m.display_name),
                        self._meter(levels, m),
                        mic(m),
                        plain(m.user),
                    ],
                )
                for m in stage
            ],
        )
        self._fill(
            "audience",
            [
                (m.user, [plain(m.display_name), plain(m.user), "✋" if m.hand_raised else ""])
                for m in audience
            ],
        )
        self._fill(
            "hands",
            [
                (u, [str(i), plain(names.get(u, u)), plain(u)])
                for i, u in enumerate(detail.hand_queue, 1)
            ],
        )
        now = time.time()
        self._fill(
            "knocks",
            [
                (
                    k.request_id,
                    [
                        knock_name(k),
                        plain(k.user),
                        plain(", ".join(k.verified) or "guest"),
                        waiting(k, now),
                    ],
                )
                for k in detail.knocks
            ],
        )
        self.query_one("#stage-title", Label).update(f"Stage ({len(stage)}/{s.max_speakers})")
        self.query_one("#audience-title", Label).update(f"Audience ({len(audience)})")
        self.query_one("#hands-title", Label).update(f"Hand queue ({len(detail.hand_queue)})")
        self.query_one("#knocks-title", Label).update(f"Knocks ({len(detail.knocks)})")
        self.query_one(KnockProfile).show(self.selected_knock())

    def _show_waiting(self) -> None:
        if self.detail is None:
            return
        try:
            table = self.query_one("#knocks", DataTable)
        except NoMatches:
            return
        now = time.time()
        for knock in self.detail.knocks:
            if knock.request_id in table.rows:
                table.update_cell(knock.request_id, "waiting", waiting(knock, now))

    @staticmethod
    def _meter(levels: dict[str, MeterLevel], member: Participant) -> Text:
        level = levels.get(member.user)
        return meter(level.level if level else None, bool(level and level.speaking))

    def _fill(self, table_id: str, rows: list[tuple[str, list[Any]]]) -> None:
        """Replace a table's rows, keeping the cursor on the same key when it is still there."""
        table = self.query_one(f"#{table_id}", DataTable)
        keep = self._row_key(table)
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if keep is not None:
            try:
                table.move_cursor(row=table.get_row_index(keep))
            except Exception:
                pass

    def show_levels(self, levels: list[MeterLevel]) -> None:
        # Levels stream in continuously, so one can arrive while this screen is still being
        # composed or already torn down (a reconnect races with screen changes): skip it then,
        # the next sample will do.
        try:
            table = self.query_one("#stage", DataTable)
        except NoMatches:
            return
        by_user = {level.user: level for level in levels}
        for row_key in list(table.rows):
            user = str(row_key.value)
            level = by_user.get(user)
            table.update_cell(
                row_key,
                "level",
                meter(level.level if level else None, bool(level and level.speaking)),
            )

    # ------------------------------------------------------------------ selection

    @staticmethod
    def _row_key(table: DataTable[Any]) -> str | None:
        if table.row_count == 0:
            return None
        row = max(0, min(table.cursor_row, table.row_count - 1))
        key = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        return str(key) if key is not None else None

    @on(DescendantFocus)
    def focus_moved(self, event: DescendantFocus) -> None:
        if isinstance(event.widget, DataTable) and event.widget.id in MEMBER_TABLES:
            self.member_table = event.widget.id

    @on(DataTable.RowHighlighted)
    def row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "knocks":
            self.query_one(KnockProfile).show(self.selected_knock())

    def selected_user(self) -> str | None:
        return self._row_key(self.query_one(f"#{self.member_table}", DataTable))

    def selected_knock(self) -> JoinRequestInfo | None:
        request_id = self._row_key(self.query_one("#knocks", DataTable))
        if self.detail is None or request_id is None:
            return None
        return next((k for k in self.detail.knocks if k.request_id == request_id), None)

    def participant(self, user: str) -> Participant | None:
        if self.detail is None:
            return None
        return next((m for m in self.detail.participants if m.user == user), None)

    # ------------------------------------------------------------------ actions

    def _on_user(self, verb: str, call: Callable[[AdminClient, str], Awaitable[Any]]) -> None:
        user = self.selected_user()
        if user is None:
            self.notify(f"{verb}: nobody selected", severity="warning")
            return
        self.admin.perform(f"{verb} {user}", lambda c: call(c, user))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_approve(self) -> None:
        knock = self.selected_knock()
        if knock is None:
            self.notify("approve: no knock selected", severity="warning")
            return
        room = self.room
        self.admin.perform(
            f"admitted {knock.display_name} ({knock.user})",
            lambda c: c.approve_knock(room, knock.request_id),
        )

    def action_deny(self) -> None:
        knock = self.selected_knock()
        if knock is None:
            self.notify("deny: no knock selected", severity="warning")
            return
        room = self.room
        self.admin.perform(
            f"denied {knock.display_name} ({knock.user})",
            lambda c: c.deny_knock(room, knock.request_id),
        )

    def action_invite_to_speak(self) -> None:
        self._on_user("invited to speak:", lambda c, u: c.invite_to_speak(self.room, u))

    def action_to_audience(self) -> None:
        self._on_user("moved to the audience:", lambda c, u: c.move_to_audience(self.room, u))

    def action_lower_hand(self) -> None:
        self._on_user("lowered the hand of", lambda c, u: c.lower_hand(self.room, u))

    def action_toggle_mute(self) -> None:
        user = self.selected_user()
        member = self.participant(user) if user is not None else None
        if member is not None and member.muted_by_moderator:
            self._on_user("unmuted", lambda c, u: c.unmute(self.room, u))
        else:
            self._on_user("muted", lambda c, u: c.mute(self.room, u))

    def action_promote(self) -> None:
        self._on_user("promoted", lambda c, u: c.promote(self.room, u))

    def action_demote(self) -> None:
        self._on_user("demoted", lambda c, u: c.demote(self.room, u))

    def action_remove(self) -> None:
        user = self.selected_user()
        if user is None:
            self.notify("remove: nobody selected", severity="warning")
            return
        room = self.room

        def confirmed(reason: str | None) -> None:
            if reason is not None:
                self.admin.perform(f"removed {user}", lambda c: c.remove(room, user, reason))

        self.app.push_screen(
            ReasonConfirmScreen(f"Remove {user} from {room}? They may come back.", "Remove"),
            confirmed,
        )

    def action_ban(self) -> None:
        user = self.selected_user()
        if user is None:
            self.notify("ban: nobody selected", severity="warning")
            return
        room = self.room

        def confirmed(reason: str | None) -> None:
            if reason is not None:
                self.admin.perform(f"banned {user}", lambda c: c.ban(room, user, reason))

        self.app.push_screen(
            ReasonConfirmScreen(f"Ban {user} from {room} for good?", "Ban"), confirmed
        )

    def action_unban(self) -> None:
        bans = self.detail.bans if self.detail is not None else []
        if not bans:
            self.notify("unban: nobody is banned from this room", severity="warning")
            return
        room = self.room
        default = bans[0].user

        def answered(user: str | None) -> None:
            if user:
                self.admin.perform(f"unbanned {user}", lambda c: c.unban(room, user.strip()))

        self.admin.ask(
            f"Lift the ban on (banned: {', '.join(b.user for b in bans)}):", default, answered
        )

    def action_invite_link(self) -> None:
        room = self.room

        def answered(role: str | None) -> None:
            if role in ("listener", "speaker"):
                self.admin.create_invite_link(room, role)
            elif role is not None:
                self.notify("the role is listener or speaker", severity="warning")

        self.admin.ask("Invite link for which role (listener or speaker)?", "listener", answered)

    def action_edit_title(self) -> None:
        self.admin.edit_title(self.room, self.detail.summary.title if self.detail else "")

    def action_edit_topics(self) -> None:
        self.admin.edit_topics(self.room, self.detail.summary.topics if self.detail else [])

    def action_cycle_policy(self) -> None:
        current = self.detail.summary.policy if self.detail else "open"
        self.admin.set_policy(self.room, POLICIES[(POLICIES.index(current) + 1) % len(POLICIES)])

    def action_toggle_recording(self) -> None:
        recording = bool(self.detail and self.detail.summary.recording)
        self.admin.toggle_recording(self.room, recording)

    def action_close_room(self) -> None:
        room = self.room

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.admin.perform(f"closed {room}", lambda c: c.close_room(room))

        self.app.push_screen(
            ConfirmScreen(f"Close room {room} for everyone in it?", "Close room"), confirmed
        )

    def palette_commands(self) -> list[PaletteCommand]:
        return [
            ("Approve knock", "Admit the highlighted requester", self.action_approve),
            ("Deny knock", "Refuse the highlighted requester", self.action_deny),
            (
                "Invite to speak",
                "Invite the highlighted listener onto the stage",
                self.action_invite_to_speak,
            ),
            (
                "Move to audience",
                "Move the highlighted speaker off the stage",
                self.action_to_audience,
            ),
            (
                "Mute / unmute",
                "Mute the highlighted speaker, or lift the mute",
                self.action_toggle_mute,
            ),
            ("Lower hand", "Lower the highlighted listener's hand", self.action_lower_hand),
            ("Remove", "Remove the highlighted member (asks first)", self.action_remove),
            ("Ban", "Ban the highlighted member (asks first)", self.action_ban),
            ("Unban", "Lift a ban", self.action_unban),
            ("Promote", "Make the highlighted member a moderator", self.action_promote),
            ("Demote", "Turn the highlighted moderator into a speaker", self.action_demote),
            ("Create invite link", "A listener or speaker invite link", self.action_invite_link),
            ("Set title", "Change the room's title", self.action_edit_title),
            ("Set topics", "Change the room's topics", self.action_edit_topics),
            (
                "Cycle policy",
                "open -> approval -> invite (opening asks first)",
                self.action_cycle_policy,
            ),
            (
                "Start / stop recording",
                "Record the room, or stop its recording (asks first)",
                self.action_toggle_recording,
            ),
            ("Close room", "Close the room for everyone (asks first)", self.action_close_room),
            ("Back to rooms", "Return to the rooms list", self.action_back),
        ]


def knock_name(knock: JoinRequestInfo) -> Text:
    """The requester's name, marked ⚠ when it mixes scripts or imitates Latin letters."""
    if name_warning(knock.display_name):
        return Text.assemble(("⚠ ", "bold yellow"), plain(knock.display_name))
    return plain(knock.display_name)


def mic(member: Participant) -> Text:
    if member.muted_by_moderator:
        return Text("muted by mod", style="bold red")
    if member.muted:
        return Text("muted", style="yellow")
    return Text("live", style="bold green")


def waiting(knock: JoinRequestInfo, now: float) -> str:
    """How long a requester has been knocking, as the knocks table shows it."""
    return f"{max(0.0, now - knock.requested_at):.0f} s"
