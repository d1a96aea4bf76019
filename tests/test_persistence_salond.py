"""Persistence end to end: a real salond process is stopped, killed and restarted, on each store
(SQLite by default, PostgreSQL on a throw-away cluster the tests start).

What an operator or a host decided (rooms, schedules, bans, invites, approvals, moderators and
the audit log) must be there after a restart; an acknowledged moderation action must survive
``kill -9``; an unusable database must stop salond with a clear message and stay untouched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from salon.client.connection import RequestError, SalonClient
from salon.daemon.core import Identity, RoomSettings
from salon.daemon.store import DATABASE_NAME, SqliteStore
from salon.daemon.wire import messages as msg
from tests.conftest import SalondProcess, run_daemon, start_salond

pytestmark = pytest.mark.e2e

OPERATOR = Identity(user="operator:test", display_name="Operator", operator=True)
EVENT_WAIT = 60.0
"""Upper bound of a wait for an event: it only stops a hang (a loaded machine is slow)."""


def key(name: str) -> str:
    """A fixed guest key per name: the same user id before and after a restart."""
    return base64.b64encode(hashlib.sha256(f"persistence/{name}".encode()).digest()).decode()


class Clients:
    """Clients of one salond, closed together."""

    def __init__(self, host: str, port: int, fingerprint: str) -> None:
        self.host, self.port, self.fingerprint = host, port, fingerprint
        self.open: list[SalonClient] = []

    async def connect(self, name: str) -> SalonClient:
        client = await SalonClient.connect(
            self.host,
            self.port,
            display_name=name.title(),
            fingerprint=self.fingerprint,
            credentials={"guest_key": key(name)},
        )
        self.open.append(client)
        return client

    async def close(self) -> None:
        for client in self.open:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 3)


@contextlib.asynccontextmanager
async def clients_of(daemon: SalondProcess) -> AsyncIterator[Clients]:
    clients = Clients(daemon.host, daemon.port, daemon.fingerprint)
    try:
        yield clients
    finally:
        await clients.close()


def stop(daemon: SalondProcess) -> None:
    code = daemon.stop()
    assert code == 0, f"salond exited with {code}:\n{daemon.log_text()}"


@dataclass
class StoreUnderTest:
    """Which store salond uses (its ``[store]`` table) and how a test reads it directly."""

    toml: str
    url: str | None = None

    def read(self, state_dir: Path, query: str) -> list[tuple[Any, ...]]:
        """Read the database the way another process would (salond may be running)."""
        if self.url is not None:
            import psycopg

            with psycopg.connect(self.url, connect_timeout=10) as pg:
                return [tuple(row) for row in pg.execute(query.encode()).fetchall()]
        db = sqlite3.connect(f"file:{state_dir / DATABASE_NAME}?mode=ro", uri=True)
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()

    def config(self, path: Path, extra: str = "") -> list[str]:
        """salond's arguments for a configuration file with this store and ``extra``."""
        path.write_text(f"{extra}\n{self.toml}\n")
        return ["-c", str(path)]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> StoreUnderTest:
    if request.param == "sqlite":
        return StoreUnderTest("")
    url = request.getfixturevalue("postgres_url")
    return StoreUnderTest(f'[store]\nurl = "{url}"', url)


async def code_of(call: Any) -> str:
    with pytest.raises(RequestError) as info:
        await call
    return info.value.code


# --------------------------------------------------------------------------- restart


async def test_rooms_bans_invites_and_moderation_survive_a_restart(
    tmp_path: Path, backend: StoreUnderTest
) -> None:
    state = tmp_path / "state"
    starts_at = time.time() + 3600
    arguments = backend.config(tmp_path / "salond.toml")
    daemon = start_salond(state, *arguments)
    try:
        async with clients_of(daemon) as clients:
            owner = await clients.connect("owner")
            await owner.create_room(
                "Book club",
                room="club",
                policy="approval",
                persistent=True,
                topics=["books"],
                max_speakers=5,
                description="Monthly",
            )
            await owner.create_room("Launch", room="later", scheduled_for=starts_at)
            await owner.join("club")
            speaker_invite = (await owner.call("create_invite", role="speaker", max_uses=3))[
                "invite"
            ]["token"]
            spare = (await owner.call("create_invite"))["invite"]["token"]
            await owner.call("revoke_invite", token=spare)

            moderator = await clients.connect("moderator")
            assert (await moderator.join("club", invite=speaker_invite))["role"] == "speaker"
            await owner.call("promote", user=moderator.user)

            knocker = await clients.connect("knocker")
            assert (await knocker.join("club"))["status"] == "knocking"
            knock = await owner.wait_for_event(msg.Knock, timeout=EVENT_WAIT)
            await owner.call("approve_knock", request_id=knock.request.request_id)

            troll = await clients.connect("troll")
            await owner.call("ban", user=troll.user, reason="spam")
            await owner.call("ban", user="guest-brief", reason="cool down", duration=3600)
            await owner.call("update_room", title="Book club (monthly)")
            fan = await clients.connect("fan")
            await fan.call("subscribe_room", room="later")
            owner_user, moderator_user = owner.user, moderator.user
            # The members leave before the owner: an owner who leaves while a moderator is
            # present hands the room over (PROTOCOL.md, `leave`), and that would be stored too.
            for member in (knocker, moderator, owner):
                await member.leave()
    finally:
        stop(daemon)

    daemon = start_salond(state, *arguments)
    try:
        assert "restored 2 rooms" in daemon.log_text()
        [(moderators,)] = backend.read(state, "SELECT moderators FROM rooms WHERE id = 'club'")
        assert json.loads(moderators) == [moderator_user]
        async with clients_of(daemon) as clients:
            guest = await clients.connect("guest")
            rooms = {room["room"]: room for room in await guest.list_rooms()}
            assert set(rooms) == {"club", "later"}
            club = rooms["club"]
            assert (club["title"], club["policy"], club["owner"]) == (
                "Book club (monthly)",
                "approval",
                owner_user,
            )
            assert (club["topics"], club["max_speakers"], club["description"]) == (
                ["books"],
                5,
                "Monthly",
            )
            assert club["persistent"] and club["state"] == "live"
            assert rooms["later"]["state"] == "scheduled"
            assert rooms["later"]["scheduled_for"] == pytest.approx(starts_at)

            owner = await clients.connect("owner")
            assert (await owner.join("club"))["role"] == "owner"
            moderator = await clients.connect("moderator")
            assert (await moderator.join("club"))["role"] == "moderator"
            knocker = await clients.connect("knocker")  # approved before: no knock
            assert (await knocker.join("club"))["status"] == "joined"
            troll = await clients.connect("troll")
            assert await code_of(troll.join("club")) == "banned"

            invites = (await owner.call("list_invites"))["invites"]
            assert [(i["token"], i["uses"], i["max_uses"]) for i in invites] == [
                (speaker_invite, 1, 3)
            ]
            assert await code_of(guest.join("club", invite=spare)) == "invite_invalid"
            assert (await guest.join("club", invite=speaker_invite))["role"] == "speaker"

            # The subscription survived: starting the room tells the subscriber.
            fan = await clients.connect("fan")
            await owner.call("start_room", room="later")
            started = await fan.wait_for_event(msg.RoomStarted, timeout=EVENT_WAIT)
            assert started.room.room == "later" and started.room.state == "live"
    finally:
        stop(daemon)

    actions = [row[0] for row in backend.read(state, "SELECT action FROM audit_log ORDER BY id")]
    assert actions[:2] == ["create_room", "create_room"]
    for expected in ("create_invite", "revoke_invite", "promote", "approve_knock", "ban"):
        assert expected in actions
    assert actions.count("ban") == 2
    assert "start_room" in actions


# --------------------------------------------------------------------------- kill -9


async def test_no_acknowledged_moderation_action_is_lost_to_kill_9(
    tmp_path: Path, backend: StoreUnderTest
) -> None:
    state = tmp_path / "state"
    # The burst must not be throttled by the per-session message rate.
    arguments = backend.config(
        tmp_path / "salond.toml", "[limits]\nmessage_rate = 100000.0\nmessage_burst = 100000"
    )
    daemon = start_salond(state, *arguments)
    burst = 1500
    acked: set[str] = set()
    try:
        async with clients_of(daemon) as clients:
            owner = await clients.connect("owner")
            await owner.create_room("Busy", room="busy", persistent=True)
            await owner.join("busy")
            moderator = await clients.connect("moderator")
            await moderator.join("busy")
            await owner.call("promote", user=moderator.user)

            def send(host: SalonClient, user: str) -> asyncio.Future[Any]:
                future = asyncio.ensure_future(host.call("ban", user=user, reason="burst"))
                future.add_done_callback(
                    lambda f: acked.add(user) if not f.cancelled() and not f.exception() else None
                )
                return future

            # Two hosts ban concurrently (their commits are batched together).
            futures = [
                send(owner if index % 2 else moderator, f"guest-burst{index:05d}")
                for index in range(burst)
            ]
            deadline = time.monotonic() + 30
            while len(acked) < burst // 8 and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(10)
            await asyncio.sleep(0.3)  # acks already on the wire still count: they were sent
            claimed = set(acked)
            for future in futures:
                future.cancel()
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
    assert burst // 8 <= len(claimed) < burst, "the kill did not land in the middle of the burst"

    daemon = start_salond(state, *arguments)
    try:
        logged = {
            row[0]
            for row in backend.read(
                state, "SELECT target FROM audit_log WHERE action = 'ban' AND room = 'busy'"
            )
        }
        banned = {
            row[0] for row in backend.read(state, "SELECT \"user\" FROM bans WHERE room = 'busy'")
        }
        assert claimed <= logged, f"{len(claimed - logged)} acknowledged bans lost"
        assert claimed <= banned
        assert len(logged) >= len(claimed)
        async with clients_of(daemon) as clients:
            owner = await clients.connect("owner")
            assert (await owner.join("busy"))["role"] == "owner"
            # Every acknowledged ban is in force in the restored room.
            victim = sorted(claimed)[0]
            await owner.call("unban", user=victim)
    finally:
        stop(daemon)


# --------------------------------------------------------------------------- unusable database


def run_salond(state_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "salon.daemon.app",
        "--port",
        "0",
        "--state-dir",
        str(state_dir),
        "--log-level",
        "info",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("damage", ["garbage", "scribbled", "foreign", "directory"])
async def test_an_unusable_database_stops_salond_and_is_left_alone(
    tmp_path: Path, damage: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / DATABASE_NAME
    if damage == "garbage":
        path.write_bytes(b"\x00\x01 not a database at all " * 512)
    elif damage == "scribbled":
        store = SqliteStore(path)
        await store.start()
        for index in range(200):
            store.save_room(
                RoomSettings(room=f"r{index}", title="x" * 100, owner="a", created_at=0)
            )
        await store.stop()
        data = path.read_bytes()
        assert data.startswith(b"SQLite format 3\x00") and len(data) > 8192
        # Keep the header, scribble over the pages.
        path.write_bytes(data[:100] + b"\xff" * (len(data) - 100))
    elif damage == "foreign":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE invoices (total REAL)")
        db.commit()
        db.close()
    else:  # not readable as a file at all
        path.mkdir()
        (path / "keep").write_text("mine")
    before = path.read_bytes() if path.is_file() else (path / "keep").read_bytes()
    result = await asyncio.to_thread(run_salond, state)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "salond: " in result.stderr and str(path) in result.stderr, output
    assert "listening on" not in output
    assert (path.read_bytes() if path.is_file() else (path / "keep").read_bytes()) == before
    assert not (state / f"{DATABASE_NAME}-wal").exists() or damage == "foreign"


# --------------------------------------------------------------------------- in-process wiring


async def test_server_bans_and_reminders_come_back_with_the_daemon(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # An hour ahead: the start is still to come when the daemon comes back, however slow the
    # machine (the test drives the restored core's clock to the reminder instead of waiting).
    starts_at = time.time() + 3600
    async with run_daemon(state) as live:
        eve = await live.client("Eve", credentials={"guest_key": key("eve")})
        fan = await live.client("Fan", credentials={"guest_key": key("fan")})
        owner = await live.client("Owner", credentials={"guest_key": key("owner")})
        await owner.create_room("Soon", room="soon", scheduled_for=starts_at)
        await fan.call("subscribe_room", room="soon")
        daemon = live.daemon
        # The admin API's path: the core acts, outputs are delivered, the barrier is awaited.
        daemon.core.ban_user_globally(OPERATOR, eve.user, time.time(), reason="abuse")
        daemon.pipeline.pump()
        for barrier in daemon.pipeline.commit_barriers:
            await barrier()
        eve_user = eve.user
        entries = await daemon.store.audit_log(room="")
        assert [(e.action, e.actor, e.target) for e in entries] == [
            ("server_ban", "operator:test", eve_user)
        ]

    async with run_daemon(state) as live:
        assert set(live.daemon.core.active_server_bans(time.time())) == {eve_user}
        eve = await live.client("Eve", credentials={"guest_key": key("eve")})
        assert await code_of(eve.call("create_room", title="Mine")) == "banned"
        fan = await live.client("Fan", credentials={"guest_key": key("fan")})
        # The reminder timer of the restored scheduled room is the new daemon's next timer,
        # armed on its event loop, and when its time comes the subscriber is reminded.
        core, pipeline = live.daemon.core, live.daemon.pipeline
        remind_at = starts_at - core.limits.reminder_lead
        assert core.get_timer() == pytest.approx(remind_at, abs=1e-3)
        assert pipeline._core_timer_at == core.get_timer()
        core.handle_timer(remind_at)
        pipeline.pump()
        reminder = await fan.wait_for_event(msg.RoomReminder, timeout=EVENT_WAIT)
        assert (reminder.room, reminder.title) == ("soon", "Soon")
