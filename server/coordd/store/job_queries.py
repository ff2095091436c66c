"""The job statements peewee's query builder cannot express well: the single-statement claim
and the batched write of completion outputs. Both run inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from coordd.store.db import Store
from coordd.store.models import TimestampField

_to_us = TimestampField().db_value


def claim_rows(
    store: Store,
    now: datetime,
    lease_id: str,
    provider_id: str,
    labels: frozenset[str],
    gpus: int,
    limit: int,
    only_job: str | None = None,
) -> list[tuple[str, int]]:
    """Leases up to `limit` claimable jobs with one UPDATE; returns (job id, attempt) pairs.

    PostgreSQL: candidates are locked with FOR UPDATE SKIP LOCKED, so concurrent claimers
    skip each other's rows instead of waiting or double-claiming. SQLite: the statement runs
    inside the serialized immediate transaction (`store.write()`), the same guarantee.
    Order: priority (high first), then id (time-ordered: oldest first), via the partial index
    `job_claim_order`. A job's labels must all be among the worker's labels.
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
            f"WITH c AS ({candidates}) UPDATE job SET {assignments} FROM c WHERE job.id = c.id"
            " RETURNING job.id, job.attempt"
        )
        cursor = db.execute_sql(sql, [*params, *set_params])
    else:
        sql = f"UPDATE job SET {assignments} WHERE id IN ({candidates}) RETURNING id, attempt"
        cursor = db.execute_sql(sql, [*set_params, *params])
    return [(str(r[0]), int(r[1])) for r in cursor.fetchall()]


def set_outputs(store: Store, rows: list[tuple[str, bytes | None, str, str, int]]) -> None:
    """(job id, output data, output uri, output digest, fee) for many jobs in one round trip."""
    if not rows:
        return
    cursor = store.db.cursor()
    if store.is_postgres:
        from psycopg2.extras import execute_values

        execute_values(
            cursor,
            "UPDATE job SET output_data = v.data, output_uri = v.uri, output_digest = v.digest, fee = v.fee"
            " FROM (VALUES %s) AS v(id, data, uri, digest, fee) WHERE job.id = v.id",
            [(i, d, u, g, f) for i, d, u, g, f in rows],
            template="(%s, %s::bytea, %s, %s, %s::bigint)",
            page_size=len(rows),
        )
    else:
        cursor.executemany(
            "UPDATE job SET output_data = ?, output_uri = ?, output_digest = ?, fee = ? WHERE id = ?",
            [(d, u, g, f, i) for i, d, u, g, f in rows],
        )
