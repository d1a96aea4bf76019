"""SqliteStore: schema and migrations, round trips, the commit barrier, batching, failures, and
refusing damaged or foreign files without touching them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import pytest

from salon.daemon.core import Ban, Invite, RoomSettings
from salon.daemon.store import SCHEMA_VERSION, AuditEntry, SqliteStore, StoreError
from salon.daemon.store import sqlite as sqlite_module
from salon.daemon.store.sqlite import APPLICATION_ID, MIGRATIONS, Migration

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


async def test_reopening_keeps_the_data_and_runs_no_migration_twice(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    for _ in range(3):
        store = SqliteStore(path)
        await store.start()
        store.add_audit(AuditEntry(at=NOW, room="r1", actor="a", action="ban", target="b"))
        await store.stop()
    store = SqliteStore(path)
    await store.start()
    assert len(await store.audit_log()) == 3
    await store.stop()


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


async def test_a_failing_migration_leaves_the_database_at_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "salon.db"
    store = SqliteStore(path)
    await store.start()
    store.save_room(settings())
    await store.stop()
    broken = Migration(
        SCHEMA_VERSION + 1, "broken", "CREATE TABLE extra (x);\nCREATE TABLE rooms (y);"
    )
    monkeypatch.setattr(sqlite_module, "MIGRATIONS", (*MIGRATIONS, broken))
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="already exists") as info:
        await store.start()
    assert str(path) in str(info.value)
    db = raw(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert not db.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall()
    assert db.execute("SELECT title FROM rooms").fetchall() == [("Late jazz",)]
    db.close()


# --------------------------------------------------------------------------- round trips


async def test_everything_written_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "salon.db"
    store = SqliteStore(path)
    await store.start()
    store.save_room(settings())
    store.save_room(settings("s1", state="scheduled", scheduled_for=NOW + 60, persistent=False))
    store.save_room(settings("gone"))
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
    await store.stop()

    store = SqliteStore(path)
    await store.start()
    state = await store.load()
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


async def test_an_updated_invite_and_a_lifted_ban_replace_the_old_rows(store: SqliteStore) -> None:
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


async def test_the_audit_log_reads_newest_first_by_room_and_by_page(store: SqliteStore) -> None:
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


async def test_commit_returns_once_another_process_could_read_it(store: SqliteStore) -> None:
    db = raw(store.path)
    for index in range(5):
        store.add_audit(AuditEntry(at=NOW, room="r", actor="a", action="mute", target=str(index)))
        await store.commit()
        assert db.execute("SELECT count(*) FROM audit_log").fetchone()[0] == index + 1
    await store.commit()  # nothing queued: returns at once
    db.close()


async def test_queued_changes_are_committed_together(store: SqliteStore) -> None:
    # Hold the writer back while 1000 changes are queued: it then takes them as one batch.
    with store._condition:
        for index in range(1000):
            store.add_audit(
                AuditEntry(at=NOW, room="r", actor="a", action="ban", target=str(index))
            )
    await asyncio.gather(*(store.commit() for _ in range(50)))
    assert store.largest_batch == 1000
    stats = store.stats()
    assert stats["statements"] == 1000 and stats["queued"] == 0
    assert len(await store.audit_log(limit=5000)) == 1000


async def test_stop_commits_what_is_queued(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "salon.db")
    await store.start()
    store.save_room(settings())
    await store.stop()
    db = raw(tmp_path / "salon.db")
    assert db.execute("SELECT title FROM rooms").fetchall() == [("Late jazz",)]
    db.close()


async def test_a_change_the_database_refuses_fails_its_commit_only(store: SqliteStore) -> None:
    store.save_room(settings(title=None))  # NOT NULL: a bug, never retried
    store.save_room(settings("r2"))
    with pytest.raises(StoreError, match="NOT NULL"):
        await store.commit()
    store.save_room(settings("r3"))
    await store.commit()
    assert sorted(r.settings.room for r in (await store.load()).rooms) == ["r2", "r3"]


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


async def test_commit_on_a_store_that_is_not_running_fails(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "salon.db")
    store.add_audit(AuditEntry(at=NOW, room="r", actor="a", action="ban"))
    with pytest.raises(StoreError, match="not running"):
        await store.commit()


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
