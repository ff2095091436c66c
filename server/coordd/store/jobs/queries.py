"""The job statements of the hot path and of every state change, run inside the caller's
transaction: the single-statement claim, the lease check and batched write of completion
outputs (raw SQL: peewee's query builder cannot express them well, and its cost showed per
job), and the per-job row lock, attempt row and save. New rows (one INSERT or COPY a batch)
are in `coordd.store.jobs.inserts`, reads for views, stats and scheduler tasks in
`coordd.store.jobs.reads`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

import peewee

from coordd.store.db import Store, defer
from coordd.store.jobs.models import Job, JobAttempt
from coordd.store.models import TimestampField

_to_us = TimestampField().db_value
# Integer microseconds (as ClaimedRow carries times) -> an aware datetime.
time_of_us = TimestampField().python_value


class ClaimedRow(NamedTuple):
    """A job as a claim leaves it: what a worker needs, straight from the row. Times stay
    integer microseconds; a claim of 100 jobs spent a third of its CPU building and
    converting whole models before this."""

    id: str
    submitter: str
    kind: str
    model_ref: str
    input_data: bytes | None
    input_uri: str
    input_digest: str
    labels: list[str]
    gpus: int
    budget: int
    priority: int
    max_attempts: int
    schedule_to_start_ms: int
    start_to_close_ms: int
    heartbeat_ms: int
    schedule_to_close_ms: int
    attempt: int
    provider: str
    lease_expire_us: int
    create_us: int
    start_us: int
    payload_purged: bool


_CLAIMED_COLUMNS = (
    "id, submitter, kind, model_ref, input_data, input_uri, input_digest, labels, gpus, budget, priority,"
    " max_attempts, schedule_to_start_ms, start_to_close_ms, heartbeat_ms, schedule_to_close_ms, attempt,"
    " provider, lease_expire_time, create_time, start_time, payload_purged"
)
# PostgreSQL's UPDATE ... FROM needs them qualified (the CTE has an `id` too).
_CLAIMED_JOB_COLUMNS = ", ".join(f"job.{c.strip()}" for c in _CLAIMED_COLUMNS.split(","))


def _claimed(row: tuple[Any, ...]) -> ClaimedRow:
    labels = row[7]
    data = row[4]
    return ClaimedRow(
        row[0],
        row[1],
        row[2],
        row[3],
        None if data is None else bytes(data),
        row[5],
        row[6],
        [] if labels == "[]" else json.loads(labels),
        *row[8:21],
        bool(row[21]),
    )


# Candidates must come from walking job_claim_fair (before: job_claim_order) in order and
# stop at the LIMIT. Before a
# queue table's first ANALYZE (a freshly filled queue), the planner believed it nearly empty and
# chose a bitmap scan of every queued job plus a sort instead: measured, a claim of 100 from a
# 20,000-job queue took 54 ms instead of 15 ms, and grew with the queue. Transaction-local.
# JIT off too: the sort the reply-size window needs is then "disabled" (costed at 1e10), which
# took the plan over jit_above_cost: measured, 210 ms of JIT compilation per claim.
_ORDERED_SCAN_ONLY = "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off; SET LOCAL jit = off;"
_PLANNER_DEFAULTS = "RESET enable_bitmapscan; RESET enable_sort; RESET jit"

# What a candidate adds to the claim reply, from its variable-length columns in bytes (the
# domain adds a fixed overhead per job: domain.jobs.specs.claim_bytes computes the same sum).
# Neither reads a TOASTed or overflowed payload: PostgreSQL's octet_length takes a bytea's size
# from its header, SQLite's length() of a BLOB from the record.
CLAIM_SIZE_SQL = {
    True: "COALESCE(octet_length(j.input_data), 0) + octet_length(j.input_uri)"
    " + octet_length(j.model_ref) + octet_length(j.labels)",
    False: "COALESCE(length(j.input_data), 0) + length(CAST(j.input_uri AS BLOB))"
    " + length(CAST(j.model_ref AS BLOB)) + length(CAST(j.labels AS BLOB))",
}


def _fitting(candidates: str, p: str) -> str:
    """The ids among `candidates` (id, priority, fair_seq, size) that fit in a reply of `p` bytes, in
    claim order: a running total of the sizes, stopping before the first job that would
    overflow it; a job larger than the whole reply is skipped (left queued)."""
    return (
        f"SELECT id FROM (SELECT id, size, SUM(CASE WHEN size <= {p} THEN size ELSE 0 END)"
        " OVER (ORDER BY priority DESC, fair_seq, id ROWS UNBOUNDED PRECEDING) AS total"
        f" FROM ({candidates}) c0) c1 WHERE size <= {p} AND total <= {p}"
    )


def claimable_where(
    store: Store, now: datetime, labels: frozenset[str], gpus: int
) -> tuple[list[str], list[object]]:
    """The conditions (on `job j`) of a job a worker with `labels` and `gpus` may claim now,
    and their parameters."""
    p = store.db.param
    where = ["j.state = 'queued'", f"j.run_after <= {p}", f"j.gpus <= {p}"]
    params: list[object] = [_to_us(now), gpus]
    if labels:
        marks = ", ".join([p] * len(labels))
        where.append(
            "(j.label_count = 0 OR NOT EXISTS (SELECT 1 FROM job_label l"
            f" WHERE l.job_id = j.id AND l.label NOT IN ({marks})))"
        )
        params.extend(sorted(labels))
    else:
        where.append("j.label_count = 0")
    return where, params


def claim_jobs(
    store: Store,
    now: datetime,
    lease_id: str,
    provider_id: str,
    labels: frozenset[str],
    gpus: int,
    limit: int,
    max_bytes: int,
    job_overhead: int,
    only_job: str | None = None,
    only_jobs: list[str] | None = None,
    unless_capped: bool = False,
) -> list[ClaimedRow]:
    """Leases up to `limit` claimable jobs whose sizes (their variable-length columns plus
    `job_overhead` each) add up to at most `max_bytes`; returns them as claimed.

    One statement. PostgreSQL: candidates are locked with FOR UPDATE SKIP LOCKED, so
    concurrent claimers skip each other's rows instead of waiting or double-claiming.
    SQLite: UPDATE ... RETURNING inside the serialized immediate transaction
    (`store.write()`), which is the same guarantee. Order: priority (high first), then the
    fair share (fair_seq), then id (time-ordered: oldest first), via the partial index
    `job_claim_fair`. A job's labels
    must all be among the worker's labels. With `unless_capped`, nothing is claimed while any
    concurrency cap exists (the same statement checks it).
    """
    db = store.db
    p = db.param
    now_us = _to_us(now)
    where, params = claimable_where(store, now, labels, gpus)
    if only_job is not None:
        only_jobs = [only_job]
    if only_jobs is not None:
        where.append(f"j.id IN ({', '.join([p] * len(only_jobs))})")
        params.extend(only_jobs)
    if unless_capped:
        # Uncorrelated: evaluated once (PostgreSQL: a one-time filter), no row read when a
        # cap exists; the caller then takes the capped path.
        where.append("NOT EXISTS (SELECT 1 FROM job_limit)")
    lock = " FOR UPDATE SKIP LOCKED" if store.is_postgres else ""
    size = f"{CLAIM_SIZE_SQL[store.is_postgres]} + {int(job_overhead)}"
    candidates = (
        f"SELECT j.id, j.priority, j.fair_seq, {size} AS size FROM job j WHERE {' AND '.join(where)}"
        f" ORDER BY j.priority DESC, j.fair_seq, j.id LIMIT {p}{lock}"
    )
    params.append(limit)
    # Row locks cannot be taken beside a window function: the candidates are locked first
    # (PostgreSQL: a CTE), then the ones that fit are chosen among them.
    fitting = _fitting("SELECT * FROM c" if store.is_postgres else candidates, p)
    assignments = (
        f"state = 'running', attempt = attempt + 1, lease_id = {p}, provider = {p},"
        f" lease_expire_time = {p} + 1000 * lease_ms,"
        f" attempt_deadline = CASE WHEN start_to_close_ms > 0 THEN {p} + 1000 * start_to_close_ms END,"
        f" start_time = {p}, start_deadline = NULL, progress = 0"
    )
    set_params: list[object] = [lease_id, provider_id, now_us, now_us, now_us]
    if store.is_postgres:
        sql = (
            f"{_ORDERED_SCAN_ONLY} WITH c AS ({candidates}), f AS ({fitting})"
            f" UPDATE job SET {assignments} FROM f WHERE job.id = f.id RETURNING {_CLAIMED_JOB_COLUMNS}"
        )
        rows = db.execute_sql(sql, [*params, max_bytes, max_bytes, max_bytes, *set_params]).fetchall()
        defer(_PLANNER_DEFAULTS)  # sent with the transaction's next statement (store/pg.py)
    else:
        sql = f"UPDATE job SET {assignments} WHERE id IN ({fitting}) RETURNING {_CLAIMED_COLUMNS}"
        rows = db.execute_sql(sql, [*set_params, max_bytes, *params, max_bytes, max_bytes]).fetchall()
    return [_claimed(r) for r in rows]


class LeasedRow(NamedTuple):
    """What a result statement and its payment need from a job whose lease was just checked."""

    id: str
    submitter: str
    kind: str
    model_ref: str
    input_digest: str
    attempt: int
    start_time: datetime
    budget: int
    # Some pending job waits for this one (domain.jobs.graph).
    has_children: bool


def lock_leased(store: Store, provider_id: str, leases: list[tuple[str, int, str]]) -> list[LeasedRow]:
    """Locks the jobs among `leases` (job id, attempt, lease id) whose lease is still held by
    `provider_id` with no cancellation pending, in one statement; the others are left alone
    for the caller to explain. PostgreSQL: FOR UPDATE, so the rows cannot change before the
    caller's UPDATE; SQLite: the immediate transaction already excludes other writers.

    Rows are found by primary key (`id IN (...)`) and the lease compared as one string: a
    join against a VALUES list let the planner scan every running job instead (measured:
    PostgreSQL's CPU per job doubled between a 8,000- and a 20,000-job queue)."""
    if not leases:
        return []
    p = store.db.param
    concat = "job.id || ':' || job.attempt || ':' || job.lease_id"
    sql = (
        "SELECT job.id, job.submitter, job.kind, job.model_ref, job.input_digest, job.attempt,"
        " job.start_time, job.budget, job.has_children"
        f" FROM job WHERE job.id IN ({', '.join([p] * len(leases))})"
        f" AND {concat} IN ({', '.join([p] * len(leases))})"
        f" AND job.state = 'running' AND job.provider = {p} AND NOT job.cancel_requested"
    )
    if store.is_postgres:
        sql += " FOR UPDATE"
    params: list[object] = [job_id for job_id, _, _ in leases]
    params.extend(f"{job_id}:{attempt}:{lease_id}" for job_id, attempt, lease_id in leases)
    params.append(provider_id)
    to_time = TimestampField().python_value
    return [
        LeasedRow(r[0], r[1], r[2], r[3], r[4], int(r[5]), to_time(r[6]), int(r[7]), bool(r[8]))
        for r in store.db.execute_sql(sql, params).fetchall()
    ]


def record_successes(
    store: Store,
    now: datetime,
    purge_time: datetime,
    key_id: str,
    results: list[tuple[str, int, bytes | None, str, str, bytes]],
) -> None:
    """Marks jobs locked by `lock_leased` succeeded with one UPDATE. `results` are (job id, fee,
    output data, output uri, output digest, attestation signature). The redundant `id IN`
    keeps the planner on the primary key (see lock_leased). Sent with the transaction's next
    statement (store/pg.py): its caller fails the whole batch on any error alike."""
    if not results:
        return
    p = store.db.param
    blob, integer = ("bytea", "bigint") if store.is_postgres else ("BLOB", "INTEGER")
    row = f"({p}, CAST({p} AS {integer}), CAST({p} AS {blob}), {p}, {p}, CAST({p} AS {blob}))"
    params: list[object] = [x for r in results for x in r]
    params.extend((_to_us(now), _to_us(purge_time), key_id))
    defer(
        f"WITH v(id, fee, data, uri, digest, sig) AS (VALUES {', '.join([row] * len(results))})"
        " UPDATE job SET state = 'succeeded', error = '', progress = 1.0, lease_id = NULL,"
        " lease_expire_time = NULL, attempt_deadline = NULL, start_deadline = NULL, close_deadline = NULL,"
        f" finish_time = {p}, purge_time = {p}, fee = v.fee, output_data = v.data, output_uri = v.uri,"
        f" output_digest = v.digest, attestation_key_id = {p}, attestation_sig = v.sig"
        f" FROM v WHERE job.id = v.id AND job.id IN ({', '.join([p] * len(results))})",
        [*params, *(r[0] for r in results)],
    )


# -- one job at a time ------------------------------------------------------------------------


def lock_job(job_id: str) -> Job | None:
    """The whole job row, locked until the end of the transaction on PostgreSQL (SQLite's
    immediate transaction already excludes other writers): every cold state change starts
    here, whether it reaches the job by its id, a lease, a parent or a unique key, and
    writes through `coordd.store.jobs.writes`."""
    query = Job.select().where(Job.id == job_id)
    db = Job._meta.database
    if not isinstance(getattr(db, "obj", db), peewee.SqliteDatabase):
        query = query.for_update()
    return query.first()


def job_by_id(job_id: str) -> Job:
    """The whole row of a job known to exist."""
    return Job.get_by_id(job_id)


def insert_attempt(
    job_id: str,
    attempt: int,
    provider: str,
    lease_id: str,
    start_time: datetime,
    end_time: datetime,
    outcome: str,
    error: str,
) -> None:
    """The history row of an attempt that ended without success."""
    JobAttempt.insert(
        job=job_id,
        attempt=attempt,
        provider=provider,
        lease_id=lease_id,
        start_time=start_time,
        end_time=end_time,
        outcome=outcome,
        error=error,
    ).execute()


def attempt_row(job_id: str, attempt: int) -> JobAttempt | None:
    """The history row of one ended attempt, if it has one."""
    return JobAttempt.get_or_none((JobAttempt.job == job_id) & (JobAttempt.attempt == attempt))


def purge_due_payloads(now: datetime, limit: int) -> list[str]:
    """Deletes the inline input/output data of up to `limit` jobs whose purge time has come
    (oldest first); their ids."""
    ids = [
        r.id for r in Job.select(Job.id).where(Job.purge_time <= now).order_by(Job.purge_time).limit(limit)
    ]
    if ids:
        Job.update(input_data=None, output_data=None, payload_purged=True, purge_time=None).where(
            Job.id.in_(ids)
        ).execute()
    return ids
