"""``salonctl store copy``: an SQLite installation moved to PostgreSQL (and back), verified by row
counts and checksums per table; a copy that does not match, or a target with data, fails."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from salon.daemon.admin import ctl
from salon.daemon.core import Ban, Invite, RoomSettings
from salon.daemon.recording.index import RecordingInfo
from salon.daemon.store import AuditEntry, PostgresStore, SqliteStore
from salon.daemon.store import copy as copy_module
from salon.daemon.store.rows import TABLES

NOW = 1_700_000_000.0


async def fill(store: SqliteStore) -> None:
    await store.start()
    for index, room in enumerate(["zeta", "alpha", "Éclair", "b-2"]):
        store.save_room(
            RoomSettings(
                room=room,
                title=f"Room «{room}»",
                owner="alice",
                created_at=NOW + index,
                topics=("jazz",),
                persistent=True,
                moderators=("bob",),
            )
        )
        store.save_ban(room, "zed", Ban(reason="spam ü", until=None, by="alice"))
        store.save_ban(room, "Ann", Ban(reason="", until=NOW + 60.25, by="bob"))
        store.save_invite(Invite(f"tok{index}", room, "speaker", "alice", NOW, None, 3, 1))
        store.set_approved(room, "dave", True)
        store.set_subscribed(room, "fay", True)
    store.save_ban(None, "eve", Ban(reason="abuse", until=None, by="operator:root"))
    for index in range(25):
        store.add_audit(
            AuditEntry(at=NOW + index, room="alpha", actor="alice", action="ban", target=str(index))
        )
    store.save_recording(
        RecordingInfo("rec1", "alpha", "/r/1.opus", NOW, "alice", NOW + 5, 4.5, ["bob"], "complete")
    )
    await store.stop()


async def snapshot(store: SqliteStore | PostgresStore) -> tuple[Any, ...]:
    await store.start()
    state = await store.load()
    audit = await store.audit_log(limit=1000)
    recordings = await store.recordings()
    await store.stop()
    return asdict(state), [msgspec.to_builtins(e) for e in audit], recordings


async def test_an_sqlite_installation_moves_to_postgresql_and_back(
    tmp_path: Path, postgres_url: str
) -> None:
    source = tmp_path / "salon.db"
    await fill(SqliteStore(source))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "salon.daemon.admin.ctl",
            "store",
            "copy",
            "--from",
            f"sqlite:{source}",
            "--to",
            postgres_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [table.name for table in TABLES]
    assert all(line.endswith(" ok") for line in lines)
    assert "audit_log            25 -> 25" in done.stdout
    assert await snapshot(PostgresStore(postgres_url)) == await snapshot(SqliteStore(source))

    # New audit entries continue after the copied ids.
    store = PostgresStore(postgres_url)
    await store.start()
    store.add_audit(AuditEntry(at=NOW, room="", actor="root", action="server_ban"))
    await store.commit()
    assert (await store.audit_log(limit=1))[0].id == 26
    await store.stop()

    back = tmp_path / "back.db"
    assert (
        await asyncio.to_thread(
            ctl.main, ["store", "copy", "--from", postgres_url, "--to", f"sqlite:{back}"]
        )
        == 0
    )
    state, audit, _ = await snapshot(SqliteStore(back))
    assert len(state["rooms"]) == 4 and len(audit) == 26


async def test_a_copy_that_does_not_match_or_a_target_with_data_fails(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    source = tmp_path / "salon.db"
    await fill(SqliteStore(source))
    real_insert = copy_module._Database.insert

    def lossy_insert(self: Any, table: Any, rows: list[Any]) -> None:
        real_insert(self, table, rows[:-1] if table.name == "bans" else rows)

    monkeypatch.setattr(copy_module._Database, "insert", lossy_insert)
    assert (
        await asyncio.to_thread(
            ctl.main, ["store", "copy", "--from", f"sqlite:{source}", "--to", postgres_url]
        )
        == 1
    )
    out, err = capsys.readouterr()
    assert "bans" in out and "MISMATCH" in out and "does not match" in err
    monkeypatch.undo()
    assert (
        await asyncio.to_thread(
            ctl.main, ["store", "copy", "--from", f"sqlite:{source}", "--to", postgres_url]
        )
        == 1
    )
    assert "already holds salond data" in capsys.readouterr().err
