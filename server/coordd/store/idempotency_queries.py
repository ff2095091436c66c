"""The idempotency records' queries (the rules are in domain/idempotency.py).

The claim of a new key is one statement (insert unless the key exists); everything else runs
only on a retry or in the purge task.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import peewee

from coordd.store.db import Store
from coordd.store.idempotency_marks import APPLIED, DONE, RUNNING
from coordd.store.models import IdempotencyRecord
from coordd.store.pg import PostgresDatabase

# Raised when a concurrent first call inserted the same key between a read and an insert.
DuplicateKey = peewee.IntegrityError


def _this(scope: str, key: str) -> peewee.Expression:
    return (IdempotencyRecord.scope == scope) & (IdempotencyRecord.key == key)


def skip_claim_flush(store: Store) -> None:
    """PostgreSQL: no WAL flush at this transaction's commit (SET LOCAL synchronous_commit)."""
    if store.is_postgres:
        store.db.execute_sql("SET LOCAL synchronous_commit = off")


def insert_claim(
    store: Store,
    scope: str,
    key: str,
    method: str,
    digest: str,
    now: datetime,
    locked_until: datetime,
    expire_time: datetime,
) -> bool:
    """Inserts a `running` record unless the key exists; True when it was inserted."""
    row = _claim_row(scope, key, method, digest, now, locked_until, expire_time)
    fresh = IdempotencyRecord.insert(**row).on_conflict_ignore()
    return bool(store.db.execute(fresh).rowcount == 1)


def _claim_row(
    scope: str,
    key: str,
    method: str,
    digest: str,
    now: datetime,
    locked_until: datetime,
    expire_time: datetime,
) -> dict[str, object]:
    """A new `running` record's columns (inserted unless the key exists, or created outright)."""
    return {
        "scope": scope,
        "key": key,
        "method": method,
        "request_hash": digest,
        "state": RUNNING,
        "locked_until": locked_until,
        "expire_time": expire_time,
        "create_time": now,
    }


def lock_record(store: Store, scope: str, key: str) -> IdempotencyRecord | None:
    """The key's record, row-locked on PostgreSQL (SQLite writers are serialized anyway)."""
    query = IdempotencyRecord.select().where(_this(scope, key))
    if store.is_postgres:
        query = query.for_update()
    return query.first()


def create_claim(
    scope: str,
    key: str,
    method: str,
    digest: str,
    now: datetime,
    locked_until: datetime,
    expire_time: datetime,
) -> None:
    IdempotencyRecord.create(**_claim_row(scope, key, method, digest, now, locked_until, expire_time))


def delete_record(record: IdempotencyRecord) -> None:
    record.delete_instance()


def save_record(record: IdempotencyRecord) -> None:
    record.save()


def store_response(scope: str, key: str, response: bytes) -> None:
    IdempotencyRecord.update(state=DONE, response=response).where(_this(scope, key)).execute()


def delete_unfinished(scope: str, key: str) -> None:
    """Deletes the key's record unless it holds a response."""
    IdempotencyRecord.delete().where(
        _this(scope, key) & (IdempotencyRecord.state.in_([RUNNING, APPLIED]))
    ).execute()


def expired_keys(now: datetime, limit: int) -> list[tuple[str, str]]:
    """(scope, key) of up to `limit` expired records, through the expire_time index."""
    expired = (
        IdempotencyRecord.select(IdempotencyRecord.scope, IdempotencyRecord.key)
        .where(IdempotencyRecord.expire_time <= now)
        .limit(limit)
    )
    return [(r.scope, r.key) for r in expired]


def delete_key(scope: str, key: str) -> None:
    IdempotencyRecord.delete().where(_this(scope, key)).execute()


# -- records written in the call's own transaction (domain/idempotency.py: claims_in_call) --


class Found(NamedTuple):
    """A record as `find_record` reads it."""

    method: str
    request_hash: str
    state: str
    response: bytes | None


def find_record(scope: str, key: str) -> Found | None:
    """The key's record, unlocked: the cheap look before a call that claims in its own
    transaction (fixed SQL: the query builder cost more CPU than the query)."""
    db = IdempotencyRecord._meta.database
    p = db.param
    row = db.execute_sql(
        f'SELECT method, request_hash, state, response FROM "{IdempotencyRecord._meta.table_name}"'
        f' WHERE scope = {p} AND "key" = {p}',
        (scope, key),
    ).fetchone()
    return Found(row[0], row[1], row[2], bytes(row[3]) if row[3] is not None else None) if row else None


def insert_done(
    rows: list[tuple[str, str, str, str, bytes, datetime, datetime]],
) -> set[tuple[str, str]] | None:
    """Finished records (scope, key, method, request hash, response, now, expire time) in one
    statement. SQLite: each unless its key exists; returns the (scope, key) of those inserted.
    PostgreSQL: all of them, deferred to go with the transaction's COMMIT (store/pg.py), which a
    key taken meanwhile fails as a unique violation (after waiting for a transaction inserting
    the same key to end); returns None. The caller looked for these keys in this transaction
    first (`records_of`), so such a key belongs to a record committed since: its batch runs
    again (store/group_commit.py) and finds it."""
    if not rows:
        return set()
    db = IdempotencyRecord._meta.database
    p = db.param
    to_db = IdempotencyRecord.create_time.db_value
    values = ", ".join([f"({p}, {p}, {p}, {p}, '{DONE}', {p}, {p}, {p}, {p})"] * len(rows))
    params: list[object] = []
    for scope, key, method, digest, response, now, expire_time in rows:
        stamp = to_db(now)
        params += (scope, key, method, digest, response, stamp, to_db(expire_time), stamp)
    sql = (
        f'INSERT INTO "{IdempotencyRecord._meta.table_name}" (scope, "key", method, request_hash, state,'
        f" response, locked_until, expire_time, create_time) VALUES {values}"
    )
    if isinstance(db.obj, PostgresDatabase):  # the store's database behind peewee's proxy
        db.obj.defer(sql, params)
        return None
    inserted = db.execute_sql(sql + ' ON CONFLICT DO NOTHING RETURNING scope, "key"', params)
    return {(scope, key) for scope, key in inserted}


def is_record_conflict(exc: BaseException) -> bool:
    """Whether a (peewee-wrapped) PostgreSQL unique violation was a record's key: `insert_done`
    on PostgreSQL reports a key used before that way, at the COMMIT."""
    for candidate in (exc, exc.__cause__, exc.__context__, *(exc.args[:1] if exc.args else ())):
        diag = getattr(candidate, "diag", None)
        if diag is not None and getattr(candidate, "pgcode", None) == "23505":
            return bool(diag.table_name == IdempotencyRecord._meta.table_name)
    return False


class Live(NamedTuple):
    """A record as `records_of` reads it (times as datetimes)."""

    method: str
    request_hash: str
    state: str
    response: bytes | None
    locked_until: datetime
    expire_time: datetime


def records_of(keys: list[tuple[str, str]]) -> dict[tuple[str, str], Live]:
    """The records of these (scope, key) pairs, unlocked, in one statement."""
    if not keys:
        return {}
    db = IdempotencyRecord._meta.database
    p = db.param
    from_db = IdempotencyRecord.create_time.python_value
    pairs = ", ".join([f"({p}, {p})"] * len(keys))
    sql = (
        f'SELECT scope, "key", method, request_hash, state, response, locked_until, expire_time'
        f' FROM "{IdempotencyRecord._meta.table_name}" WHERE (scope, "key") IN ({pairs})'
    )
    params = [part for pair in keys for part in pair]
    return {
        (scope, key): Live(
            method,
            digest,
            state,
            bytes(response) if response is not None else None,
            from_db(lock),
            from_db(exp),
        )
        for scope, key, method, digest, state, response, lock, exp in db.execute_sql(sql, params).fetchall()
    }
