"""Job reads: one job and its ended attempts, queue positions, a submitter's page of jobs,
pre-migration-12 attestations, the queue statistics and the due rows of scheduler tasks.
Each names the index it walks where that matters."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import peewee

from coordd.core.paging import Page, PageRequest, encode_token
from coordd.store.db import Store
from coordd.store.jobs.models import Job, JobAttempt, JobAttestation
from coordd.store.jobs.queries import CLAIM_SIZE_SQL
from coordd.store.models import TimestampField
from coordd.store.paging import keyset_page


def find_job(job_id: str) -> Job | None:
    return Job.get_or_none(Job.id == job_id)


class SizedJob(NamedTuple):
    """A job row and the sizes of its inline payloads. Read without payloads, the row's
    `input_data` and `output_data` are None whatever they hold."""

    job: Job
    input_size: int
    output_size: int


_LISTED_FIELDS = [f for f in Job._meta.sorted_fields if f.name not in ("input_data", "output_data")]
# Sizes without reading the payloads: length() of a bytea/BLOB comes from its header/record.
_SIZES = (
    peewee.fn.COALESCE(peewee.fn.LENGTH(Job.input_data), 0).alias("input_size"),
    peewee.fn.COALESCE(peewee.fn.LENGTH(Job.output_data), 0).alias("output_size"),
)


def _sized(row: Job) -> SizedJob:
    return SizedJob(row, int(row.input_size), int(row.output_size))  # type: ignore[attr-defined]


def find_sized_job(job_id: str, payloads: bool) -> SizedJob | None:
    """One job with its payload sizes; with `payloads`, the payloads too (the whole row)."""
    if payloads:
        job = find_job(job_id)
        if job is None:
            return None
        return SizedJob(job, len(job.input_data or b""), len(job.output_data or b""))
    row = Job.select(*_LISTED_FIELDS, *_SIZES).where(Job.id == job_id).first()
    return None if row is None else _sized(row)


def payloads_of(job_ids: list[str]) -> dict[str, tuple[bytes | None, bytes | None]]:
    """Inline input and output data of these jobs, by id."""
    if not job_ids:
        return {}
    query = Job.select(Job.id, Job.input_data, Job.output_data).where(Job.id.in_(job_ids))
    return {
        r.id: (
            None if r.input_data is None else bytes(r.input_data),
            None if r.output_data is None else bytes(r.output_data),
        )
        for r in query
    }


def ended_attempts(job_id: str) -> list[JobAttempt]:
    """The stored rows of a job's attempts that ended without success, in attempt order."""
    return list(JobAttempt.select().where(JobAttempt.job == job_id).order_by(JobAttempt.attempt))


def count_attempts(job_id: str, outcome: str) -> int:
    """A job's ended attempts with `outcome`, through the (job_id, attempt) index."""
    return JobAttempt.select().where((JobAttempt.job == job_id) & (JobAttempt.outcome == outcome)).count()


def count_ahead(state: str, priority: int, job_id: str, fair_seq: int = 0) -> int:
    """Jobs in `state` that come before this one in claim order (priority, fair_seq, id)."""
    same = Job.priority == priority
    return (
        Job.select()
        .where(
            (Job.state == state)
            & (
                (Job.priority > priority)
                | (same & (Job.fair_seq < fair_seq))
                | (same & (Job.fair_seq == fair_seq) & (Job.id < job_id))
            )
        )
        .count()
    )


def jobs_of(
    submitter: str | None, state: str, kind: str, page: PageRequest, payload_budget: int | None = None
) -> Page[SizedJob]:
    """A submitter's jobs (every submitter's with None), newest first, optionally of one
    state and kind, with their payload sizes. With `payload_budget`, also their payloads, and
    the page ends before the first job (after at least one) whose payloads would take the
    page's total over the budget; the next page starts there. Payloads are read only for the
    jobs kept."""
    filters = {"s": state, "k": kind, "u": submitter or "-"}
    query = Job.select(*_LISTED_FIELDS, *_SIZES)
    if submitter is not None:
        query = query.where(Job.submitter == submitter)
    if state:
        query = query.where(Job.state == state)
    if kind:
        query = query.where(Job.kind == kind)
    found = keyset_page(query, Job.id, page, filters, descending=True)
    items = [_sized(row) for row in found.items]
    if payload_budget is None:
        return Page(items, found.next_token)
    kept: list[SizedJob] = []
    total = 0
    for item in items:
        total += item.input_size + item.output_size
        if kept and total > payload_budget:
            break
        kept.append(item)
    next_token = found.next_token
    if len(kept) < len(items):
        next_token = encode_token(kept[-1].job.id, filters)
    payloads = payloads_of([item.job.id for item in kept])
    for item in kept:
        item.job.input_data, item.job.output_data = payloads.get(item.job.id, (None, None))
    return Page(kept, next_token)


def legacy_attestation(job_id: str) -> JobAttestation | None:
    """The stored envelope of a job signed before migration 12."""
    return JobAttestation.get_or_none(JobAttestation.job == job_id)


# -- queue statistics -------------------------------------------------------------------------


class Depth(NamedTuple):
    priority: int
    count: int


def count_by_priority(state: str, leased_only: bool = False) -> list[Depth]:
    """Jobs in `state` per priority, highest first. Queued jobs are counted through
    job_claim_fair, pending ones through job_pending_priority (migration 210); running ones
    with `leased_only` through job_lease_due (a job is running
    exactly while it has a lease expiry)."""
    where = Job.state == state
    if leased_only:
        where = Job.lease_expire_time.is_null(False) & where
    query = Job.select(Job.priority, peewee.fn.COUNT(Job.id).alias("n")).where(where)
    return [Depth(r.priority, r.n) for r in query.group_by(Job.priority).order_by(Job.priority.desc())]


def oldest_claimable(state: str, now: datetime) -> datetime | None:
    """The earliest queue time among jobs in `state` that may run by `now`."""
    oldest = (
        Job.select(peewee.fn.MIN(Job.queue_time))
        .where((Job.state == state) & (Job.run_after <= now))
        .scalar()
    )
    if oldest is not None and not isinstance(oldest, datetime):
        oldest = TimestampField().python_value(oldest)
    return oldest


class Finished(NamedTuple):
    count: int
    average_run_us: Any  # None when no job of the state finished


def finished_since(since: datetime, states: list[str]) -> dict[str, Finished]:
    """Per state among `states`: jobs finished since `since`, and their average run time."""
    query = (
        Job.select(
            Job.state,
            peewee.fn.COUNT(Job.id).alias("n"),
            peewee.fn.AVG(Job.finish_time - Job.start_time).alias("run_us"),
        )
        .where((Job.finish_time >= since) & Job.state.in_(states))
        .group_by(Job.state)
    )
    return {r.state: Finished(r.n, r.run_us) for r in query}


# -- scheduler tasks ---------------------------------------------------------------------------


def queued_larger_than(store: Store, max_bytes: int, job_overhead: int, limit: int) -> list[str]:
    """Ids of up to `limit` queued jobs whose claim size (see queries.claim_jobs) exceeds
    `max_bytes`. Reads every queued row: run once per start, not per tick."""
    p = store.db.param
    size = f"{CLAIM_SIZE_SQL[store.is_postgres]} + {int(job_overhead)}"
    sql = f"SELECT j.id FROM job j WHERE j.state = 'queued' AND {size} > {p} ORDER BY j.id LIMIT {p}"
    return [r[0] for r in store.db.execute_sql(sql, [max_bytes, limit]).fetchall()]


def due_ids(column: str, states: tuple[str, ...], now: datetime, limit: int) -> list[str]:
    """Ids of up to `limit` jobs in `states` whose due-time `column` (lease_expire_time,
    start_deadline or close_deadline; each has a partial index) is at or before `now`,
    earliest first."""
    field = getattr(Job, column)
    return [
        r.id
        for r in Job.select(Job.id).where((field <= now) & Job.state.in_(states)).order_by(field).limit(limit)
    ]
