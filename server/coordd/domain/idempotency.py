"""Idempotency records: the first result of a keyed mutating call, replayed on retry.

A record is claimed (state `running`) before the call executes and filled with the
serialized response when it succeeds. A failed call deletes its claim, so a retry
re-executes. Records are scoped per caller and kept for `idempotency_retention_s`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

import peewee

from coordd.domain.errors import InvalidArgument, Violations
from coordd.runtime import Runtime
from coordd.store.models import IdempotencyRecord

MAX_KEY_LENGTH = 128
RUNNING = "running"
DONE = "done"


@dataclass(frozen=True)
class Claim:
    """Outcome of trying to claim a key: run the call, replay a response, or wait."""

    action: str  # run | replay | wait
    response: bytes = b""


def request_hash(method: str, request_bytes: bytes) -> str:
    return hashlib.sha256(method.encode() + b"\0" + request_bytes).hexdigest()


def check_key(key: str) -> None:
    v = Violations()
    if len(key) > MAX_KEY_LENGTH:
        v.add("idempotency-key", f"at most {MAX_KEY_LENGTH} characters")
    elif not key.isprintable() or not key.isascii():
        v.add("idempotency-key", "printable ASCII only")
    v.raise_if_any("bad idempotency-key metadata")


def claim(rt: Runtime, scope: str, key: str, method: str, digest: str) -> Claim:
    s = rt.settings
    try:
        with rt.store.write() as tx:
            if rt.store.is_postgres:
                # No WAL flush for the claim: PostgreSQL flushes WAL in order, so the call's own
                # commit (or the response record's) makes this claim durable too, and a claim
                # lost in a crash before either is exactly a first call that died: the retry runs.
                rt.store.db.execute_sql("SET LOCAL synchronous_commit = off")
            # The common case, a new key, is one statement: insert unless the key exists.
            fresh = IdempotencyRecord.insert(
                scope=scope,
                key=key,
                method=method,
                request_hash=digest,
                state=RUNNING,
                locked_until=tx.now + timedelta(seconds=s.idempotency_stale_s),
                expire_time=tx.now + timedelta(seconds=s.idempotency_retention_s),
                create_time=tx.now,
            ).on_conflict_ignore()
            if rt.store.db.execute(fresh).rowcount == 1:
                return Claim("run")
            query = IdempotencyRecord.select().where(
                (IdempotencyRecord.scope == scope) & (IdempotencyRecord.key == key)
            )
            if rt.store.is_postgres:
                query = query.for_update()
            record = query.first()
            if record is not None and record.expire_time <= tx.now:
                record.delete_instance()
                record = None
            if record is None:
                IdempotencyRecord.create(
                    scope=scope,
                    key=key,
                    method=method,
                    request_hash=digest,
                    state=RUNNING,
                    locked_until=tx.now + timedelta(seconds=s.idempotency_stale_s),
                    expire_time=tx.now + timedelta(seconds=s.idempotency_retention_s),
                    create_time=tx.now,
                )
                return Claim("run")
            if record.method != method or record.request_hash != digest:
                raise InvalidArgument(
                    "this idempotency-key was already used with a different request",
                    reason="IDEMPOTENCY_KEY_REUSED",
                    metadata={"idempotency_key": key, "first_method": record.method},
                )
            if record.state == DONE:
                return Claim("replay", bytes(record.response or b""))
            if record.locked_until <= tx.now:
                # The first caller died mid-call: the retry takes the key over.
                record.locked_until = tx.now + timedelta(seconds=s.idempotency_stale_s)
                record.save()
                return Claim("run")
            return Claim("wait")
    except peewee.IntegrityError:
        # A concurrent first call inserted the record between our read and insert.
        return Claim("wait")


def complete(rt: Runtime, scope: str, key: str, response: bytes) -> None:
    with rt.store.write():
        IdempotencyRecord.update(state=DONE, response=response).where(
            (IdempotencyRecord.scope == scope) & (IdempotencyRecord.key == key)
        ).execute()


def release(rt: Runtime, scope: str, key: str) -> None:
    with rt.store.write():
        IdempotencyRecord.delete().where(
            (IdempotencyRecord.scope == scope)
            & (IdempotencyRecord.key == key)
            & (IdempotencyRecord.state == RUNNING)
        ).execute()


def purge_expired(rt: Runtime, batch: int = 5000) -> int:
    """Scheduler task: deletes expired records in bounded batches via the expire_time index."""
    total = 0
    while True:
        with rt.store.write() as tx:
            expired = (
                IdempotencyRecord.select(IdempotencyRecord.scope, IdempotencyRecord.key)
                .where(IdempotencyRecord.expire_time <= tx.now)
                .limit(batch)
            )
            rows = [(r.scope, r.key) for r in expired]
            for scope, key in rows:
                IdempotencyRecord.delete().where(
                    (IdempotencyRecord.scope == scope) & (IdempotencyRecord.key == key)
                ).execute()
        total += len(rows)
        if len(rows) < batch:
            return total
