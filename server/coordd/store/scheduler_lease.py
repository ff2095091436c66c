"""The scheduler's lease on PostgreSQL, its fence, and the task-run records.

Leadership is one row of `scheduler_leader` (name "scheduler"): the holder's instance id, an
epoch that grows by one at every takeover, and an expiry. Every time in it is the database's
clock (`clock_timestamp()`), so replicas' clocks never matter. The elector's statements run
on a dedicated autocommit connection (`claim`, `renew`, `release`); the fence runs inside a
scheduled task's own write transaction (`fence`, a Store.before_commit hook) and makes that
transaction fail unless its epoch still holds an unexpired lease. It takes a share lock on
the lease row until commit, and a takeover is an UPDATE of that row: a stale leader's write
either commits before the takeover or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import peewee

from coordd.store.db import Tx, database_proxy
from coordd.store.models import SchedulerLeader, SchedulerTaskRun

NAME = "scheduler"
# The database's clock in the TimestampField unit (integer microseconds since the epoch).
_NOW_US = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint"

# Every column given: on a database created with this model, migration 1 made them without
# server-side defaults.
_ENSURE = (
    "INSERT INTO scheduler_leader "
    "(name, instance_id, epoch, holder_pid, since_time, heartbeat_time, expire_time) "
    "VALUES (%s, '', 0, 0, 0, 0, 0) ON CONFLICT (name) DO NOTHING"
)
# The elector's connections name themselves so: a holder whose lease connection is gone (its
# process died: the kernel closed the socket) is replaced at once, not at expiry. Its writes
# are fenced by the epoch anyway, should the process itself still be alive.
APPLICATION_NAME = "coordd-scheduler-lease"
_HOLDER_GONE = (
    "NOT EXISTS (SELECT 1 FROM pg_stat_activity a "
    f"WHERE a.pid = scheduler_leader.holder_pid AND a.application_name = '{APPLICATION_NAME}')"
)
# Versions before the lease elected their leader with a session advisory lock on this key.
# While such a replica holds it (a rolling upgrade), no replica of this version leads; one of
# this version that leads takes the lock too, so the older ones stay followers.
LEGACY_LOCK = 0x636F6F726464
_LEGACY_LEADS = (
    "EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"AND ((l.classid::bigint << 32) | l.objid::bigint) = {LEGACY_LOCK} "
    f"AND a.application_name <> '{APPLICATION_NAME}')"
)
_CLAIM = (
    f"UPDATE scheduler_leader SET instance_id = %s, epoch = epoch + 1, holder_pid = pg_backend_pid(), "
    f"since_time = {_NOW_US}, heartbeat_time = {_NOW_US}, expire_time = {_NOW_US} + %s "
    f"WHERE name = %s AND (expire_time < {_NOW_US} OR {_HOLDER_GONE}) AND NOT {_LEGACY_LEADS} "
    "RETURNING epoch"
)
_RENEW = (
    f"UPDATE scheduler_leader SET heartbeat_time = {_NOW_US}, expire_time = {_NOW_US} + %s, "
    "holder_pid = pg_backend_pid() "
    f"WHERE name = %s AND instance_id = %s AND epoch = %s AND expire_time >= {_NOW_US} "
    f"AND NOT {_LEGACY_LEADS} RETURNING epoch"
)
_REMAINING = f"SELECT GREATEST(expire_time - {_NOW_US}, 0) FROM scheduler_leader WHERE name = %s"
_RELEASE = (
    f"UPDATE scheduler_leader SET expire_time = {_NOW_US} WHERE name = %s AND instance_id = %s AND epoch = %s"
)
# SET LOCAL: if this transaction then sits idle (its process paused between the fence and the
# commit) the server ends it, freeing the share lock a takeover waits for.
# lock_timeout: the share lock waits only behind a takeover or a release in progress; waiting
# longer than that means the leadership is changing hands, so the write is refused.
_FENCE = (
    "SET LOCAL idle_in_transaction_session_timeout = %s; SET LOCAL lock_timeout = %s; "
    "SELECT epoch FROM scheduler_leader "
    f"WHERE name = %s AND instance_id = %s AND epoch = %s AND expire_time > {_NOW_US} FOR SHARE"
)


FENCE_LOCK_TIMEOUT_MS = 2000


class LeadershipLost(Exception):
    """A scheduled task's write was refused: its leadership ended (lease expired or taken over)."""


@dataclass(frozen=True)
class Fence:
    """The leadership a scheduled task runs under (set in its context by the scheduler)."""

    holder: str
    epoch: int
    # The holder's own view (monotonic deadline): checked first, without a round trip.
    still_leading: Callable[[], bool]
    idle_timeout_ms: int


FENCE: ContextVar[Fence | None] = ContextVar("coordd_scheduler_fence", default=None)


def fence(tx: Tx) -> None:
    """Store.before_commit hook: a scheduled task's transaction commits only while its
    leadership holds; otherwise LeadershipLost rolls it back."""
    current = FENCE.get()
    if current is None:
        return
    if not current.still_leading():
        raise LeadershipLost(f"leadership epoch {current.epoch} ended (lease not renewed in time)")
    params = (current.idle_timeout_ms, FENCE_LOCK_TIMEOUT_MS, NAME, current.holder, current.epoch)
    try:
        row = database_proxy.execute_sql(_FENCE, params).fetchone()
    except peewee.OperationalError as exc:
        if getattr(exc.args[0] if exc.args else None, "pgcode", None) == "55P03":  # lock_not_available
            raise LeadershipLost(f"leadership epoch {current.epoch} is changing hands") from exc
        raise
    if row is None:
        raise LeadershipLost(f"leadership epoch {current.epoch} ended (lease expired or taken over)")


# -- the elector's statements, on its own autocommit psycopg2 connection ----------------------


class Claim(NamedTuple):
    """A claim's outcome: the new epoch, or None and how long the current lease still runs."""

    epoch: int | None
    remaining_s: float


def claim(conn: Any, holder: str, lease_us: int) -> Claim:
    """Takes the lease if it has expired (or was never held)."""
    with conn.cursor() as cur:
        cur.execute(_ENSURE, (NAME,))
        cur.execute(_CLAIM, (holder, lease_us, NAME))
        row = cur.fetchone()
        if row:
            # Held for as long as this connection lives (it is closed when leadership ends).
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LEGACY_LOCK,))
            return Claim(int(row[0]), 0.0)
        cur.execute(_REMAINING, (NAME,))
        remaining = cur.fetchone()
    return Claim(None, int(remaining[0]) / 1e6 if remaining else 0.0)


def renew(conn: Any, holder: str, epoch: int, lease_us: int) -> bool:
    """Extends the holder's unexpired lease of that epoch; False when it is no longer held."""
    with conn.cursor() as cur:
        cur.execute(_RENEW, (lease_us, NAME, holder, epoch))
        return cur.fetchone() is not None


def release(conn: Any, holder: str, epoch: int) -> None:
    """Ends the holder's lease now, so another replica takes over at its next attempt."""
    with conn.cursor() as cur:
        cur.execute(_RELEASE, (NAME, holder, epoch))


# -- single-process leader (SQLite) and the task-run records --------------------------------


def note_leader(holder: str, now: datetime) -> None:
    """Where no lease is needed (SQLite's file lock): the row just names the process."""
    row = SchedulerLeader.get_or_none(SchedulerLeader.name == NAME)
    if row is None:
        SchedulerLeader.create(name=NAME, instance_id=holder, since_time=now, heartbeat_time=now)
        return
    if row.instance_id != holder:
        row.instance_id = holder
        row.since_time = now
    row.heartbeat_time = now
    row.save()


def record_run(
    name: str,
    interval_s: float,
    started: datetime,
    elapsed: float,
    error: str,
    holder: str,
    epoch: int,
    *,
    runs: int = 1,
    failures: int | None = None,
) -> None:
    """The task's last run, and `runs` (of which `failures` failed) more counted."""
    failures = (1 if error else 0) if failures is None else failures
    row = SchedulerTaskRun.get_or_none(SchedulerTaskRun.name == name)
    exists = row is not None
    if row is None:
        row = SchedulerTaskRun(name=name, run_count=0, failure_count=0)
    row.interval_s = interval_s
    row.last_start_time = started
    row.last_duration_s = elapsed
    row.last_error = error
    row.run_count += runs
    row.failure_count += failures
    row.last_instance_id = holder
    row.last_epoch = epoch
    row.save(force_insert=not exists)


def add_lease_columns(db: peewee.Database) -> None:
    """Migration 70: the lease's epoch, expiry and holder connection, and who ran each task last."""
    columns = {c.name for c in db.get_columns("scheduler_leader")}
    # Created by migration 1 already on installs that started with this model.
    if "epoch" not in columns:
        db.execute_sql("ALTER TABLE scheduler_leader ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0")
    if "expire_time" not in columns:
        db.execute_sql("ALTER TABLE scheduler_leader ADD COLUMN expire_time BIGINT NOT NULL DEFAULT 0")
    if "holder_pid" not in columns:
        db.execute_sql("ALTER TABLE scheduler_leader ADD COLUMN holder_pid INTEGER NOT NULL DEFAULT 0")
    columns = {c.name for c in db.get_columns("scheduler_task_run")}
    if "last_instance_id" not in columns:
        db.execute_sql(
            "ALTER TABLE scheduler_task_run ADD COLUMN last_instance_id VARCHAR(100) NOT NULL DEFAULT ''"
        )
    if "last_epoch" not in columns:
        db.execute_sql("ALTER TABLE scheduler_task_run ADD COLUMN last_epoch BIGINT NOT NULL DEFAULT 0")
