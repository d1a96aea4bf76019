"""``salonctl store copy``: move an installation's data from one store to another, verified.

    salonctl store copy --from sqlite:/var/lib/salon/salon.db --to postgresql://salon@db/salon

Run it with salond stopped. The source is read in one transaction (a consistent snapshot) and
never written; it must be at this salond's schema version (start salond on it once to migrate an
older one). The target gets the current schema and must hold no salond data yet. Every table is
written in one transaction, and then read back from both sides and compared: the row count and
a SHA-256 over the rows in key order (:func:`~salon.daemon.store.rows.table_checksum`) must
match, table by table, or the copy is reported as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import StoreError
from .postgres import PostgresStore, is_postgres_url, redact_url
from .rows import TABLES, Table, table_checksum
from .sqlite import APPLICATION_ID, SCHEMA_VERSION, SqliteStore


@dataclass
class TableCopy:
    """What was copied of one table, and whether both sides agree."""

    table: str
    source_rows: int
    target_rows: int
    source_checksum: str
    target_checksum: str

    @property
    def ok(self) -> bool:
        return (self.source_rows, self.source_checksum) == (
            self.target_rows,
            self.target_checksum,
        )


class _Database:
    """A plain (blocking) connection to either kind of store, for copying rows."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.postgres = is_postgres_url(spec)
        self.label = redact_url(spec) if self.postgres else str(_sqlite_path(spec))
        self.connection: Any = None

    def new_store(self) -> SqliteStore | PostgresStore:
        if self.postgres:
            return PostgresStore(self.spec)
        return SqliteStore(_sqlite_path(self.spec))

    def open(self, *, read_only: bool) -> None:
        if self.postgres:
            import psycopg

            try:
                self.connection = psycopg.connect(self.spec, connect_timeout=10)
            except psycopg.Error as exc:
                raise StoreError(f"cannot connect to {self.label}: {_first_line(exc)}") from None
            if read_only:
                self.connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            return
        path = _sqlite_path(self.spec)
        if read_only:
            if not path.is_file():
                raise StoreError(f"{path}: no such database file")
            self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            version = self.connection.execute("PRAGMA user_version").fetchone()[0]
            application = self.connection.execute("PRAGMA application_id").fetchone()[0]
            if application != APPLICATION_ID:
                raise StoreError(f"{path} is not a salond database")
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{path} has schema version {version}, this salonctl copies version "
                    f"{SCHEMA_VERSION}: start this version of salond on it once to migrate it"
                )
            self.connection.execute("BEGIN")  # one snapshot of every table
        else:
            self.connection = sqlite3.connect(path)

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.close()
            self.connection = None

    def _name(self, column: str) -> str:
        return f'"{column}"' if self.postgres else column

    def rows(self, table: Table) -> list[Sequence[Any]]:
        """The table's rows in key order, compared by code point (a PostgreSQL collation may
        order text otherwise: sorting here gives both sides the same order)."""
        columns = ", ".join(self._name(c) for c in table.columns)
        cursor = self.connection.execute(f"SELECT {columns} FROM {table.name}")
        positions = [table.columns.index(c) for c in table.key]
        return sorted(cursor.fetchall(), key=lambda row: tuple(row[i] for i in positions))

    def count(self, table: Table) -> int:
        return int(self.connection.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0])

    def insert(self, table: Table, rows: list[Sequence[Any]]) -> None:
        columns = ", ".join(self._name(c) for c in table.columns)
        mark = "%s" if self.postgres else "?"
        marks = ", ".join(mark for _ in table.columns)
        sql = f"INSERT INTO {table.name} ({columns}) VALUES ({marks})"
        cursor = self.connection.cursor()
        cursor.executemany(sql, rows)
        if self.postgres and table.name == "audit_log" and rows:
            # New entries continue after the copied ids.
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence('audit_log', 'id'), "
                "(SELECT max(id) FROM audit_log))"
            )

    def commit(self) -> None:
        self.connection.commit()


def _sqlite_path(spec: str) -> Path:
    return Path(spec.removeprefix("sqlite:")).expanduser()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def copy_store(source: str, target: str) -> list[TableCopy]:
    """Copy every table from ``source`` to ``target`` (``sqlite:PATH`` or a PostgreSQL URL) and
    verify each; raises :class:`StoreError` when either cannot be used or the target has data."""
    src, dst = _Database(source), _Database(target)
    if src.label == dst.label:
        raise StoreError("--from and --to name the same database")
    asyncio.run(_prepare(dst))  # the current schema, created the way salond creates it
    try:
        src.open(read_only=True)
        dst.open(read_only=False)
        for table in TABLES:
            if dst.count(table):
                raise StoreError(
                    f"{dst.label} already holds salond data ({table.name} is not empty): "
                    "copy into an empty database"
                )
        report: list[TableCopy] = []
        copied: dict[str, tuple[int, str]] = {}
        for table in TABLES:
            rows = src.rows(table)
            dst.insert(table, rows)
            copied[table.name] = (len(rows), table_checksum(rows))
        dst.commit()
        for table in TABLES:
            rows = dst.rows(table)
            count, checksum = copied[table.name]
            report.append(TableCopy(table.name, count, len(rows), checksum, table_checksum(rows)))
        return report
    except sqlite3.Error as exc:
        raise StoreError(f"copying failed: {exc}") from None
    except StoreError:
        raise
    except Exception as exc:
        import psycopg

        if isinstance(exc, psycopg.Error):
            raise StoreError(f"copying failed: {_first_line(exc)}") from None
        raise
    finally:
        src.close()
        dst.close()


async def _prepare(database: _Database) -> None:
    store = database.new_store()
    await store.start()
    await store.stop()


def format_report(report: list[TableCopy]) -> Iterator[str]:
    for item in report:
        verdict = "ok" if item.ok else "MISMATCH"
        yield (
            f"{item.table:<14} {item.source_rows:>8} -> {item.target_rows:<8} rows  "
            f"sha256 {item.source_checksum[:16]} / {item.target_checksum[:16]}  {verdict}"
        )
