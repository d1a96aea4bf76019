"""``salon-admin`` driven by Textual's pilot against a real salond process and real clients.

Audio is real too: a speaker sends an Opus tone over SRTP in QUIC datagrams, a listener
decodes it, and muting the speaker in the console must stop the listener's datagrams and turn
what it plays into silence (a speaker's client that ignores the mute cannot get through).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from salon.client.audiofile import frames
from salon.client.connection import SalonClient
from salon.client.room_audio import RoomAudio
from salon.daemon.admin.client import AdminClient
from salon.daemon.wire import messages as msg
from salon.tui.app import SalonAdminApp
from salon.tui.screens.dialogs import ConfirmScreen, ReasonConfirmScreen
from salon.tui.screens.help import HelpScreen
from salon.tui.screens.room import RoomScreen
from salon.tui.screens.rooms import RoomsScreen
from salon.tui.widgets.connection import ConnectionBar
from salon.tui.widgets.profile import KnockProfile
from tests.audio_checks import band_energy, tone
from tests.conftest import SalondProcess, start_salond

SIZE = (140, 44)


# ----------------------------------------------------------------------------- helpers


async def until(pilot: Pilot[None], check: Callable[[], object], what: str, timeout=60.0) -> None:
    """Pause the app until ``check()`` holds; the bound only stops a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


def screen_text(app: object) -> str:
    """The visible text of the app's screen, from its SVG screenshot."""
    svg = app.export_screenshot()  # type: ignore[attr-defined]
    parts = re.findall(r"<text[^>]*>(.*?)</text>", svg, re.S)
    return html.unescape("".join(parts)).replace("\xa0", " ")


def table(app: SalonAdminApp, table_id: str) -> DataTable[object]:
    return app.screen.query_one(f"#{table_id}", DataTable)


def column(app: SalonAdminApp, table_id: str, key: str) -> list[str]:
    data = table(app, table_id)
    return [str(data.get_cell(row, key)) for row in data.rows]


async def guest(daemon: SalondProcess, name: str) -> SalonClient:
    key = base64.b64encode(hashlib.sha256(f"tui/{name}".encode()).digest()).decode()
    return await SalonClient.connect(
        daemon.host,
        daemon.port,
        display_name=name,
        fingerprint=daemon.fingerprint,
        credentials={"guest_key": key},
    )


def admin_socket(daemon: SalondProcess) -> Path:
    return daemon.state_dir / "admin.sock"


def looped(samples) -> Iterator[bytes]:
    chunk = list(frames(samples))
    while True:
        yield from chunk


class DefiantAudio(RoomAudio):
    """A speaker's client that keeps sending after a moderator's mute, as a hostile or
    broken client would: only the server can stop its audio reaching the listeners."""

    @property
    def speaking_allowed(self) -> bool:
        return self.sender is not None


def played(heard: list[tuple[float, bytes]], start: float, end: float) -> np.ndarray:
    """The samples the listener played between two loop times."""
    chunks = [np.frombuffer(pcm, dtype=np.int16) for at, pcm in heard if start <= at < end]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt((samples.astype(np.float64) ** 2).mean())) if len(samples) else 0.0


async def open_console(pilot: Pilot[None], rooms: int) -> None:
    app = pilot.app
    assert isinstance(app, SalonAdminApp)
    await until(pilot, lambda: app.client is not None, "the console connects")
    await until(pilot, lambda: table(app, "rooms").row_count == rooms, f"{rooms} rooms listed")


@pytest.fixture
async def admin(salond: SalondProcess) -> AdminClient:
    client = await AdminClient.connect(admin_socket(salond))
    yield client
    await client.close()


# ----------------------------------------------------------------------------- tests


async def test_rooms_screen_lists_rooms_live_with_stats_and_audit(
    salond: SalondProcess, admin: AdminClient
) -> None:
    await admin.create_room("book-club", "Book club", topics=["books"], persistent=True)
    await admin.create_room("jazz", "Late jazz", policy="invite", persistent=True)
    reader = await guest(salond, "Reader")
    await reader.join("book-club")
    app = SalonAdminApp(admin_socket(salond))
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, rooms=2)
        assert isinstance(app.screen, RoomsScreen)
        assert column(app, "rooms", "room") == ["book-club", "jazz"]  # most members first
        assert column(app, "rooms", "audience") == ["1", "0"]
        assert column(app, "rooms", "policy") == ["open", "invite"]
        await until(pilot, lambda: "1 open / 1 total" in screen_text(app), "stats panel")
        # The audit log loads on its own worker: wait for it rather than racing it.
        await until(pilot, lambda: "create_room" in screen_text(app), "audit log")
        text = screen_text(app)
        for expected in (
            "connected to salond/",
            "Rooms",
            "Server",
            "Audit log",
            "Book club",
            "Late jazz",
            "operator:root",
            "packets in",
            "plugin errors",
            "create_room",
        ):
            assert expected in text, expected
        # Counts are live: a second member shows up without any key press.
        second = await guest(salond, "Second")
        await second.join("book-club")
        await until(
            pilot, lambda: column(app, "rooms", "audience")[0] == "2", "live audience count"
        )
        await second.close()
    await reader.close()


async def test_approving_a_knock_in_the_tui_admits_a_real_client(
    salond: SalondProcess, admin: AdminClient
) -> None:
    await admin.create_room("salon", "Members only", policy="approval", persistent=True)
    grace = await guest(salond, "Grace Hopper")
    assert (await grace.join("salon"))["status"] == "knocking"
    app = SalonAdminApp(admin_socket(salond))
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, rooms=1)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RoomScreen), "room screen")
        await until(pilot, lambda: table(app, "knocks").row_count == 1, "the knock")
        shown = app.screen.query_one(KnockProfile).knock
        assert shown is not None and (shown.display_name, shown.user) == (
            "Grace Hopper",
            grace.user,
        )
        text = screen_text(app)
        for expected in (
            "Stage (0/10)",
            "Audience (0)",
            "Knocks (1)",
            "Requester",
            "nothing (guest)",
            grace.user,
            "expires in",
        ):
            assert expected in text, expected
        await pilot.press("a")
        state = await grace.wait_for_event(msg.RoomState, timeout=10)
        assert state.room.summary.room == "salon"
        assert grace.room == "salon"
        await until(pilot, lambda: column(app, "audience", "user") == [grace.user], "admitted")
        assert table(app, "knocks").row_count == 0
        await until(
            pilot,
            lambda: (
                "approve_knock"
                in str(
                    [e.action for e in app.screen_stack[1].query_one("#audit").entries]  # type: ignore[attr-defined]
                )
            ),
            "audit entry",
        )
    await grace.close()


async def test_muting_a_speaker_in_the_tui_stops_audio_at_a_real_listener(
    salond: SalondProcess, admin: AdminClient
) -> None:
    await admin.create_room("stage", "On air", persistent=True)
    invite = await admin.create_invite("stage", role="speaker")
    speaker = await guest(salond, "Speaker")
    listener = await guest(salond, "Listener")
    speaking = DefiantAudio(speaker, source=looped(tone([440.0], 2.0)), auto_unmute=True)
    listening = RoomAudio(listener)
    heard: list[tuple[float, bytes]] = []
    listening.on_frame_played = lambda pcm, now: heard.append((now, pcm))
    await listener.join("stage")
    assert (await speaker.join("stage", invite=invite.token))["role"] == "speaker"
    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(a.run(stop=stop)) for a in (speaking, listening)]
    loop = asyncio.get_running_loop()
    app = SalonAdminApp(admin_socket(salond))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await open_console(pilot, rooms=1)
            await pilot.press("enter")
            await until(pilot, lambda: column(app, "stage", "user") == [speaker.user], "stage")
            await until(
                pilot, lambda: "speaking" in column(app, "stage", "level")[0], "speaking meter"
            )
            start = listener.datagrams_received
            before = loop.time()
            # Audio flows (~50 packets/s): wait for a second's worth of it, not for a second (a
            # loaded machine may deliver less in one second of the loop's time).
            await until(
                pilot, lambda: listener.datagrams_received - start >= 50, "audio flows", 30.0
            )
            # The listener decodes the speaker's tone: loud, and at 440 Hz.
            tone_heard = played(heard, before, loop.time())
            assert rms(tone_heard) > 1000, rms(tone_heard)
            assert band_energy(tone_heard, 440.0) > 0.8
            await pilot.press("m")
            await until(
                pilot, lambda: column(app, "stage", "mic") == ["muted by mod"], "mute shown"
            )
            dropped_before = (await admin.status()).drops.get("muted", 0)
            # The mute is in force once the daemon drops the speaker's packets for it; then a
            # ping answered afterwards comes behind every packet forwarded before the mute, so
            # those have reached the listener (rather than waiting a fixed time for them).
            deadline = loop.time() + 30.0
            while (await admin.status()).drops.get("muted", 0) <= dropped_before:
                assert loop.time() < deadline, "the daemon never dropped the muted speaker's audio"
                await pilot.pause(0.05)
            await listener.call("ping")
            muted_at = listener.datagrams_received
            silent_from = loop.time()
            await pilot.pause(1.5)
            assert listener.datagrams_received == muted_at  # the server stopped the audio
            after = played(heard, silent_from, loop.time())
            assert len(after) > 0 and rms(after) < 30, rms(after)  # and the listener hears silence
            assert speaking.frames_sent > 0 and speaking.sender is not None
            assert (await admin.status()).drops.get("muted", 0) > dropped_before
            await until(
                pilot,
                lambda: "speaking" not in column(app, "stage", "level")[0],
                "meter falls silent",
            )
            # Lifting the mute lets the speaker unmute again; audio resumes.
            await pilot.press("m")
            await until(pilot, lambda: listener.datagrams_received > muted_at + 10, "audio resumes")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await speaker.close()
        await listener.close()


async def test_destructive_actions_ask_first(salond: SalondProcess, admin: AdminClient) -> None:
    await admin.create_room("agora", "Agora", persistent=True)
    troll = await guest(salond, "Troll")
    await troll.join("agora")
    app = SalonAdminApp(admin_socket(salond))
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, rooms=1)
        await pilot.press("enter")
        await until(pilot, lambda: column(app, "audience", "user") == [troll.user], "audience")
        await pilot.press("tab")  # stage -> audience
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ReasonConfirmScreen), "remove asks")
        assert "Remove" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause(0.3)
        assert column(app, "audience", "user") == [troll.user]  # nothing happened
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, ReasonConfirmScreen), "ban asks")
        await pilot.press(*"spam", "enter")
        removed = await troll.wait_for_event(msg.Removed, timeout=10)
        assert removed.banned and removed.reason == "spam"
        await until(pilot, lambda: "banned: " + troll.user in screen_text(app), "ban shown")
        await pilot.press("escape")  # back to the rooms
        await until(pilot, lambda: isinstance(app.screen, RoomsScreen), "rooms screen")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "close asks")
        await pilot.press("n")
        await pilot.pause(0.3)
        assert [r.room for r in await admin.rooms()] == ["agora"]
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "close asks again")
        await pilot.press("y")
        await until(pilot, lambda: table(app, "rooms").row_count == 0, "room gone")
        assert await admin.rooms() == []
    await troll.close()


async def test_help_screen_and_command_palette(salond: SalondProcess, admin: AdminClient) -> None:
    await admin.create_room("help", "Help me", persistent=True)
    app = SalonAdminApp(admin_socket(salond))
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, rooms=1)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        text = screen_text(app)
        for expected in ("Keys — rooms", "New room", "Close room", "ctrl+p", "Quit"):
            assert expected in text, expected
        await pilot.press("escape")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RoomScreen), "room screen")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for expected in (
            "Approve knock",
            "Mute / unmute",
            "Ban",
            "Create invite link",
            "Close room",
            "Help",
        ):
            assert expected in titles
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "room help")
        text = screen_text(app)
        for expected in ("Keys — room", "Approve", "Deny", "Mute/unmute", "shift+p"):
            assert expected in text, expected


async def test_console_says_when_the_daemon_goes_and_reconnects(tmp_path: Path) -> None:
    state = tmp_path / "state"
    daemon = start_salond(state)
    app = SalonAdminApp(state / "admin.sock")
    try:
        async with app.run_test(size=SIZE) as pilot:
            await open_console(pilot, rooms=0)
            bar = app.screen.query_one(ConnectionBar)
            assert bar.has_class("-connected")
            await asyncio.to_thread(daemon.stop)
            await until(pilot, lambda: bar.has_class("-disconnected"), "disconnection shown")
            assert "reconnecting" in str(bar.content)
            assert ("Lost the daemon", "the daemon is shutting down; reconnecting…") in app.notices
            daemon = await asyncio.to_thread(start_salond, state)
            await until(pilot, lambda: bar.has_class("-connected"), "reconnected", timeout=20)
            title, message = app.notices[-1]
            assert title == "salond is back" and message.startswith("Reconnected to salond/")
    finally:
        daemon.stop()


async def test_hostile_names_and_titles_show_literally_and_lookalikes_are_marked(
    salond: SalondProcess, admin: AdminClient
) -> None:
    link = "[link=https://evil.example]click[/link]"
    await admin.create_room(
        "trap", link, topics=["[b]bold[/b]"], policy="approval", persistent=True
    )
    impostor = await guest(salond, "Gr\u0430ce [red]Hopper[/red]")  # a Cyrillic a
    await impostor.join("trap")
    app = SalonAdminApp(admin_socket(salond))
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, rooms=1)
        await until(pilot, lambda: link in screen_text(app), "the title, literally")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RoomScreen), "room screen")
        await until(pilot, lambda: table(app, "knocks").row_count == 1, "the knock")
        text = screen_text(app)
        assert "Gr\u0430ce [red]Hopper[/red]" in text  # markup in a name is just text
        assert "⚠ mixed scripts · looks like: Grace" in text  # (wrapped in the profile)
        assert "⚠ Gr\u0430ce" in text  # the knocks table marks the name
        assert link in text and "topics: [b]bold[/b]" in text
        # A name that is markup was never turned into a link anywhere on screen.
        assert "evil.example" not in "".join(
            str(getattr(span.style, "link", "") or "")
            for widget in app.screen.query("*")
            for span in getattr(getattr(widget, "renderable", None), "spans", [])
        )
    await impostor.close()


async def test_opening_a_room_by_y_asks_and_recording_starts_and_stops_from_the_console(
    salond: SalondProcess, admin: AdminClient
) -> None:
    await admin.create_room("vault", "Vault", policy="invite", persistent=True)
    app = SalonAdminApp(admin_socket(salond))
    async with app.run_test(size=SIZE) as pilot:
        await open_console(pilot, rooms=1)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RoomScreen), "room screen")
        await until(pilot, lambda: "invite" in screen_text(app), "the policy")
        await pilot.press("y")  # invite -> open: anyone may walk in, so it asks
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "y asks first")
        assert "Open vault to everyone?" in screen_text(app)
        await pilot.press("n")
        await pilot.pause(0.3)
        assert (await admin.room("vault")).summary.policy == "invite"
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "asks again")
        await pilot.press("y")
        await until(pilot, lambda: "open" in screen_text(app), "opened")
        assert (await admin.room("vault")).summary.policy == "open"
        await pilot.press("R")  # start recording
        await until(pilot, lambda: "● recording" in screen_text(app), "recording shown")
        assert (await admin.room("vault")).summary.recording
        await pilot.press("R")  # stop: asks first
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "stop asks")
        await pilot.press("y")
        await until(pilot, lambda: "● recording" not in screen_text(app), "recording stopped")
        assert not (await admin.room("vault")).summary.recording


def test_console_text_helper_drops_control_characters_even_from_old_data() -> None:
    from salon.tui.text import plain

    shown = plain("Nice\x1b]0;pwned\x07\x1b[2J[link=https://evil.example]x[/link]\u202e")
    assert "\x1b" not in shown.plain and "\x07" not in shown.plain and "\u202e" not in shown.plain
    assert "[link=https://evil.example]x[/link]" in shown.plain and not shown.spans


async def test_hands_and_knocks_appear_from_events_without_polling(tmp_path: Path) -> None:
    """A hand raise and a knock's expiry reach the room screen as admin events: the console
    asks the daemon for the room's detail once, when the screen opens, and never again."""
    config = tmp_path / "salond.toml"
    config.write_text("[limits]\nknock_ttl = 2.5\n")
    state = tmp_path / "state"
    daemon = start_salond(state, "-c", str(config))
    admin = await AdminClient.connect(admin_socket(daemon))
    listener = knocker = None
    try:
        await admin.create_room("floor", "Open floor", persistent=True)
        listener = await guest(daemon, "Lin")
        await listener.join("floor")
        await admin.act("floor", "update_room", policy="approval")
        app = SalonAdminApp(admin_socket(daemon))
        async with app.run_test(size=SIZE) as pilot:
            await open_console(pilot, rooms=1)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, RoomScreen), "room screen")
            await until(pilot, lambda: column(app, "audience", "user") == [listener.user], "Lin")
            client = app.client
            assert client is not None
            asked: list[str] = []
            fetch = client.room

            async def counted(room: str) -> object:
                asked.append(room)
                return await fetch(room)

            client.room = counted  # type: ignore[method-assign]

            await listener.call("raise_hand")
            await until(pilot, lambda: column(app, "hands", "user") == [listener.user], "hand")
            await until(pilot, lambda: column(app, "audience", "hand") == ["✋"], "hand mark")

            knocker = await guest(daemon, "Kit")
            assert (await knocker.join("floor"))["status"] == "knocking"
            await until(pilot, lambda: column(app, "knocks", "user") == [knocker.user], "knock")
            # The knock expires in the daemon (2.5 s, so stats events pass meanwhile).
            await knocker.wait_for_event(msg.KnockDenied, timeout=15)
            await until(pilot, lambda: table(app, "knocks").row_count == 0, "knock expired")
            assert column(app, "hands", "user") == [listener.user]
            assert asked == [], "the room screen asked the daemon again instead of using events"
    finally:
        for client_ in (listener, knocker):
            if client_ is not None:
                await client_.close()
        await admin.close()
        assert daemon.stop() == 0, daemon.log_text()
