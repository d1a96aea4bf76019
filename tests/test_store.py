"""The store suite, run against both SQL stores: SQLite (the default) and PostgreSQL (a throw-away
cluster the tests start themselves, tests/pg_cluster.py).

Round trips of every kind of state, the audit log's paging, the commit barrier and batching,
refused changes, schema versions and foreign databases; then what only a database across a
network has: outages, reconnection, bounded waits and passwords kept out of messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from salon.daemon.core import Ban, Invite, RoomSettings
from salon.daemon.recording.index import RecordingInfo
from salon.daemon.store import (
    SCHEMA_VERSION,
    AuditEntry,
    PostgresStore,
    SqliteStore,
    StoreError,
    StoreUnavailable,
    redact_url,
)
from salon.daemon.store import postgres as postgres_module
from salon.daemon.store import sqlite as sqlite_module
from salon.daemon.store.sqlite import Migration

NOW = 1_700_000_000.0

AnyStore = SqliteStore | PostgresStore


def settings(room: str = "r1", **changes: object) -> RoomSettings:
    values: dict[str, object] = {
        "room": room,
        "title": "Late jazz",
        "owner": "alice",
        "created_at": NOW,
        "topics": ("jazz", "music"),
        "policy": "approval",
        "max_speakers": 4,
        "mute_on_join": True,
        "persistent": True,
        "scheduled_for": None,
        "description": "Bring records — and «friends»",
        "state": "live",
        "moderators": ("bob", "carol"),
    }
    values.update(changes)
    return RoomSettings(**values)  # type: ignore[arg-type]


@dataclass
class Backend:
    """One database, and how a test opens stores on it and looks at it from outside."""

    name: str
    new_store: Callable[[], AnyStore]
    count: Callable[[str], int]
    "Rows of a table, read over a connection of its own (as another process would)."
    execute: Callable[[str], None]
    "Run SQL on the database directly, outside any store."
    hold_writer: Callable[[AnyStore], contextlib.AbstractContextManager[Any]]
    "Keep the store's writer from taking a batch while changes are queued."


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "salon.db"

        def sqlite_count(table: str) -> int:
            with contextlib.closing(sqlite3.connect(path)) as db:
                return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

        def sqlite_execute(sql: str) -> None:
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
                db.executescript(sql)

        yield Backend(
            "sqlite",
            lambda: SqliteStore(path),
            sqlite_count,
            sqlite_execute,
            lambda store: store._condition,  # type: ignore[union-attr]
        )
        return
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.database()
    import psycopg

    def pg_count(table: str) -> int:
        with psycopg.connect(url, connect_timeout=10) as db:
            row = db.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
            return int(row[0]) if row else 0

    def pg_execute(sql: str) -> None:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
            db.execute(sql.encode())

    # The writer task runs on the event loop: queuing without awaiting already holds it back.
    yield Backend(
        "postgresql",
        lambda: PostgresStore(url, commit_timeout=30),
        pg_count,
        pg_execute,
        lambda store: contextlib.nullcontext(),
    )


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[AnyStore]:
    running = backend.new_store()
    await running.start()
    yield running
    await running.stop()


# --------------------------------------------------------------------------- schema


async def test_reopening_keeps_the_data_and_runs_no_migration_twice(backend: Backend) -> None:
    for _ in range(3):
        store = backend.new_store()
        await store.start()
        store.add_audit(AuditEntry(at=NOW, room="r1", actor="a", action="ban", target="b"))
        await store.stop()
    store = backend.new_store()
    await store.start()
    assert len(await store.audit_log()) == 3
    assert store.stats()["schema_version"] == SCHEMA_VERSION
    await store.stop()


async def test_a_failing_migration_leaves_the_database_at_its_version(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.new_store()
    await store.start()
    store.save_room(settings())
    await store.stop()
    broken = Migration(
        SCHEMA_VERSION + 1, "broken", "CREATE TABLE extra (x TEXT);\nCREATE TABLE rooms (y TEXT);"
    )
    module = sqlite_module if backend.name == "sqlite" else postgres_module
    monkeypatch.setattr(module, "MIGRATIONS", (*module.MIGRATIONS, broken))
    with pytest.raises(StoreError, match="already exists") as info:
        await backend.new_store().start()
    assert backend.new_store().location in str(info.value)
    monkeypatch.undo()
    with pytest.raises(Exception, match="extra"):
        backend.count("extra")
    assert backend.count("rooms") == 1
    store = backend.new_store()
    await store.start()  # still at the current version: opens as before
    assert [r.settings.title for r in (await store.load()).rooms] == ["Late jazz"]
    await store.stop()


async def test_another_programs_database_is_refused_untouched(backend: Backend) -> None:
    backend.execute("CREATE TABLE customers (name TEXT); INSERT INTO customers VALUES ('x');")
    with pytest.raises(StoreError, match="other program"):
        await backend.new_store().start()
    assert backend.count("customers") == 1
    with pytest.raises(Exception, match="rooms"):
        backend.count("rooms")


async def test_a_database_from_a_newer_salond_is_refused(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    newer = Migration(SCHEMA_VERSION + 1, "future", "CREATE TABLE future (x TEXT);")
    module = sqlite_module if backend.name == "sqlite" else postgres_module
    monkeypatch.setattr(module, "MIGRATIONS", (*module.MIGRATIONS, newer))
    monkeypatch.setattr(module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    store = backend.new_store()
    await store.start()
    await store.stop()
    monkeypatch.undo()
    with pytest.raises(StoreError, match="newer salond"):
        await backend.new_store().start()


# --------------------------------------------------------------------------- round trips


async def test_everything_written_comes_back(backend: Backend) -> None:
    store = backend.new_store()
    await store.start()
    store.save_room(settings())
    store.save_room(settings("s1", state="scheduled", scheduled_for=NOW + 60, persistent=False))
    store.save_room(settings("gone"))
    store.save_room(settings(title="Late jazz, renamed"))
    store.save_room(settings())
    store.save_ban("r1", "troll", Ban(reason="spam", until=None, by="alice"))
    store.save_ban("r1", "brief", Ban(reason="", until=NOW + 5, by="bob"))
    store.save_ban("gone", "x", Ban(reason="", until=None, by="alice"))
    store.save_ban(None, "eve", Ban(reason="abuse", until=NOW + 9, by="operator:root"))
    invite = Invite("tok1", "r1", "speaker", "alice", NOW, NOW + 100, 3, 2, False)
    store.save_invite(invite)
    store.save_invite(Invite("tok2", "r1", "listener", "bob", NOW + 1, revoked=True))
    store.set_approved("r1", "dave", True)
    store.set_approved("r1", "erin", True)
    store.set_approved("r1", "erin", False)
    store.set_subscribed("s1", "fay", True)
    store.set_subscribed("s1", "fay", True)
    store.delete_room("gone")
    store.save_recording(RecordingInfo("rec1", "r1", "/r/rec1.opus", NOW, "alice"))
    store.save_recording(
        RecordingInfo("rec1", "r1", "/r/rec1.opus", NOW, "alice", NOW + 9, 8.5, ["bob"], "complete")
    )
    store.save_recording(RecordingInfo("rec2", "r1", "/r/rec2.opus", NOW + 10, "bob"))
    store.interrupt_recordings()
    await store.stop()

    store = backend.new_store()
    await store.start()
    state = await store.load()
    recordings = await store.recordings()
    assert await store.recording("rec1") == recordings[1]
    assert await store.recording("nope") is None
    await store.stop()
    rooms = {record.settings.room: record for record in state.rooms}
    assert set(rooms) == {"r1", "s1"}
    assert rooms["r1"].settings == settings()
    assert rooms["s1"].settings.scheduled_for == NOW + 60
    assert {u: asdict(b) for u, b in rooms["r1"].bans.items()} == {
        "troll": {"reason": "spam", "until": None, "by": "alice"},
        "brief": {"reason": "", "until": NOW + 5, "by": "bob"},
    }
    assert [asdict(i) for i in rooms["r1"].invites] == [
        asdict(invite),
        asdict(Invite("tok2", "r1", "listener", "bob", NOW + 1, revoked=True)),
    ]
    assert rooms["r1"].approved_users == ["dave"]
    assert rooms["s1"].subscribers == ["fay"]
    assert {u: asdict(b) for u, b in state.server_bans.items()} == {
        "eve": {"reason": "abuse", "until": NOW + 9, "by": "operator:root"}
    }
    assert [(r.id, r.status, r.speakers, r.duration) for r in recordings] == [
        ("rec2", "interrupted", [], 0.0),
        ("rec1", "complete", ["bob"], 8.5),
    ]


async def test_an_updated_invite_and_a_lifted_ban_replace_the_old_rows(store: AnyStore) -> None:
    store.save_room(settings())
    invite = Invite("tok1", "r1", "listener", "alice", NOW, max_uses=2)
    store.save_invite(invite)
    invite.uses = 2
    store.save_invite(invite)
    store.save_ban("r1", "bob", Ban(reason="", until=None, by="alice"))
    store.delete_ban("r1", "bob")
    store.save_ban(None, "eve", Ban(reason="", until=None, by="root"))
    store.delete_ban(None, "eve")
    await store.commit()
    state = await store.load()
    assert [i.uses for i in state.rooms[0].invites] == [2]
    assert state.rooms[0].bans == {} and state.server_bans == {}


async def test_the_audit_log_reads_newest_first_by_room_and_by_page(store: AnyStore) -> None:
    for index in range(10):
        store.add_audit(
            AuditEntry(
                at=NOW + index,
                room="" if index == 9 else f"r{index % 2}",
                actor="alice",
                action="ban",
                target=f"u{index}",
                detail={"reason": f"r{index}", "duration": None, "nested": [1, "ü"]},
            )
        )
    await store.commit()
    entries = await store.audit_log(limit=3)
    assert [e.target for e in entries] == ["u9", "u8", "u7"]
    assert entries[1].detail == {"reason": "r8", "duration": None, "nested": [1, "ü"]}
    assert entries[0].id > entries[1].id > entries[2].id
    assert [e.target for e in await store.audit_log(room="r1")] == ["u7", "u5", "u3", "u1"]
    assert [e.target for e in await store.audit_log(room="")] == ["u9"]
    page = await store.audit_log(limit=2, before=entries[2].id)
    assert [e.target for e in page] == ["u6", "u5"]
    assert await store.audit_log(limit=0) == []


# --------------------------------------------------------------------------- the barrier


async def test_commit_returns_once_another_process_could_read_it(
    store: AnyStore, backend: Backend
) -> None:
    for index in range(5):
        store.add_audit(AuditEntry(at=NOW, room="r", actor="a", action="mute", target=str(index)))
        await store.commit()
        assert backend.count("audit_log") == index + 1
    await store.commit()  # nothing queued: returns at once


async def test_queued_changes_are_committed_together(store: AnyStore, backend: Backend) -> None:
    with backend.hold_writer(store):
        for index in range(1000):
            store.add_audit(
                AuditEntry(at=NOW, room="r", actor="a", action="ban", target=str(index))
            )
    await asyncio.gather(*(store.commit() for _ in range(50)))
    assert store.largest_batch == 1000
    stats = store.stats()
    assert stats["statements"] == 1000 and stats["queued"] == 0
    assert len(await store.audit_log(limit=5000)) == 1000


async def test_stop_commits_what_is_queued(backend: Backend) -> None:
    store = backend.new_store()
    await store.start()
    store.save_room(settings())
    await store.stop()
    assert backend.count("rooms") == 1


async def test_a_change_the_database_refuses_fails_its_commit_only(store: AnyStore) -> None:
    store.save_room(settings(title=None))  # NOT NULL: a bug, never retried
    store.save_room(settings("r2"))
    with pytest.raises(StoreError, match=r"(?i)not.null"):
        await store.commit()
    store.save_room(settings("r3"))
    await store.commit()
    assert sorted(r.settings.room for r in (await store.load()).rooms) == ["r2", "r3"]


async def test_commit_on_a_store_that_is_not_running_fails(backend: Backend) -> None:
    store = backend.new_store()
    store.add_audit(AuditEntry(at=NOW, room="r", actor="a", action="ban"))
    with pytest.raises(StoreError, match="not running"):
        await store.commit()


# --------------------------------------------------------------------------- a database away


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_an_outage_refuses_commits_keeps_changes_and_reconnects(
    postgres_cluster: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL only: a local SQLite file cannot go away.
    cluster = postgres_cluster
    url = cluster.database()
    store = PostgresStore(url, commit_timeout=30)
    await store.start()
    store.save_ban("r1", "before", Ban(reason="", until=None, by="alice"))
    await store.commit()
    cluster.stop()
    try:
        store.save_ban("r1", "during", Ban(reason="", until=None, by="alice"))
        with pytest.raises(StoreUnavailable):
            await store.commit()
        assert not store.available and store.stats()["outages"] == 1
        with pytest.raises(StoreUnavailable):  # refused at once while it is away
            store.save_ban("r1", "again", Ban(reason="", until=None, by="alice"))
            await store.commit()
        with pytest.raises(StoreUnavailable):
            await store.audit_log()
    finally:
        cluster.start()
    await wait_until(lambda: store.available)
    await store.commit()
    # Nothing refused was lost: the changes waited in the queue and were written.
    assert len(await store.audit_log()) == 0 and store.stats()["reconnects"] == 1
    await store.stop()
    assert cluster.sql("SELECT count(*) FROM bans", database=url.rsplit("/", 1)[1]) == "[(3,)]"
    assert "the database is unavailable" in caplog.text
    assert "available again" in caplog.text


async def test_a_database_that_does_not_answer_fails_start_in_bounded_time() -> None:
    # A listener that accepts connections and never speaks: a hung server or a black hole.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = PostgresStore(
            f"postgresql://salon:s3cret-pw@127.0.0.1:{port}/salon", connect_timeout=1.0
        )
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        with pytest.raises(StoreError) as info:
            await asyncio.wait_for(store.start(), 20)
        ticker.cancel()
    assert ticks > 10  # the event loop went on while the connection hung
    assert "s3cret-pw" not in str(info.value)
    assert "salon:***@127.0.0.1" in str(info.value)


def test_passwords_are_redacted_from_connection_strings() -> None:
    assert redact_url("postgresql://salon:pa%40ss@db.example:5432/salon?sslmode=require") == (
        "postgresql://salon:***@db.example:5432/salon?sslmode=require"
    )
    assert redact_url("postgresql://db/salon?user=salon&password=hunter2&x=1") == (
        "postgresql://db/salon?user=salon&password=***&x=1"
    )
    assert redact_url("host=db password='a b' user=salon") == "host=db password=*** user=salon"
    assert redact_url("postgresql://salon@db/salon") == "postgresql://salon@db/salon"


def test_check_config_and_config_errors_never_show_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from salon.daemon.app import main

    config = tmp_path / "salond.toml"
    config.write_text('[store]\nurl = "postgresql://salon:hunter2@db.example/salon"\n')
    assert main(["--check-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "store: postgresql://salon:***@db.example/salon" in out and "hunter2" not in out
    config.write_text('[store]\nurl = "mysql://salon:hunter2@db.example/salon"\n')
    assert main(["--check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "store.url: expected a postgresql:// URL" in err and "hunter2" not in err
