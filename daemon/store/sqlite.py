"""The embedded default store: one SQLite file, ``salon.db`` in the state directory.

Writes never touch the disk on the event loop. Each write method appends a statement to a queue
and returns; a dedicated writer thread takes everything queued, runs it in one transaction and
commits (group commit: while one commit is being synced, the next batch accumulates). The
database is in WAL mode with ``synchronous=FULL``, so a committed transaction survives a crash
of the process or of the machine. :meth:`SqliteStore.commit` is the barrier: it waits until the
writer has committed every statement queued before the call.

The schema is versioned with ``PRAGMA user_version`` and upgraded at start by :data:`MIGRATIONS`.
A file that is not a salond database, is damaged, or comes from a newer salond stops the start
with a :class:`StoreError` naming the file; it is never replaced or modified.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salon.daemon.core import Ban, Invite, RoomSettings

from .base import AuditEntry, StoredState, StoreError
from .rows import (
    AUDIT_COLUMNS,
    INVITE_COLUMNS,
    RECORDING_COLUMNS,
    ROOM_COLUMNS,
    SERVER_WIDE,
    audit_entries,
    audit_row,
    ban_row,
    build_state,
    invite_row,
    recording_infos,
    recording_row,
    room_row,
    where,
)

if TYPE_CHECKING:
    from salon.daemon.recording.index import RecordingInfo

log = logging.getLogger("salon.store")

DATABASE_NAME = "salon.db"
"""The database file's name in ``server.state_dir``."""

APPLICATION_ID = 0x53414C4E
"""``PRAGMA application_id`` of a salond database ("SALN"), to recognise foreign files."""

RETRY_DELAYS = (0.05, 0.2, 1.0, 5.0)
"""Seconds the writer waits before retrying a failed commit (the last one repeats)."""
RETRIES_AT_STOP = 3
"""Failed commits retried while stopping before the queued changes are given up (and logged)."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema: applied once, in a transaction, to go to ``version``."""

    version: int
    summary: str
    sql: str


SCHEMA_1 = """
CREATE TABLE rooms (
    id            TEXT PRIMARY KEY,
    title         TEXT NOT NULL,
    owner         TEXT NOT NULL,
    created_at    REAL NOT NULL,
    topics        TEXT NOT NULL,      -- JSON array of strings
    policy        TEXT NOT NULL,      -- open | approval | invite
    max_speakers  INTEGER NOT NULL,
    mute_on_join  INTEGER NOT NULL,
    persistent    INTEGER NOT NULL,
    scheduled_for REAL,
    description   TEXT NOT NULL,
    state         TEXT NOT NULL,      -- scheduled | live
    moderators    TEXT NOT NULL,      -- JSON array of user ids, earliest promoted first
    saved_at      REAL NOT NULL
);
CREATE TABLE bans (
    room      TEXT NOT NULL,          -- '' for a server-wide ban
    user      TEXT NOT NULL,
    reason    TEXT NOT NULL,
    until     REAL,                   -- NULL: for good
    banned_by TEXT NOT NULL,
    PRIMARY KEY (room, user)
);
CREATE TABLE invites (
    room       TEXT NOT NULL,
    token      TEXT NOT NULL,
    role       TEXT NOT NULL,         -- listener | speaker
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    max_uses   INTEGER,
    uses       INTEGER NOT NULL,
    revoked    INTEGER NOT NULL,
    PRIMARY KEY (room, token)
);
CREATE TABLE approvals (
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (room, user)
);
CREATE TABLE subscriptions (
    room TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (room, user)
);
CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     REAL NOT NULL,
    room   TEXT NOT NULL,             -- '' for a server-wide action
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT NOT NULL              -- JSON object
);
CREATE INDEX audit_log_room ON audit_log (room, id);
"""

SCHEMA_2 = """
CREATE TABLE recordings (
    id         TEXT PRIMARY KEY,
    room       TEXT NOT NULL,
    path       TEXT NOT NULL,         -- the Ogg Opus file
    started_at REAL NOT NULL,
    started_by TEXT NOT NULL,
    ended_at   REAL,                  -- NULL while it runs
    duration   REAL NOT NULL,         -- seconds of audio in the file
    speakers   TEXT NOT NULL,         -- JSON array of the user ids heard in it
    status     TEXT NOT NULL,         -- recording | complete | failed | interrupted
    bytes      INTEGER NOT NULL
);
CREATE INDEX recordings_room ON recordings (room, started_at);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "rooms, bans, invites, approvals, subscriptions, audit log", SCHEMA_1),
    Migration(2, "recordings index", SCHEMA_2),
    # Never change a migration that has been released: databases in the field already ran
    # it. Add a new one instead.
)

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The schema version this salond writes."""

_SAVE_ROOM = (
    "INSERT OR REPLACE INTO rooms (id, title, owner, created_at, topics, policy, max_speakers,"
    " mute_on_join, persistent, scheduled_for, description, state, moderators, saved_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE_ROOM = (
    "DELETE FROM rooms WHERE id = ?",
    "DELETE FROM bans WHERE room = ?",
    "DELETE FROM invites WHERE room = ?",
    "DELETE FROM approvals WHERE room = ?",
    "DELETE FROM subscriptions WHERE room = ?",
)
_SAVE_BAN = (
    "INSERT OR REPLACE INTO bans (room, user, reason, until, banned_by) VALUES (?, ?, ?, ?, ?)"
)
_DELETE_BAN = "DELETE FROM bans WHERE room = ? AND user = ?"
_SAVE_INVITE = (
    "INSERT OR REPLACE INTO invites (room, token, role, created_by, created_at, expires_at,"
    " max_uses, uses, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ADD_APPROVAL = "INSERT OR IGNORE INTO approvals (room, user) VALUES (?, ?)"
_DELETE_APPROVAL = "DELETE FROM approvals WHERE room = ? AND user = ?"
_ADD_SUBSCRIPTION = "INSERT OR IGNORE INTO subscriptions (room, user) VALUES (?, ?)"
_DELETE_SUBSCRIPTION = "DELETE FROM subscriptions WHERE room = ? AND user = ?"
_SAVE_RECORDING = (
    "INSERT OR REPLACE INTO recordings (id, room, path, started_at, started_by, ended_at,"
    " duration, speakers, status, bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INTERRUPT_RECORDINGS = "UPDATE recordings SET status = 'interrupted' WHERE status = 'recording'"
_ADD_AUDIT = (
    "INSERT INTO audit_log (at, room, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)"
)

Statement = tuple[str, tuple[Any, ...]]


def _advice(path: Path) -> str:
    return (
        f"salond left {path} untouched: restore it from a backup, or move it (with any "
        f"{path.name}-wal file) away to start with an empty database"
    )


def open_database(path: Path, busy_timeout: float = 5.0) -> sqlite3.Connection:
    """Open ``path`` for writing (creating it if absent), check it, and migrate its schema.

    Raises :class:`StoreError` naming the file when it cannot be opened, is damaged, is not a
    salond database, or was written by a newer salond. Nothing is written to such a file.
    """
    if path.exists() and not path.is_file():
        raise StoreError(f"cannot use the database {path}: it is not a regular file")
    try:
        # Created private: SQLite gives the -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from exc
    try:
        connection = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from exc
    try:
        _check(connection, path)
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot use the database {path}: WAL mode refused ({mode})")
        connection.execute("PRAGMA synchronous = FULL")
        _migrate(connection, path)
    except sqlite3.Error as exc:
        connection.close()
        raise StoreError(f"cannot use the database {path}: {exc}. {_advice(path)}") from exc
    except StoreError:
        connection.close()
        raise
    return connection


def _check(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged, foreign or newer database before anything is written to it."""
    # Reading the header first: "file is not a database" surfaces here, not at a write.
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    application = connection.execute("PRAGMA application_id").fetchone()[0]
    problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)").fetchall()]
    if problems != ["ok"]:
        found = "; ".join(str(p) for p in problems)
        raise StoreError(f"the database {path} is damaged ({found}). {_advice(path)}")
    if version == 0:
        tables = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
        ).fetchone()[0]
        if tables:
            raise StoreError(
                f"{path} is an SQLite database of some other program (it has tables but no "
                f"salond schema version). {_advice(path)}"
            )
        return
    if application != APPLICATION_ID:
        raise StoreError(f"{path} is not a salond database. {_advice(path)}")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database {path} has schema version {version}, written by a newer salond "
            f"(this one knows up to {SCHEMA_VERSION}); run that version, or restore a backup"
        )


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        log.info("%s: schema %d -> %d (%s)", path, version, migration.version, migration.summary)
        # executescript runs in autocommit mode: the explicit transaction makes the step atomic,
        # user_version included.
        connection.executescript(
            "BEGIN IMMEDIATE;\n"
            f"{migration.sql}\n"
            f"PRAGMA application_id = {APPLICATION_ID};\n"
            f"PRAGMA user_version = {migration.version};\n"
            "COMMIT;"
        )
        version = migration.version


class SqliteStore:
    """The :class:`~salon.daemon.store.base.Store` of salond, in one SQLite file."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        """Seconds a write waits for a lock held by another connection before it fails."""
        self.location = str(self.path)
        self.available = True
        """A local file is always there to write to (a failing write is retried)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._condition = threading.Condition()
        self._pending: list[Statement] = []
        self._closing = False
        self._queued = 0
        """Statements queued since start (read and written under ``_condition``)."""
        self._committed = 0
        """Statements known durable (event-loop side)."""
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self.commits = 0
        """Transactions committed by the writer."""
        self.statements = 0
        """Statements committed."""
        self.largest_batch = 0
        """Most statements committed in one transaction."""
        self.commit_seconds = 0.0
        """Time the writer spent executing and syncing transactions."""
        self.failures = 0
        """Transactions that failed (and were retried)."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open, check and migrate the database, and start the writer thread."""
        self._loop = asyncio.get_running_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._closing = False
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="salon-store-writer", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise
        try:
            self._reader = await asyncio.to_thread(self._open_reader)
        except BaseException:
            await self.stop()
            raise

    def _open_reader(self) -> sqlite3.Connection:
        try:
            reader = sqlite3.connect(
                f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the database {self.path}: {exc}") from exc
        return reader

    async def stop(self) -> None:
        """Commit everything queued, stop the writer and close the database."""
        thread = self._thread
        if thread is not None:
            with self._condition:
                self._closing = True
                self._condition.notify()
            await asyncio.to_thread(thread.join)
            self._thread = None
        self._release_waiters()
        reader, self._reader = self._reader, None
        if reader is not None:
            with self._reader_lock:
                reader.close()

    # ------------------------------------------------------------------ writes (event loop)

    def _put(self, *statements: Statement) -> None:
        with self._condition:
            self._pending.extend(statements)
            self._queued += len(statements)
            self._condition.notify()

    def save_room(self, settings: RoomSettings) -> None:
        self._put((_SAVE_ROOM, room_row(settings)))

    def delete_room(self, room: str) -> None:
        self._put(*((sql, (room,)) for sql in _DELETE_ROOM))

    def save_ban(self, room: str | None, user: str, ban: Ban) -> None:
        self._put((_SAVE_BAN, ban_row(room, user, ban)))

    def delete_ban(self, room: str | None, user: str) -> None:
        self._put((_DELETE_BAN, (SERVER_WIDE if room is None else room, user)))

    def save_invite(self, invite: Invite) -> None:
        self._put((_SAVE_INVITE, invite_row(invite)))

    def set_approved(self, room: str, user: str, approved: bool) -> None:
        self._put((_ADD_APPROVAL if approved else _DELETE_APPROVAL, (room, user)))

    def set_subscribed(self, room: str, user: str, subscribed: bool) -> None:
        self._put((_ADD_SUBSCRIPTION if subscribed else _DELETE_SUBSCRIPTION, (room, user)))

    def add_audit(self, entry: AuditEntry) -> None:
        self._put((_ADD_AUDIT, audit_row(entry)))

    def save_recording(self, info: RecordingInfo) -> None:
        """Create or replace a recording's index entry (any thread may call it)."""
        self._put((_SAVE_RECORDING, recording_row(info)))

    def interrupt_recordings(self) -> None:
        """Mark the recordings a previous salond left running as ``interrupted``."""
        self._put((_INTERRUPT_RECORDINGS, ()))

    # ------------------------------------------------------------------ the barrier

    async def commit(self) -> None:
        """Return once every statement queued before this call is committed to disk."""
        with self._condition:
            target = self._queued
        if target <= self._committed:
            return
        if self._thread is None or self._loop is None:
            raise StoreError(f"the store {self.path} is not running")
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((target, future))
        await future

    def _on_committed(self, upto: int, dropped: str | None = None) -> None:
        """Event loop side: statements up to ``upto`` are committed; wake their waiters.

        ``dropped`` says why some statements of the batch were refused by the database (a bug,
        never a transient condition): those waiting for them get a StoreError."""
        self._committed = max(self._committed, upto)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._committed:
            _, future = waiters.popleft()
            if future.done():
                continue
            if dropped is None:
                future.set_result(None)
            else:
                future.set_exception(StoreError(dropped))

    def _on_failed(self, message: str) -> None:
        """Event loop side: a commit failed; everyone waiting is told (the writer retries)."""
        waiters, self._waiters = self._waiters, collections.deque()
        for _, future in waiters:
            if not future.done():
                future.set_exception(StoreError(message))

    def _release_waiters(self) -> None:
        with self._condition:
            lost = len(self._pending)
        if lost:
            self._on_failed(f"{lost} changes could not be written to {self.path}")
        else:
            self._on_committed(self._queued)

    def _notify(self, callback: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    # ------------------------------------------------------------------ the writer thread

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            connection = open_database(self.path, self.busy_timeout)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        failures = 0
        try:
            while True:
                with self._condition:
                    while not self._pending and not self._closing:
                        self._condition.wait()
                    if not self._pending:
                        break
                    batch, self._pending = self._pending, []
                    upto = self._queued
                    closing = self._closing
                written, dropped = self._write(connection, batch)
                if written:
                    failures = 0
                    self._notify(self._on_committed, upto, dropped)
                    continue
                failures += 1
                with self._condition:
                    self._pending[:0] = batch
                if closing and failures > RETRIES_AT_STOP:
                    log.error(
                        "%s: giving up: %d changes were not saved", self.path, len(self._pending)
                    )
                    break
                time.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS)) - 1])
        finally:
            try:
                connection.close()
            except sqlite3.Error:
                log.exception("%s: closing the database failed", self.path)

    def _write(
        self, connection: sqlite3.Connection, batch: list[Statement]
    ) -> tuple[bool, str | None]:
        """Run ``batch`` in one transaction; (committed?, why statements were dropped).

        A statement the database refuses for what it is (a constraint, a bad value: a bug that
        retrying cannot fix) is dropped and logged, and the rest is committed. Anything else (a
        full disk, an I/O error, a lock) fails the whole batch, which is kept and retried.
        """
        started = time.perf_counter()
        dropped: list[str] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for sql, parameters in batch:
                try:
                    connection.execute(sql, parameters)
                except (
                    sqlite3.IntegrityError,
                    sqlite3.InterfaceError,
                    sqlite3.ProgrammingError,
                ) as exc:
                    # Only this statement was undone; the transaction goes on.
                    log.error("%s: dropped a change (%s): %s", self.path, exc, sql.split("(")[0])
                    dropped.append(str(exc))
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            self.failures += 1
            try:
                connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            message = f"writing to the database {self.path} failed: {exc}"
            log.error("%s (%d changes kept in memory, retrying)", message, len(batch))
            self._notify(self._on_failed, message)
            return False, None
        self.commit_seconds += time.perf_counter() - started
        self.commits += 1
        self.statements += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        if dropped:
            self.failures += 1
            return True, f"{self.path}: {len(dropped)} changes were refused: {dropped[0]}"
        return True, None

    def stats(self) -> dict[str, Any]:
        """Counters of the writer, for the admin API and metrics."""
        with self._condition:
            queued = len(self._pending)
        return {
            "backend": "sqlite",
            "path": str(self.path),
            "available": True,
            "schema_version": SCHEMA_VERSION,
            "commits": self.commits,
            "statements": self.statements,
            "largest_batch": self.largest_batch,
            "commit_seconds": self.commit_seconds,
            "failures": self.failures,
            "queued": queued,
        }

    # ------------------------------------------------------------------ backup

    async def backup(self, destination: Path) -> dict[str, Any]:
        """Write a consistent copy of the database to ``destination`` while salond runs.

        SQLite's online backup API copies one snapshot: every transaction committed before it
        began (so every acknowledged action, commit-before-ack), nothing half-written, WAL
        content included. The copy is checked, made 0600, and moved into place atomically;
        ``destination`` must not exist. Returns its path, size and integrity check.
        """
        return await asyncio.to_thread(self._backup, Path(destination))

    def _backup(self, destination: Path) -> dict[str, Any]:
        if destination.exists() or destination.is_symlink():
            raise StoreError(f"backup: {destination} exists; give a new file name")
        temporary = destination.with_name(f".{destination.name}.partial")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        except OSError as exc:
            raise StoreError(f"backup: cannot create {temporary}: {exc}") from exc
        try:
            source = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            target = sqlite3.connect(str(temporary))
            try:
                source.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                source.backup(target)
                # A self-contained file: no -wal beside it needed to read it.
                target.execute("PRAGMA journal_mode = DELETE")
                check = target.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                target.close()
                source.close()
            if check != "ok":
                raise StoreError(f"backup: the copy failed its integrity check: {check}")
            os.replace(temporary, destination)
        except sqlite3.Error as exc:
            temporary.unlink(missing_ok=True)
            raise StoreError(f"backup of {self.path} to {destination} failed: {exc}") from exc
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return {
            "path": str(destination),
            "bytes": destination.stat().st_size,
            "schema_version": SCHEMA_VERSION,
            "integrity": check,
        }

    # ------------------------------------------------------------------ reads

    async def load(self) -> StoredState:
        """Everything stored: rooms with their sets, and server-wide bans."""
        return await asyncio.to_thread(self._read, self._load)

    async def audit_log(
        self, limit: int = 100, room: str | None = None, before: int | None = None
    ) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first (see :class:`Store`)."""
        limit = max(0, min(int(limit), 10_000))
        return await asyncio.to_thread(self._read, self._audit, limit, room, before)

    async def recordings(self, room: str | None = None, limit: int = 1000) -> list[RecordingInfo]:
        """Recordings, newest first; only ``room``'s when given."""
        limit = max(0, min(int(limit), 100_000))
        return await asyncio.to_thread(self._read, self._recordings, room, None, limit)

    async def recording(self, recording_id: str) -> RecordingInfo | None:
        """One recording's index entry, or None."""
        found = await asyncio.to_thread(self._read, self._recordings, None, recording_id, 1)
        return found[0] if found else None

    @staticmethod
    def _recordings(
        db: sqlite3.Connection, room: str | None, recording_id: str | None, limit: int
    ) -> list[RecordingInfo]:
        clause, parameters = where(("room = ?", room), ("id = ?", recording_id))
        rows = db.execute(
            f"SELECT {RECORDING_COLUMNS} FROM recordings{clause}"
            " ORDER BY started_at DESC, id LIMIT ?",
            (*parameters, limit),
        ).fetchall()
        return recording_infos(rows)

    def _read(self, reader: Any, *args: Any) -> Any:
        with self._reader_lock:
            if self._reader is None:
                raise StoreError(f"the store {self.path} is not open")
            try:
                return reader(self._reader, *args)
            except sqlite3.Error as exc:
                raise StoreError(f"reading the database {self.path} failed: {exc}") from exc

    @staticmethod
    def _load(db: sqlite3.Connection) -> StoredState:
        db.execute("BEGIN")  # one consistent snapshot of every table
        try:
            return build_state(
                db.execute(f"SELECT {ROOM_COLUMNS} FROM rooms ORDER BY created_at, id"),
                db.execute("SELECT room, user, reason, until, banned_by FROM bans"),
                db.execute(f"SELECT {INVITE_COLUMNS} FROM invites ORDER BY created_at"),
                db.execute("SELECT room, user FROM approvals ORDER BY user"),
                db.execute("SELECT room, user FROM subscriptions ORDER BY user"),
            )
        finally:
            db.execute("COMMIT")

    @staticmethod
    def _audit(
        db: sqlite3.Connection, limit: int, room: str | None, before: int | None
    ) -> list[AuditEntry]:
        clause, parameters = where(("room = ?", room), ("id < ?", before))
        rows = db.execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit_log{clause} ORDER BY id DESC LIMIT ?",
            (*parameters, limit),
        ).fetchall()
        return audit_entries(rows)
