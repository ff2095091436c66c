"""Database setup and the unit of work.

Every DB call runs in a bounded thread pool (see Runtime.run), never on the event loop.
SQLite writers are serialized by a process lock and BEGIN IMMEDIATE so "database is
locked" never reaches a client; PostgreSQL uses a connection pool.

The data dir (keys, the SQLite file) is private to the daemon's user: created 0700, the
SQLite database and its -wal/-shm files 0600 (an existing dir or file open to others is
tightened at start, with a warning).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import peewee
import structlog
from playhouse.pool import PooledPostgresqlDatabase

from coordd.config import Settings
from coordd.core.clock import utcnow
from coordd.core.errors import DomainError, Unavailable
from coordd.core.events import Event
from coordd.store import event_log
from coordd.store.pg import PostgresDatabase

database_proxy = peewee.DatabaseProxy()
SQLITE_SUFFIXES = ("", "-wal", "-shm")

# PostgreSQL errors that mean "another transaction got in the way", not "the database is down":
# serialization_failure, deadlock_detected, and unique_violation (a check-then-insert race).
CONFLICT_CODES = {"40001": "serialization failure", "40P01": "deadlock", "23505": "unique violation"}


def defer(sql: str, params: tuple[Any, ...] | list[Any] = ()) -> None:
    """A write whose answer nobody needs, sent with the transaction's next statement on
    PostgreSQL (store/pg.py: one round trip fewer; its error, if any, is raised there), at once
    on SQLite. Only for callers that handle any error of their transaction alike."""
    db = database_proxy.obj
    if isinstance(db, PostgresDatabase):
        db.defer(sql, params)
    else:
        db.execute_sql(sql, params)


def flush() -> None:
    """Sends the writes deferred so far (PostgreSQL), so that an error of theirs is raised here,
    not by an unrelated statement after them (e.g. in another caller's savepoint)."""
    db = database_proxy.obj
    if isinstance(db, PostgresDatabase):
        db.flush()


def conflict_of(exc: BaseException) -> str:
    """The kind of write conflict a (peewee-wrapped) PostgreSQL error is, or ""."""
    for candidate in (*(exc.args[:1] if exc.args else ()), exc.__cause__, exc.__context__, exc):
        code = getattr(candidate, "pgcode", None)
        if code:
            return CONFLICT_CODES.get(code, "")
    return ""


def connection_lost(store: Store, exc: BaseException) -> Unavailable | None:
    """UNAVAILABLE for an error that says the connection is gone or unusable (peewee's
    OperationalError, or InterfaceError: "connection already closed", which is what a
    transaction whose connection the server ended raises on its rollback, and which is no
    DatabaseError); the thread's connection is dropped, so its next call reconnects. None
    for any other error."""
    if not isinstance(exc, peewee.OperationalError | peewee.InterfaceError):
        return None
    with contextlib.suppress(Exception):
        store.close_thread_connection()
    return Unavailable("the database is unavailable; retry shortly", reason="DATABASE_UNAVAILABLE")


@dataclass
class Tx:
    """Handle a domain function gets inside a write transaction."""

    now: datetime
    pending_events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def emit(self, type_: str, subject: str, data: dict[str, Any] | None = None) -> None:
        """Records an event; it is written with the change and published after commit."""
        self.pending_events.append((type_, subject, dict(data or {})))


def _postgres(url: str, settings: Settings) -> peewee.Database:
    parsed = urlparse(url)
    return PostgresDatabase(
        (parsed.path or "/postgres").lstrip("/"),
        user=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or 5432,
        max_connections=settings.db_pool_size,
        stale_timeout=300,
        timeout=10,
        connect_timeout=5,
    )


def _tighten(path: Path, private: int) -> None:
    """Removes group/other access from `path` if it has any (and we own it)."""
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077 and info.st_uid == os.getuid():
        os.chmod(path, private)
        structlog.get_logger("coordd").warning(
            "file was open to other users; access removed",
            path=str(path),
            was=f"{mode:o}",
            now=f"{private:o}",
        )


def prepare_data_dir(path: Path) -> None:
    """Creates the data dir 0700 (or tightens an existing one): it holds the keys and the
    SQLite file, and nobody but the daemon's user needs to list or read it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def _prepare_sqlite_files(path: Path) -> None:
    """The database file is created 0600 before SQLite opens it: SQLite creates the -wal and
    -shm files with the database file's mode, so all three stay private."""
    prepare_data_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in SQLITE_SUFFIXES:
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            _tighten(companion, 0o600)


def _sqlite(path: Path, settings: Settings) -> peewee.Database:
    _prepare_sqlite_files(path)
    return peewee.SqliteDatabase(
        str(path),
        pragmas={
            "journal_mode": "wal",
            "busy_timeout": settings.sqlite_busy_timeout_ms,
            "foreign_keys": 1,
            "synchronous": "normal",
        },
        timeout=settings.sqlite_busy_timeout_ms / 1000,
    )


class Store:
    """Owns the peewee database and hands out transactions."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.backend = settings.backend
        self.clock = clock
        prepare_data_dir(Path(settings.data_dir))
        if settings.database_url:
            self.db = _postgres(settings.database_url, settings)
        else:
            self.db = _sqlite(settings.db_path(), settings)
        database_proxy.initialize(self.db)
        self._write_lock = threading.Lock() if self.backend == "sqlite" else None
        self._event_ids = event_log.EventIds() if self.is_postgres else None
        self._on_commit: list[Callable[[list[Event]], None]] = []
        self._before_commit: list[Callable[[Tx], None]] = []
        self._local = threading.local()

    @property
    def is_postgres(self) -> bool:
        return self.backend == "postgresql"

    def on_commit(self, callback: Callable[[list[Event]], None]) -> None:
        self._on_commit.append(callback)

    def before_commit(self, callback: Callable[[Tx], None]) -> None:
        """`callback(tx)` runs inside every outermost write transaction, last, so what it
        writes commits (or rolls back) with the transaction's own changes."""
        self._before_commit.append(callback)

    @contextmanager
    def write(self) -> Iterator[Tx]:
        """One write transaction; events emitted inside are stored with it and published after.

        A write() inside another on the same thread joins the outer transaction (same Tx), so
        domain functions compose without deadlocking on the SQLite writer lock.
        """
        outer: Tx | None = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer
            return
        tx = Tx(now=self.clock())
        self._local.tx = tx
        try:
            if self._write_lock is not None:
                with self._write_lock, self.db.atomic("IMMEDIATE"):
                    yield tx
                    self._finish(tx)
            else:
                with self.db.atomic():
                    yield tx
                    self._finish(tx)
        except BaseException as exc:
            if self._event_ids is not None and not isinstance(exc, DomainError):
                self._event_ids.forget()  # the database's failure, not a rule's: see store/event_log.py
            raise
        finally:
            self._local.tx = None
        self._local.commits = getattr(self._local, "commits", 0) + 1
        if tx.events:
            for callback in self._on_commit:
                callback(tx.events)

    def commits(self) -> int:
        """Write transactions this thread has committed (a retry is safe only if none did)."""
        return int(getattr(self._local, "commits", 0))

    @contextmanager
    def read(self) -> Iterator[None]:
        """A consistent snapshot for multi-query reads."""
        with self.db.atomic():
            yield

    def _finish(self, tx: Tx) -> None:
        self._store_events(tx)
        for callback in self._before_commit:
            callback(tx)

    def _store_events(self, tx: Tx) -> None:
        """The transaction's events in one INSERT (on PostgreSQL it goes with the COMMIT:
        store/event_log.py)."""
        if tx.pending_events:
            tx.events += event_log.store(self.db, self._event_ids, tx.now, tx.pending_events)
            tx.pending_events.clear()

    def ping(self) -> None:
        self.db.execute_sql("SELECT 1")

    def close_thread_connection(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    def close(self) -> None:
        if isinstance(self.db, PooledPostgresqlDatabase):
            self.db.close_all()
        else:
            self.db.close()
