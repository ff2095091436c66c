"""The job statements peewee's query builder cannot express well: the single-statement claim
and the batched write of completion outputs. Both run inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import peewee

from coordd.store.db import Store
from coordd.store.job_models import Job
from coordd.store.models import JSONField, TimestampField

_to_us = TimestampField().db_value
# Columns whose stored form differs from the Python value; every other column is used as is.
_CONVERT = {
    name: field.python_value
    for name, field in Job._meta.columns.items()
    if isinstance(field, TimestampField | JSONField | peewee.BooleanField)
}


def _jobs_from(cursor: Any) -> list[Job]:
    """Job models from a cursor over whole job rows, without the query builder's per-field
    descriptor calls (they were most of a claim's CPU time)."""
    names = [d[0] for d in cursor.description]
    jobs = []
    for row in cursor.fetchall():
        data = dict(zip(names, row, strict=True))
        for name, convert in _CONVERT.items():
            if name in data:
                data[name] = convert(data[name])
        job = Job(__no_default__=1)
        job.__data__ = data
        jobs.append(job)
    return jobs


def claim_jobs(
    store: Store,
    now: datetime,
    lease_id: str,
    provider_id: str,
    labels: frozenset[str],
    gpus: int,
    limit: int,
    only_job: str | None = None,
) -> list[Job]:
    """Leases up to `limit` claimable jobs and opens their attempt rows; returns the jobs as
    updated.

    PostgreSQL: one statement. Candidates are locked with FOR UPDATE SKIP LOCKED, so
    concurrent claimers skip each other's rows instead of waiting or double-claiming; the
    attempt rows are inserted by a data-modifying CTE. SQLite: UPDATE ... RETURNING inside
    the serialized immediate transaction (`store.write()`), which is the same guarantee,
    then one INSERT for the attempts. Order: priority (high first), then id (time-ordered:
    oldest first), via the partial index `job_claim_order`. A job's labels must all be
    among the worker's labels.
    """
    db = store.db
    p = db.param
    now_us = _to_us(now)
    where = ["j.state = 'queued'", f"j.run_after <= {p}", f"j.gpus <= {p}"]
    params: list[object] = [now_us, gpus]
    if labels:
        marks = ", ".join([p] * len(labels))
        where.append(
            "(j.label_count = 0 OR NOT EXISTS (SELECT 1 FROM job_label l"
            f" WHERE l.job_id = j.id AND l.label NOT IN ({marks})))"
        )
        params.extend(sorted(labels))
    else:
        where.append("j.label_count = 0")
    if only_job is not None:
        where.append(f"j.id = {p}")
        params.append(only_job)
    lock = " FOR UPDATE SKIP LOCKED" if store.is_postgres else ""
    candidates = (
        f"SELECT j.id FROM job j WHERE {' AND '.join(where)} ORDER BY j.priority DESC, j.id LIMIT {p}{lock}"
    )
    params.append(limit)
    assignments = (
        f"state = 'running', attempt = attempt + 1, lease_id = {p}, provider = {p},"
        f" lease_expire_time = {p} + 1000 * lease_ms,"
        f" attempt_deadline = CASE WHEN start_to_close_ms > 0 THEN {p} + 1000 * start_to_close_ms END,"
        f" start_time = {p}, start_deadline = NULL, progress = 0"
    )
    set_params: list[object] = [lease_id, provider_id, now_us, now_us, now_us]
    if store.is_postgres:
        sql = (
            f"WITH c AS ({candidates}),"
            f" u AS (UPDATE job SET {assignments} FROM c WHERE job.id = c.id RETURNING job.*),"
            " a AS (INSERT INTO job_attempt (job_id, attempt, provider, lease_id, start_time, outcome, error)"
            f" SELECT u.id, u.attempt, {p}, {p}, {p}, 'running', '' FROM u)"
            " SELECT * FROM u"
        )
        return _jobs_from(db.execute_sql(sql, [*params, *set_params, provider_id, lease_id, now_us]))
    sql = f"UPDATE job SET {assignments} WHERE id IN ({candidates}) RETURNING *"
    jobs = _jobs_from(db.execute_sql(sql, [*set_params, *params]))
    _insert_rows(
        store,
        "job_attempt",
        ["job_id", "attempt", "provider", "lease_id", "start_time", "outcome", "error"],
        [(j.id, j.attempt, provider_id, lease_id, now_us, "running", "") for j in jobs],
    )
    return jobs


def succeed_rows(
    store: Store,
    now: datetime,
    purge_time: datetime,
    fee_bps: int,
    provider_id: str,
    items: list[tuple[str, int, str, bytes | None, str, str]],
) -> list[tuple[str, str, str, str, str, int, int, int, datetime]]:
    """Marks many leased jobs succeeded (and closes their attempts) with one conditional UPDATE.

    `items` are (job id, attempt, lease id, output data, output uri, output digest). A row
    changes only while the lease is still held (running, same attempt and lease id, this
    provider) and no cancellation is pending; the caller explains the others. Returns
    (id, submitter, kind, model_ref, input_digest, budget, fee, attempt, start_time) of each
    job that succeeded.
    """
    if not items:
        return []
    p = store.db.param
    blob, integer = ("bytea", "integer") if store.is_postgres else ("BLOB", "INTEGER")
    row = f"({p}, CAST({p} AS {integer}), {p}, CAST({p} AS {blob}), {p}, {p})"
    binary = _binary(store)
    params: list[object] = []
    for job_id, attempt, lease_id, data, uri, digest in items:
        params.extend((job_id, attempt, lease_id, None if data is None else binary(data), uri, digest))
    update = (
        " UPDATE job SET state = 'succeeded', error = '', progress = 1.0, lease_id = NULL,"
        " lease_expire_time = NULL, attempt_deadline = NULL, start_deadline = NULL, close_deadline = NULL,"
        f" finish_time = {p}, purge_time = {p}, fee = job.budget * {p} / 10000,"
        " output_data = v.data, output_uri = v.uri, output_digest = v.digest"
        " FROM v WHERE job.id = v.id AND job.state = 'running' AND job.attempt = v.attempt"
        f" AND job.lease_id = v.lease_id AND job.provider = {p} AND NOT job.cancel_requested"
        " RETURNING job.id, job.submitter, job.kind, job.model_ref, job.input_digest, job.budget, job.fee,"
        " job.attempt, job.start_time"
    )
    values = f"v(id, attempt, lease_id, data, uri, digest) AS (VALUES {', '.join([row] * len(items))})"
    now_us = _to_us(now)
    params.extend((now_us, _to_us(purge_time), fee_bps, provider_id))
    close_attempts = f"UPDATE job_attempt SET end_time = {p}, outcome = 'succeeded', error = ''"
    if store.is_postgres:
        # The attempt rows are closed by a data-modifying CTE: still one statement.
        sql = (
            f"WITH {values}, u AS ({update}),"
            f" a AS ({close_attempts} FROM u"
            " WHERE job_attempt.job_id = u.id AND job_attempt.attempt = u.attempt)"
            " SELECT * FROM u"
        )
        rows = store.db.execute_sql(sql, [*params, now_us]).fetchall()
    else:
        rows = store.db.execute_sql(f"WITH {values}{update}", params).fetchall()
        if rows:
            pairs = ", ".join([f"({p}, {p})"] * len(rows))
            store.db.execute_sql(
                f"{close_attempts} WHERE (job_id, attempt) IN (VALUES {pairs})",
                [now_us, *[x for r in rows for x in (r[0], r[7])]],
            )
    to_time = TimestampField().python_value
    return [(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), int(r[7]), to_time(r[8])) for r in rows]


def _insert_rows(store: Store, table: str, columns: list[str], rows: list[tuple[object, ...]]) -> None:
    """A multi-row INSERT without the query builder (its per-value cost dominates large batches)."""
    if not rows:
        return
    cursor = store.db.cursor()
    names = ", ".join(columns)
    if store.is_postgres:
        from psycopg2.extras import execute_values

        execute_values(cursor, f"INSERT INTO {table} ({names}) VALUES %s", rows, page_size=len(rows))
    else:
        marks = ", ".join("?" * len(columns))
        cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)


def insert_attestations(store: Store, now: datetime, rows: list[tuple[str, str, bytes, str, bytes]]) -> None:
    """(job id, payload type, payload, key id, signature) for each succeeded job."""
    now_us = _to_us(now)
    binary = _binary(store)
    _insert_rows(
        store,
        "job_attestation",
        ["job_id", "payload_type", "payload", "key_id", "signature", "create_time"],
        [(j, t, binary(p), k, binary(s), now_us) for j, t, p, k, s in rows],
    )


def _binary(store: Store):  # type: ignore[no-untyped-def]
    if store.is_postgres:
        from psycopg2 import Binary

        return Binary
    return bytes
