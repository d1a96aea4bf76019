"""What only the SQLite store has: WAL mode, migrating an old file, a lock held by another
process, and refusing damaged or foreign files without touching them. The suite both stores
pass is tests/test_store.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from salon.daemon.core import RoomSettings
from salon.daemon.store import SCHEMA_VERSION, AuditEntry, SqliteStore, StoreError
from salon.daemon.store.sqlite import APPLICATION_ID, MIGRATIONS

NOW = 1_700_000_000.0


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


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    running = SqliteStore(tmp_path / "salon.db")
    await running.start()
    yield running
    await running.stop()


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


# --------------------------------------------------------------------------- schema


async def test_a_new_database_gets_the_current_schema_in_wal_mode(store: SqliteStore) -> None:
    db = raw(store.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"rooms", "bans", "invites", "approvals", "subscriptions", "audit_log"} <= tables
    db.close()


async def test_an_older_database_is_migrated_in_place_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        f"{MIGRATIONS[0].sql}\n"
        f"PRAGMA application_id = {APPLICATION_ID};\n"
        f"PRAGMA user_version = {MIGRATIONS[0].version};"
    )
    db.execute(
        "INSERT INTO rooms VALUES ('r1', 'Old', 'alice', 1, '[]', 'open', 10, 0, 1, NULL, '',"
        " 'live', '[\"bob\"]', 1)"
    )
    db.execute("INSERT INTO bans VALUES ('r1', 'mallory', 'spam', NULL, 'alice')")
    db.close()
    store = SqliteStore(path)
    await store.start()
    [record] = (await store.load()).rooms
    assert (record.settings.title, record.settings.moderators) == ("Old", ("bob",))
    assert set(record.bans) == {"mallory"}
    await store.stop()
    db = raw(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "recordings" in tables  # added by migration 2
    db.close()


# --------------------------------------------------------------------------- locks


async def test_a_locked_database_fails_the_commit_and_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    store = SqliteStore(path, busy_timeout=0.05)
    await store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    store.add_audit(AuditEntry(at=NOW, room="r", actor="a", action="ban", target="b"))
    with pytest.raises(StoreError, match="locked"):
        await store.commit()
    blocker.execute("ROLLBACK")
    blocker.close()
    await store.commit()  # the writer kept the change and retried it
    assert [e.target for e in await store.audit_log()] == ["b"]
    assert store.failures >= 1
    await store.stop()


async def test_a_stalled_commit_does_not_hold_up_the_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    store = SqliteStore(path, busy_timeout=60)
    await store.start()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer thread will wait for this lock
    try:
        store.add_audit(AuditEntry(at=NOW, room="r", actor="a", action="ban", target="1"))
        commit = asyncio.ensure_future(store.commit())
        for _ in range(20):  # the event loop keeps running while the write is stuck
            await asyncio.sleep(0.005)
        assert not commit.done()
        # Writes still only queue, and return at once.
        store.add_audit(AuditEntry(at=NOW, room="r", actor="a", action="ban", target="2"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await asyncio.wait_for(commit, 30)
    await asyncio.wait_for(store.commit(), 30)
    assert sorted(e.target or "" for e in await store.audit_log()) == ["1", "2"]
    await store.stop()


# --------------------------------------------------------------------------- unusable files


async def refused(path: Path) -> str:
    """Start a store on ``path``; return the StoreError message after checking nothing changed."""
    before = path.read_bytes() if path.is_file() else None
    store = SqliteStore(path)
    with pytest.raises(StoreError) as info:
        await store.start()
    if before is not None:
        assert path.read_bytes() == before, "salond modified a file it refused"
    message = str(info.value)
    assert str(path) in message
    return message


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    message = await refused(path)
    assert "not a database" in message and "untouched" in message


async def test_a_damaged_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    store = SqliteStore(path)
    await store.start()
    for index in range(300):
        store.add_audit(AuditEntry(at=NOW, room="r", actor="a", action="ban", target="x" * 200))
        store.save_room(settings(f"r{index}"))
    await store.stop()
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    for offset in range(2 * 4096, len(data), 4096):  # scribble over every page but the first
        data[offset + 10 : offset + 200] = b"\xa5" * 190
    path.write_bytes(bytes(data))
    message = await refused(path)
    assert "damaged" in message or "malformed" in message


async def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.commit()
    db.close()
    assert "other program" in await refused(path)


async def test_a_database_from_a_newer_salond_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    store = SqliteStore(path)
    await store.start()
    await store.stop()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    assert "newer salond" in await refused(path)


async def test_a_directory_in_place_of_the_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    path.mkdir()
    assert "not a regular file" in await refused(path)
