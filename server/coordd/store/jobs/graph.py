"""The statements of pending jobs, dependencies and unique keys, run inside the caller's
transaction: claiming a unique key (INSERT ... ON CONFLICT DO NOTHING, so a racing duplicate
waits for the first transaction and then sees its key), the dependency edges, and the pending
jobs due for release (partial index `job_pending_due`)."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from coordd.store.jobs.models import Job, JobDependency, JobUnique
from coordd.store.models import TimestampField

_to_us = TimestampField().db_value
_to_time = TimestampField().python_value


class UniqueClaim(NamedTuple):
    """The job that holds a unique key, and until when (None: while it is unfinished)."""

    job_id: str
    expire_time: datetime | None


def claim_unique_key(
    key: str, job_id: str, expire_time: datetime | None, for_update: bool
) -> UniqueClaim | None:
    """Takes `key` for `job_id`; None when taken now, else the current holder (locked on
    PostgreSQL). A concurrent taker of the same key waits on the unique index until the first
    transaction ends, then finds its row: two submissions can never both take a key."""
    db = JobUnique._meta.database
    p = db.param
    taken = db.execute_sql(
        f"INSERT INTO job_unique (key, job, expire_time) VALUES ({p}, {p}, {p})"
        " ON CONFLICT (key) DO NOTHING RETURNING key",
        [key, job_id, _to_us(expire_time)],
    ).fetchall()
    if taken:
        return None
    sql = f"SELECT job, expire_time FROM job_unique WHERE key = {p}"
    if for_update:
        sql += " FOR UPDATE"
    row = db.execute_sql(sql, [key]).fetchone()
    if row is None:  # deleted meanwhile; cannot happen while keys are only replaced
        return claim_unique_key(key, job_id, expire_time, for_update)
    return UniqueClaim(row[0], _to_time(row[1]))


def replace_unique_key(key: str, old_job_id: str, job_id: str, expire_time: datetime | None) -> bool:
    """Hands a key whose holder no longer counts to `job_id`, if it still belongs to
    `old_job_id` (a concurrent replacer that won leaves this one with False)."""
    updated = (
        JobUnique.update(job=job_id, expire_time=expire_time)
        .where((JobUnique.key == key) & (JobUnique.job == old_job_id))
        .execute()
    )
    return updated == 1


def unique_holder(key: str) -> str | None:
    row = JobUnique.get_or_none(JobUnique.key == key)
    return row.job if row is not None else None


def delete_expired_unique_keys(now: datetime, limit: int) -> int:
    """Windowed keys whose window has passed (the table would otherwise keep one row per key
    ever used)."""
    keys = [
        r.key
        for r in JobUnique.select(JobUnique.key)
        .where(JobUnique.expire_time.is_null(False) & (JobUnique.expire_time <= now))
        .limit(limit)
    ]
    if keys:
        JobUnique.delete().where(JobUnique.key.in_(keys) & (JobUnique.expire_time <= now)).execute()
    return len(keys)


def insert_edges(edges: list[tuple[str, str]]) -> None:
    """Dependency edges (parent id, child id)."""
    if edges:
        JobDependency.insert_many([{"parent": p, "job": c} for p, c in edges]).execute()


def children_of(parent_ids: list[str]) -> list[tuple[str, str]]:
    """(parent id, child id) of every edge leaving `parent_ids`, children in id order."""
    if not parent_ids:
        return []
    query = (
        JobDependency.select(JobDependency.parent, JobDependency.job)
        .where(JobDependency.parent.in_(parent_ids))
        .order_by(JobDependency.job, JobDependency.parent)
    )
    return [(r.parent, r.job) for r in query]


def mark_has_children(job_ids: list[str]) -> None:
    if job_ids:
        Job.update(has_children=True).where(Job.id.in_(job_ids) & ~Job.has_children).execute()


def due_pending_ids(now: datetime, limit: int) -> list[str]:
    """Pending jobs with no parent left whose time has come, through `job_pending_due`."""
    query = (
        Job.select(Job.id)
        .where((Job.state == "pending") & (Job.parents_left == 0) & (Job.run_after <= now))
        .order_by(Job.run_after)
        .limit(limit)
    )
    return [r.id for r in query]
