"""docs/postgresql.md holds to the code: its least-privilege role is enough for salond and allows
nothing else, and its pg_dump / pg_restore commands bring an installation back whole."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from salon.daemon.core import Ban, RoomSettings
from salon.daemon.store import AuditEntry, PostgresStore

DOC = Path(__file__).resolve().parent.parent / "docs" / "postgresql.md"


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def console_commands(program: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return [line[2:] for line in re.findall(r"^\$ .*$", text, re.M) if line[2:].startswith(program)]


def refused(url: str, statement: str) -> bool:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
        try:
            db.execute(statement.encode())
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


async def test_the_documented_role_runs_salond_and_backups_restore_it(
    postgres_cluster: Any, tmp_path: Path
) -> None:
    cluster = postgres_cluster
    cluster.sql("DROP DATABASE IF EXISTS salon")
    cluster.sql("CREATE DATABASE salon")
    role_block = sql_blocks()[0]
    assert "CREATE ROLE salon " in role_block
    for statement in role_block.split(";"):
        if statement.strip():
            cluster.sql(statement, database="salon")
    url = cluster.url("salon", user="salon")

    store = PostgresStore(url)
    await store.start()  # creates and migrates the schema as the role
    store.save_room(RoomSettings(room="r1", title="Mine", owner="alice", created_at=1.0))
    store.save_ban("r1", "troll", Ban(reason="spam", until=None, by="alice"))
    store.add_audit(AuditEntry(at=1.0, room="r1", actor="alice", action="ban", target="troll"))
    await store.commit()
    await store.stop()
    where = "SELECT table_schema FROM information_schema.tables WHERE table_name = 'bans'"
    assert cluster.sql(where, database="salon") == "[('salon',)]"
    # Nothing beyond its own schema.
    assert refused(url, "CREATE DATABASE other")
    assert refused(url, "CREATE ROLE other")
    assert refused(url, "CREATE TABLE public.mine (x int)")
    assert refused(url, "SELECT * FROM pg_authid")

    # The documented backup and restore, the same commands with this cluster's address.
    [dump_command] = console_commands("pg_dump")
    [restore_command] = console_commands("pg_restore")
    dump = tmp_path / "salon.dump"
    address = ["--host=127.0.0.1", f"--port={cluster.port}", "--username=salon_test"]
    dump_args = dump_command.replace("salon-$(date +%F).dump", str(dump)).split()
    subprocess.run([cluster.tool(dump_args[0]), *address, *dump_args[1:]], check=True, timeout=60)
    cluster.sql("DROP DATABASE salon")
    restore_args = restore_command.replace("salon-2026-12-03.dump", str(dump)).split()
    subprocess.run(
        [cluster.tool(restore_args[0]), *address, *restore_args[1:]], check=True, timeout=60
    )
    store = PostgresStore(url)
    await store.start()
    state = await store.load()
    audit = await store.audit_log()
    store.add_audit(AuditEntry(at=2.0, room="r1", actor="alice", action="unban", target="troll"))
    await store.commit()
    await store.stop()
    assert [r.settings.title for r in state.rooms] == ["Mine"]
    assert set(state.rooms[0].bans) == {"troll"}
    assert [(e.id, e.target) for e in audit] == [(1, "troll")]
