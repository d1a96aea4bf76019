"""``salon-admin``: the operator's live console for a running salond.

    salon-admin                          # the socket of ./state, or $SALON_ADMIN_SOCKET
    salon-admin --socket /var/lib/salon/admin.sock
    salon-admin -c /etc/salon/salond.toml

The app keeps one connection to the admin socket (``salon.daemon.admin.client``, which imports
no textual): a worker connects, subscribes to events and turns each into a message; when the
daemon goes away it says so and keeps trying until the daemon is back.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from salon.daemon.admin.client import (
    AdminClient,
    AdminConnectionError,
    AdminError,
    ConfigError,
    default_socket_path,
)

from .messages import ActionFinished, AdminEventReceived, Connected, Disconnected
from .screens.base import AdminScreen
from .screens.dialogs import ConfirmScreen, PromptScreen
from .screens.help import HelpScreen
from .screens.room import RoomScreen
from .screens.rooms import RoomsScreen
from .text import plain_str
from .widgets.connection import ConnectionBar

Connector = Callable[[Path], Awaitable[AdminClient]]
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)
"""Seconds between reconnection attempts (the last one repeats)."""


class SalonAdminApp(App[None]):
    """Rooms, one room in detail, stats, audit log; every action by key and by name."""

    TITLE = "salon-admin"
    CSS_PATH = "salon_admin.tcss"
    BINDINGS = [
        Binding("question_mark,f1", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, socket_path: Path, connect: Connector | None = None) -> None:
        super().__init__()
        self.socket_path = Path(socket_path)
        self._connect = connect or (lambda path: AdminClient.connect(path))
        self.client: AdminClient | None = None
        self.server_name = ""
        self.operator = ""
        self.disconnect_reason = "connecting"
        self.attempt = 0
        self.watched_room: str | None = None
        self.notices: collections.deque[tuple[str, str]] = collections.deque(maxlen=50)
        """(title, message) of the recent notifications, for tests and the curious."""

    def notify(self, message: str, *, title: str = "", **options: Any) -> None:
        """Show a toast, and remember it in :attr:`notices` (newest last).

        Messages carry names and reasons guests chose: they are shown as plain, printable text,
        never as markup.
        """
        message, title = plain_str(message), plain_str(title)
        self.notices.append((title, message))
        options.setdefault("markup", False)
        super().notify(message, title=title, **options)

    def on_mount(self) -> None:
        self.sub_title = str(self.socket_path)
        self.push_screen(RoomsScreen())
        self.maintain_connection()

    # ------------------------------------------------------------------ connection

    @work(exclusive=True, group="connection")
    async def maintain_connection(self) -> None:
        """Connect, subscribe, relay events; on loss, say so and retry until it works."""
        was_connected = False
        attempt = 0
        while True:
            try:
                client = await self._connect(self.socket_path)
            except AdminConnectionError as exc:
                attempt += 1
                self.post_message(Disconnected(_short(exc), attempt))
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS)) - 1])
                continue
            try:
                await client.subscribe(levels_room=self.watched_room)
                assert client.welcome is not None
                self.client = client
                self.post_message(Connected(client, client.welcome, was_connected))
                was_connected = True
                attempt = 0
                async for event in client.events():
                    self.post_message(AdminEventReceived(event))
            except (AdminConnectionError, AdminError):
                pass
            finally:
                self.client = None
                reason = client.close_reason or "connection lost"
                await client.close()
            attempt = 1
            self.post_message(Disconnected(reason, attempt))
            await asyncio.sleep(RETRY_DELAYS[0])

    @on(Connected)
    def connected(self, message: Connected) -> None:
        self.server_name = message.welcome.server
        self.operator = message.welcome.operator
        self.attempt = 0
        self._update_bars()
        if message.reconnected:
            self.notify(f"Reconnected to {self.server_name}", title="salond is back")
        for screen in self.screen_stack:
            if isinstance(screen, AdminScreen):
                screen.reload()

    @on(Disconnected)
    def disconnected(self, message: Disconnected) -> None:
        first = self.attempt == 0
        self.disconnect_reason = message.reason
        self.attempt = message.attempt
        self.server_name = ""
        self._update_bars()
        if first:
            self.notify(
                f"{message.reason}; reconnecting…",
                title="Lost the daemon",
                severity="warning",
            )

    @on(AdminEventReceived)
    def relay_event(self, message: AdminEventReceived) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, AdminScreen):
                screen.admin_event(message.event)

    def show_connection(self, bar: ConnectionBar) -> None:
        if self.server_name:
            bar.show_connected(self.server_name, self.operator, str(self.socket_path))
        else:
            bar.show_disconnected(self.disconnect_reason, str(self.socket_path), self.attempt)

    def _update_bars(self) -> None:
        for screen in self.screen_stack:
            for bar in screen.query(ConnectionBar):
                self.show_connection(bar)

    def watch_room(self, room: str | None) -> None:
        """Stream ``room``'s audio levels (None: none)."""
        self.watched_room = room
        self._resubscribe(room)

    @work(group="subscribe")
    async def _resubscribe(self, room: str | None) -> None:
        client = self.client
        if client is not None:
            try:
                await client.subscribe(levels_room=room)
            except (AdminConnectionError, AdminError):
                pass

    # ------------------------------------------------------------------ actions

    def open_room(self, room: str) -> None:
        self.push_screen(RoomScreen(room))

    @work(group="actions")
    async def perform(
        self, description: str, call: Callable[[AdminClient], Awaitable[Any]]
    ) -> None:
        """Run one operator action; say what happened either way."""
        client = self.client
        if client is None:
            self.notify("not connected to the daemon", severity="error")
            return
        try:
            await call(client)
        except AdminError as exc:
            self.notify(f"{exc.message}", title=f"Refused: {exc.code}", severity="error")
            self.post_message(ActionFinished(description, exc.code))
            return
        except AdminConnectionError as exc:
            self.notify(str(exc), title="Lost the daemon", severity="error")
            self.post_message(ActionFinished(description, "connection_lost"))
            return
        self.notify(description, title="Done")
        self.post_message(ActionFinished(description))

    @on(ActionFinished)
    def action_finished(self, message: ActionFinished) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, AdminScreen):
                screen.reload()

    def ask(self, question: str, default: str, then: Callable[[str | None], None]) -> None:
        self.push_screen(PromptScreen(question, default), then)

    def edit_title(self, room: str, current: str = "") -> None:
        def answered(title: str | None) -> None:
            if title:
                self.perform(
                    f"{room}: title set", lambda c: c.update_room(room, title=title.strip())
                )

        self.ask(f"New title of {room}:", current, answered)

    def edit_topics(self, room: str, current: Iterable[str] = ()) -> None:
        def answered(text: str | None) -> None:
            if text is not None:
                topics = [t.strip() for t in text.split(",") if t.strip()]
                self.perform(f"{room}: topics set", lambda c: c.update_room(room, topics=topics))

        self.ask(f"Topics of {room} (comma separated):", ", ".join(current), answered)

    def set_policy(self, room: str, policy: str) -> None:
        """Change a room's join policy; opening a room (anyone may walk in) asks first."""

        def change() -> None:
            self.perform(f"{room}: policy {policy}", lambda c: c.update_room(room, policy=policy))

        if policy != "open":
            change()
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                change()

        self.push_screen(
            ConfirmScreen(
                f"Open {room} to everyone? Nobody will need approval or an invite to join.",
                "Open room",
            ),
            confirmed,
        )

    def toggle_recording(self, room: str, recording: bool) -> None:
        """Start recording ``room``, or stop its recording (asks first: it ends the file)."""
        if not recording:
            self.perform(f"{room}: recording started", lambda c: c.act(room, "start_recording"))
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.perform(f"{room}: recording stopped", lambda c: c.act(room, "stop_recording"))

        self.push_screen(ConfirmScreen(f"Stop recording {room}?", "Stop recording"), confirmed)

    @work(group="actions")
    async def create_invite_link(self, room: str, role: str) -> None:
        client = self.client
        if client is None:
            self.notify("not connected to the daemon", severity="error")
            return
        try:
            invite = await client.create_invite(room, role)
        except (AdminError, AdminConnectionError) as exc:
            self.notify(str(exc), title="Refused", severity="error")
            return
        self.copy_to_clipboard(invite.token)
        self.notify(
            f"salon join {room} --invite {invite.token}",
            title=f"{role} invite link (copied)",
            timeout=30,
        )
        self.post_message(ActionFinished(f"invite link for {room}"))

    # ------------------------------------------------------------------ help and palette

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen, list(self.BINDINGS)))

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        if isinstance(screen, AdminScreen):
            for title, help_text, callback in screen.palette_commands():
                yield SystemCommand(title, help_text, callback)
        yield SystemCommand("Help", "Show the keys of this screen", self.action_help)
        yield from super().get_system_commands(screen)


def _short(exc: Exception) -> str:
    text = str(exc)
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="salon-admin", description="Live console for a running salond."
    )
    parser.add_argument("--socket", type=Path, help="path of salond's admin socket")
    parser.add_argument("-c", "--config", type=Path, help="salond's configuration file")
    args = parser.parse_args(argv)
    try:
        path = args.socket or default_socket_path(args.config)
    except ConfigError as exc:
        print(f"salon-admin: configuration error: {exc}", file=sys.stderr)
        return 2
    SalonAdminApp(path).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
