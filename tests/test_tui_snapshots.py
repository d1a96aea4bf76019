"""Snapshots of ``salon-admin``'s main screens, fed by a fake admin client with fixed data.

Each snapshot is the screen's text as a terminal shows it (``tests/snapshots/tui/*.txt``): a
change in layout, columns, labels or key hints shows up as a readable diff. The clock the
screens read is frozen and the audit log is shown in UTC, so the pictures never depend on when
or where the tests run.

After an intended change, regenerate them and review the diff::

    SALON_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_tui_snapshots.py

A mismatch also writes the SVG screenshot and the text seen next to the test's tmp_path.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
import types
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot
from textual.widgets import DataTable

from salon.daemon.admin import protocol as p
from salon.daemon.wire.messages import InviteInfo, JoinRequestInfo, Participant, RoomSummary
from salon.tui.app import SalonAdminApp
from salon.tui.screens import room as room_screen
from salon.tui.screens.dialogs import ConfirmScreen
from salon.tui.screens.help import HelpScreen
from salon.tui.screens.room import RoomScreen
from salon.tui.widgets import audit as audit_widget
from salon.tui.widgets import profile as profile_widget

SNAPSHOTS = Path(__file__).parent / "snapshots" / "tui"
UPDATE_ENV = "SALON_UPDATE_SNAPSHOTS"
SIZE = (140, 44)
NOW = 1_780_000_000.0
"""The frozen clock of every snapshot (2026-05-28 20:26:40 UTC)."""
SOCKET = Path("/run/salon/admin.sock")

OWNER = "operator:root"
ADA = "guest-3q7ve2kz"
GRACE = "guest-h5m2xq0c"
LINUS = "guest-p9c4d1ar"
MARGARET = "guest-k2w8n6ts"
KEN = "guest-t7r3b5yu"
BARBARA = "guest-z4f1m9qe"
ALAN = "token:alan@example.org"
JOAN = "guest-b8d2v6lo"

ROOMS = [
    RoomSummary(
        room="book-club",
        title="Book club: Middlemarch",
        topics=["books", "literature"],
        policy="approval",
        owner=OWNER,
        speakers=3,
        listeners=3,
        persistent=True,
        recording=True,
    ),
    RoomSummary(room="late-jazz", title="Late jazz", policy="invite", owner=ADA, listeners=1),
    RoomSummary(
        room="town-hall",
        title="Town hall",
        topics=["civic"],
        state="scheduled",
        owner=OWNER,
        scheduled_for=NOW + 3600,
        persistent=True,
    ),
]

DETAIL = p.RoomDetail(
    summary=ROOMS[0],
    participants=[
        Participant(user=ADA, display_name="Ada Lovelace", role="owner", muted=False),
        Participant(user=GRACE, display_name="Grace Hopper", role="moderator", muted=False),
        Participant(
            user=LINUS, display_name="Linus", role="speaker", muted=True, muted_by_moderator=True
        ),
        Participant(user=MARGARET, display_name="Margaret Hamilton", role="listener"),
        Participant(user=KEN, display_name="Ken Thompson", role="listener", hand_raised=True),
        Participant(user=BARBARA, display_name="Barbara Liskov", role="listener"),
    ],
    moderators=[GRACE],
    hand_queue=[KEN],
    knocks=[
        JoinRequestInfo(
            request_id="k-7f3a",
            user=ALAN,
            display_name="Alan Turing",
            verified={"email": "alan@example.org"},
            trust=["account 4 years old", "member of 3 rooms"],
            requested_at=NOW - 42,
            expires_at=NOW + 78,
        ),
        JoinRequestInfo(
            request_id="k-91c2",
            user=JOAN,
            display_name="Joan Clarke",
            requested_at=NOW - 7,
            expires_at=NOW + 113,
        ),
    ],
    levels=[
        p.MeterLevel(user=ADA, level=18, speaking=True),
        p.MeterLevel(user=GRACE, level=62, speaking=False),
    ],
    invites=[
        InviteInfo(token="inv-5kq2", room="book-club", role="speaker", created_by=OWNER, uses=1)
    ],
    bans=[p.BanInfo(user="guest-spam0001", reason="spam", by=OWNER)],
)

STATUS = p.StatusInfo(
    server="salond/0.1.0",
    pid=4242,
    started_at=NOW - 3723,
    uptime=3723,
    address="0.0.0.0:4433",
    fingerprint="sha256:AB:CD",
    connections=7,
    connections_total=19,
    rooms=2,
    scheduled_rooms=1,
    members=7,
    speakers=3,
    traffic=p.Traffic(
        packets_in=181_204, packets_out=512_877, bytes_in=17_336_004, bytes_out=49_112_760
    ),
    media_received=90_120,
    media_forwarded=270_360,
    drops={"muted": 312, "listener_queue_full": 4},
    plugin_errors={"webhooks": 1},
    admin_clients=1,
)

AUDIT = [
    p.AuditEntry(
        at=NOW - 60, room="book-club", actor=OWNER, action="mute", target=LINUS, detail={}
    ),
    p.AuditEntry(
        at=NOW - 300,
        room="book-club",
        actor=GRACE,
        action="ban",
        target="guest-spam0001",
        detail={"reason": "spam"},
    ),
    p.AuditEntry(
        at=NOW - 900,
        room="book-club",
        actor=OWNER,
        action="create_room",
        target=None,
        detail={"policy": "approval"},
    ),
]


class FixedAdminClient:
    """Answers like :class:`salon.daemon.admin.client.AdminClient`, always the same data."""

    def __init__(self) -> None:
        self.welcome = p.Welcome(protocol=p.ADMIN_PROTOCOL, server="salond/0.1.0", operator=OWNER)
        self.close_reason = ""
        self._closed = asyncio.Event()

    async def subscribe(self, levels_room: str | None = None, stats_interval: float = 1.0) -> None:
        return None

    async def events(self) -> Any:
        await self._closed.wait()
        return
        yield  # an async generator that yields nothing until closed

    async def close(self) -> None:
        self._closed.set()

    async def rooms(self, topic: str | None = None) -> list[RoomSummary]:
        return list(ROOMS)

    async def status(self) -> p.StatusInfo:
        return STATUS

    async def audit(self, limit: int = 100, room: str | None = None) -> list[p.AuditEntry]:
        return list(AUDIT)

    async def room(self, room: str) -> p.RoomDetail:
        assert room == "book-club"
        return DETAIL


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The screens read a clock that says NOW and format times in UTC."""
    frozen = types.SimpleNamespace(
        time=lambda: NOW, localtime=time.gmtime, gmtime=time.gmtime, strftime=time.strftime
    )
    for module in (room_screen, profile_widget, audit_widget):
        monkeypatch.setattr(module, "time", frozen)


def console_app() -> SalonAdminApp:
    async def connect(path: Path) -> Any:
        return FixedAdminClient()

    return SalonAdminApp(SOCKET, connect=connect)


def screen_text(app: SalonAdminApp) -> str:
    """The screen as a terminal shows it (the same rendering as an SVG screenshot)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    lines = console.export_text(styles=False).splitlines()
    return "\n".join(line.rstrip() for line in lines) + "\n"


async def settle(pilot: Pilot[None], check: Any, what: str) -> None:
    """Wait (bounded) until ``check()`` holds, then until the app has nothing left to do."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    while not check():
        assert loop.time() < deadline, f"timed out waiting for: {what}"
        await pilot.pause(0.05)
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def assert_snapshot(app: SalonAdminApp, name: str, tmp_path: Path) -> None:
    seen = screen_text(app)
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get(UPDATE_ENV):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(seen, encoding="utf-8")
        return
    assert path.exists(), f"no snapshot {path.name}: run with {UPDATE_ENV}=1 and review it"
    expected = path.read_text(encoding="utf-8")
    if seen != expected:
        (tmp_path / f"{name}.txt").write_text(seen, encoding="utf-8")
        app.save_screenshot(f"{name}.svg", str(tmp_path))
        import difflib

        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                seen.splitlines(keepends=True),
                f"snapshot {name}",
                "seen",
            )
        )
        raise AssertionError(f"{name} differs from its snapshot (seen in {tmp_path}):\n{diff}")


def rows(app: SalonAdminApp, table_id: str) -> int:
    return app.screen.query_one(f"#{table_id}", DataTable).row_count


async def test_snapshot_rooms_screen(frozen_clock: None, tmp_path: Path) -> None:
    app = console_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(
            pilot,
            lambda: rows(app, "rooms") == 3 and rows(app, "audit") == 3,
            "rooms, stats and audit shown",
        )
        assert_snapshot(app, "rooms", tmp_path)


async def test_snapshot_room_screen(frozen_clock: None, tmp_path: Path) -> None:
    app = console_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: rows(app, "rooms") == 3, "rooms shown")
        await pilot.press("enter")
        await settle(
            pilot,
            lambda: isinstance(app.screen, RoomScreen) and rows(app, "knocks") == 2,
            "the room's people and knocks",
        )
        assert_snapshot(app, "room", tmp_path)


async def test_snapshot_help_screen(frozen_clock: None, tmp_path: Path) -> None:
    app = console_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: rows(app, "rooms") == 3, "rooms shown")
        await pilot.press("enter")
        await settle(
            pilot,
            lambda: isinstance(app.screen, RoomScreen) and rows(app, "knocks") == 2,
            "room shown",
        )
        await pilot.press("question_mark")
        await settle(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        assert_snapshot(app, "help_room", tmp_path)
        await pilot.press("escape", "escape")
        await settle(pilot, lambda: rows(app, "rooms") == 3, "back to the rooms")
        await pilot.press("question_mark")
        await settle(pilot, lambda: isinstance(app.screen, HelpScreen), "help")
        assert_snapshot(app, "help_rooms", tmp_path)


async def test_snapshot_close_room_confirmation(frozen_clock: None, tmp_path: Path) -> None:
    app = console_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, lambda: rows(app, "rooms") == 3, "rooms shown")
        await pilot.press("c")
        await settle(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
        assert_snapshot(app, "confirm_close", tmp_path)
