"""The event log's rows: every write's events in one INSERT that waits for the COMMIT.

A stored event needs its id before the commit (the transaction's `Event`s are published after
it with their ids: the bus deduplicates by id, and a replica reads a pointer notification's row
by it). `INSERT ... RETURNING id` paid a round trip of its own for that in every write that
emitted an event, most of them. On PostgreSQL the ids now come from the table's own sequence a
block at a time (`nextval` for a block of them in one statement, about one round trip per
`BLOCK` events of the process), so the INSERT names its ids and needs no answer: it is deferred
and goes with the COMMIT (store/pg.py). On SQLite, which has no round trips, the INSERT returns
the ids as before.

What the ids still promise: unique (the sequence never hands a value out twice); in emission
order within a transaction; roughly in time order across transactions and replicas, as
before, only more roughly: a block is used for at most `MAX_AGE_S`, so an id can be up to that
much older than one another process took meanwhile (newest-first listings order by id). A block
is dropped whenever a write transaction of the database fails (store/db.py): after a database
crash the sequence may hand out again values it gave before its WAL reached the disk, and the
retry must not meet them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from coordd.core.events import Event
from coordd.store.fields import JSONField, TimestampField

if TYPE_CHECKING:
    from datetime import datetime

    import peewee

# Ids taken from the sequence at a time, and how long a block is used at most.
BLOCK = 256
MAX_AGE_S = 1.0
# Rows per INSERT statement.
CHUNK = 500

_json = JSONField().db_value
_stamp = TimestampField().db_value
_RESERVE = "SELECT nextval(pg_get_serial_sequence('event_log', 'id')) FROM generate_series(1, %s)"


class EventIds:
    """A process's ids for event_log rows on one PostgreSQL database, taken a block at a time
    (the Store holds one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ids: list[int] = []
        self._taken_at = 0.0

    def take(self, db: peewee.Database, n: int) -> list[int]:
        """`n` unused ids, in increasing order; reserves a new block (one statement, in the
        caller's transaction: `nextval` is not undone by its rollback) when the block in hand is
        short or old."""
        with self._lock:
            if len(self._ids) < n or self._clock() - self._taken_at > MAX_AGE_S:
                rows = db.execute_sql(_RESERVE, (max(n, BLOCK),)).fetchall()
                self._ids = sorted(row[0] for row in rows)
                self._taken_at = self._clock()
            got, self._ids = self._ids[:n], self._ids[n:]
            return got

    def forget(self) -> None:
        with self._lock:
            self._ids = []


def store(
    db: peewee.Database, ids: EventIds | None, now: datetime, events: list[tuple[str, str, dict[str, Any]]]
) -> list[Event]:
    """Writes `events` (type, subject, data) in the caller's transaction; they are returned
    with their ids, for the transaction's committed events (published after the commit).
    `ids`: the store's EventIds on PostgreSQL, None on SQLite."""
    if not events:
        return []
    created = _stamp(now)
    if ids is None:
        event_ids = _insert_returning(db, created, events)
    else:
        event_ids = ids.take(db, len(events))
        _insert_named(db, event_ids, created, events)
    return [
        Event(event_id, type_, subject, data, now)
        for event_id, (type_, subject, data) in zip(event_ids, events, strict=True)
    ]


def _insert_named(
    db: Any, ids: list[int], created: int, events: list[tuple[str, str, dict[str, Any]]]
) -> None:
    """PostgreSQL: the rows under the ids taken, deferred to go with the next statement or COMMIT."""
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        params: list[Any] = []
        for event_id, (type_, subject, data) in zip(ids[start : start + len(chunk)], chunk, strict=True):
            params += (event_id, type_, subject, _json(data), created)
        rows = ", ".join(["(%s, %s, %s, %s, %s)"] * len(chunk))
        db.defer(f"INSERT INTO event_log (id, type, subject, data, create_time) VALUES {rows}", params)


def _insert_returning(db: Any, created: int, events: list[tuple[str, str, dict[str, Any]]]) -> list[int]:
    """SQLite: the rows, and the ids they were given, in order."""
    ids: list[int] = []
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        params: list[Any] = []
        for type_, subject, data in chunk:
            params += (type_, subject, _json(data), created)
        rows = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
        sql = f"INSERT INTO event_log (type, subject, data, create_time) VALUES {rows} RETURNING id"
        ids += sorted(row[0] for row in db.execute_sql(sql, params))
    return ids
