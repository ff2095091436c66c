"""Idempotency records: the first result of a keyed mutating call, replayed on retry.

A record is claimed (state `running`) before the call executes, marked `applied` by the
call's first committed write in that same transaction (store.idempotency_marks), and filled
with the serialized response (`done`) when the call returns. A failed call deletes its
record, so a retry re-executes. A retry that finds a `running` record whose holder is
presumed dead takes it over (nothing was committed); one that finds an `applied` record
whose holder died gets IDEMPOTENCY_RESPONSE_LOST rather than a second execution. Records
are scoped per caller and kept for `idempotency_retention_s`.

Stored responses are sealed (AES-256-GCM with the sealing key, bound to the record's scope and
key, so a blob copied onto another record does not open): a reply carries the secrets it
creates (API keys, node keys, webhook secrets, access tokens), and a database dump must not.
Records stored in plaintext before sealing existed still replay as they are until they expire
(at most `idempotency_retention_s` later): expiring them early would run their calls twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from coordd.core.errors import FailedPrecondition, InvalidArgument, Violations
from coordd.crypto.sealing import Unsealable
from coordd.runtime import Runtime
from coordd.store import idempotency_queries as queries
from coordd.store.idempotency_marks import APPLIED, DONE, PENDING, PendingKey

__all__ = ["PENDING", "Claim", "PendingKey", "check_key", "claim", "complete", "release", "request_hash"]

MAX_KEY_LENGTH = 128


@dataclass(frozen=True)
class Claim:
    """Outcome of trying to claim a key: run the call, replay a response, or wait."""

    action: str  # run | replay | wait
    response: bytes = b""


def request_hash(method: str, request_bytes: bytes) -> str:
    return hashlib.sha256(method.encode() + b"\0" + request_bytes).hexdigest()


def _seal_context(scope: str, key: str) -> str:
    return f"idempotency\0{scope}\0{key}"


def _response_lost(key: str, method: str, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the first call with this idempotency-key was applied, but {why};"
        " read the resource to see the result",
        reason="IDEMPOTENCY_RESPONSE_LOST",
        metadata={"idempotency_key": key, "first_method": method},
    )


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
            # No WAL flush for the claim (PostgreSQL): PostgreSQL flushes WAL in order, so the
            # call's own commit (or the response record's) makes this claim durable too, and a
            # claim lost in a crash before either is exactly a first call that died: the retry runs.
            queries.skip_claim_flush(rt.store)
            locked_until = tx.now + timedelta(seconds=s.idempotency_stale_s)
            expire_time = tx.now + timedelta(seconds=s.idempotency_retention_s)
            # The common case, a new key, is one statement: insert unless the key exists.
            if queries.insert_claim(rt.store, scope, key, method, digest, tx.now, locked_until, expire_time):
                return Claim("run")
            record = queries.lock_record(rt.store, scope, key)
            if record is not None and record.expire_time <= tx.now:
                queries.delete_record(record)
                record = None
            if record is None:
                queries.create_claim(scope, key, method, digest, tx.now, locked_until, expire_time)
                return Claim("run")
            if record.method != method or record.request_hash != digest:
                raise InvalidArgument(
                    "this idempotency-key was already used with a different request",
                    reason="IDEMPOTENCY_KEY_REUSED",
                    metadata={"idempotency_key": key, "first_method": record.method},
                )
            if record.state == DONE:
                try:
                    response = rt.sealer.open_bytes(bytes(record.response or b""), _seal_context(scope, key))
                except Unsealable:
                    raise _response_lost(
                        key, record.method, "its stored response does not open here"
                    ) from None
                return Claim("replay", response)
            if record.locked_until > tx.now:
                return Claim("wait")  # the first call is still running
            if record.state == APPLIED:
                raise _response_lost(key, record.method, "the server stopped before storing its response")
            # The first caller died before committing anything: the retry takes the key over.
            record.locked_until = locked_until
            queries.save_record(record)
            return Claim("run")
    except queries.DuplicateKey:
        # A concurrent first call inserted the record between our read and insert.
        return Claim("wait")


def complete(rt: Runtime, scope: str, key: str, response: bytes) -> None:
    sealed = rt.sealer.seal_bytes(response, _seal_context(scope, key))
    with rt.store.write():
        queries.store_response(scope, key, sealed)


def release(rt: Runtime, scope: str, key: str) -> None:
    """The call failed: its error is not a result to replay, so a retry runs it again (also
    when it had committed part of its work before failing, as before the applied mark)."""
    with rt.store.write():
        queries.delete_unfinished(scope, key)


def purge_expired(rt: Runtime, batch: int = 5000) -> int:
    """Scheduler task: deletes expired records in bounded batches via the expire_time index."""
    total = 0
    while True:
        with rt.store.write() as tx:
            rows = queries.expired_keys(tx.now, batch)
            for scope, key in rows:
                queries.delete_key(scope, key)
        total += len(rows)
        if len(rows) < batch:
            return total
