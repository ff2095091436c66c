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

Methods registered with `claims_in_call` (Register, the hottest keyed call) skip the two extra
transactions: `claim` returns "run" at once; the call's own transaction looks for its key first
(`look_in_call`: a record found is replayed or refused as `claim` would, an expired one or a dead
caller's `running` claim is deleted) and writes the finished record, sealed response included,
with its effect (`in_call`, `write_in_call`). The unique key still decides: a concurrent call
with the same key that loses the insert answers with the winner's stored response
(`answer_from_record`), never a second effect. The interceptor skips `claim`, `complete` and
`release` for them altogether (`writes_in_call`): two thread hops and a transaction fewer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from coordd.core.errors import Aborted, FailedPrecondition, InvalidArgument, Violations
from coordd.crypto.sealing import Unsealable
from coordd.runtime import Runtime
from coordd.store import idempotency_queries as queries
from coordd.store.idempotency_marks import APPLIED, DONE, PENDING, RUNNING, PendingKey

__all__ = [
    "PENDING",
    "Claim",
    "InCall",
    "PendingKey",
    "answer_from_record",
    "check_key",
    "claim",
    "claims_in_call",
    "complete",
    "in_call",
    "key_was_used",
    "look_in_call",
    "looks_first",
    "release",
    "request_hash",
    "write_in_call",
    "writes_in_call",
]

MAX_KEY_LENGTH = 128
# The initial metadata a replayed response carries.
REPLAYED_HEADER = "idempotency-replayed"

# Methods whose calls write their finished record in their own transaction.
_IN_CALL: set[str] = set()
# (scope, key) of in-call records committed in this process whose `complete` is still to come.


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


def claims_in_call(method: str) -> None:
    """`method` (a full gRPC method name) writes its idempotency record in its own
    transaction, through `in_call` and `write_in_call`, for every answer it gives."""
    _IN_CALL.add(method)


def claim(rt: Runtime, scope: str, key: str, method: str, digest: str) -> Claim:
    if method in _IN_CALL:
        # The call's own transaction looks for the key (`look_in_call`) and claims it.
        return Claim("run")
    return _claim_locked(rt, scope, key, method, digest)


def writes_in_call(method: str) -> bool:
    """True for `claims_in_call` methods: their calls need no `claim`, `complete` or `release`
    around them (the interceptor may skip those three and just set PENDING for the call)."""
    return method in _IN_CALL


def _claim_locked(rt: Runtime, scope: str, key: str, method: str, digest: str) -> Claim:
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


@dataclass(frozen=True)
class InCall:
    """The key of a running call of a `claims_in_call` method, for its own transaction."""

    scope: str
    key: str
    method: str
    digest: str
    pending: PendingKey


def in_call(method: str, request_bytes: bytes) -> InCall | None:
    """The servicer of a `claims_in_call` method asks this first (deterministic request
    bytes, as the interceptor hashes them): the call's key, or None (no key)."""
    pending = PENDING.get()
    if pending is None or method not in _IN_CALL:
        return None
    # Nothing of this call will ever be `running` to mark: the record is written finished.
    pending.applied = True
    return InCall(pending.scope, pending.key, method, request_hash(method, request_bytes), pending)


def looks_first(rt: Runtime) -> bool:
    """Whether a batch's keyed calls look for their keys (`look_in_call`) before their effect on
    every run. SQLite: yes. PostgreSQL: only on a run again after a conflict; the first run
    writes its records unlooked, with the COMMIT, and a key used before fails that COMMIT
    (`key_was_used`): retries are rare, so the common call saves the look's round trip."""
    return not rt.store.is_postgres


def key_was_used(exc: BaseException) -> bool:
    """Whether a batch's failed COMMIT (PostgreSQL) was one of its records meeting a key used
    before: its run again must look for its keys first."""
    return queries.is_record_conflict(exc)


def write_in_call(rt: Runtime, answers: list[tuple[InCall, bytes]], now: datetime) -> set[tuple[str, str]]:
    """Inside the call's transaction: the finished records (responses sealed) of these calls, in
    one statement. Returns the (scope, key) that were taken already (by a committed record: the
    caller must answer those with `answer_from_record` and undo their effect). On PostgreSQL the
    statement goes with the COMMIT and returns nothing: a key taken meanwhile fails the commit as
    a write conflict instead (store/idempotency_queries.py: `insert_done`), and the batch's run
    again finds the record (`look_in_call`). The others count as stored once the transaction
    commits: see `committed`."""
    expire_time = now + timedelta(seconds=rt.settings.idempotency_retention_s)
    rows = []
    for k, response in answers:
        sealed = rt.sealer.seal_bytes(response, _seal_context(k.scope, k.key))
        rows.append((k.scope, k.key, k.method, k.digest, sealed, now, expire_time))
    inserted = queries.insert_done(rows)
    if inserted is None:
        return set()
    return {(k.scope, k.key) for k, _ in answers} - inserted


def look_in_call(rt: Runtime, keys: list[InCall], now: datetime) -> dict[tuple[str, str], bytes | Exception]:
    """Inside the call's transaction, before its effect: what `claim` would have found for
    these keys, in one statement. A key with a live record gets its answer (the stored
    response to replay, or the error: another request, a first call still running, a lost
    response); an expired record, or a dead caller's `running` claim, is deleted and the key
    is free (absent from the result), as are keys without a record."""
    found = queries.records_of([(k.scope, k.key) for k in keys])
    answers: dict[tuple[str, str], bytes | Exception] = {}
    for k in keys:
        record = found.get((k.scope, k.key))
        if record is None:
            continue
        if record.expire_time <= now or (record.state == RUNNING and record.locked_until <= now):
            queries.delete_key(k.scope, k.key)
            continue
        try:
            answers[(k.scope, k.key)] = _answer(rt, k, record)
        except (InvalidArgument, FailedPrecondition, Aborted) as exc:
            answers[(k.scope, k.key)] = exc
    return answers


def _answer(rt: Runtime, k: InCall, record: queries.Live | queries.Found) -> bytes:
    if record.method != k.method or record.request_hash != k.digest:
        raise InvalidArgument(
            "this idempotency-key was already used with a different request",
            reason="IDEMPOTENCY_KEY_REUSED",
            metadata={"idempotency_key": k.key, "first_method": record.method},
        )
    if record.state == APPLIED and isinstance(record, queries.Live) and record.locked_until <= rt.now():
        raise _response_lost(k.key, record.method, "the server stopped before storing its response")
    if record.state != DONE:
        raise Aborted(
            "a call with this idempotency-key is still running; retry later",
            reason="IDEMPOTENCY_KEY_IN_USE",
            metadata={"idempotency_key": k.key},
        )
    try:
        return rt.sealer.open_bytes(bytes(record.response or b""), _seal_context(k.scope, k.key))
    except Unsealable:
        raise _response_lost(k.key, record.method, "its stored response does not open here") from None


def answer_from_record(rt: Runtime, k: InCall) -> bytes:
    """The response another call with the same key stored (it committed first), or the error a
    retry would get from `claim`: a different request, or a record without a response."""
    record = queries.find_record(k.scope, k.key)
    if record is None:
        raise FailedPrecondition(
            "a concurrent call with this idempotency-key conflicted; retry", reason="CONFLICT"
        )
    return _answer(rt, k, record)


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
