"""Job reads: one job and its ended attempts, queue positions, a submitter's page of jobs,
pre-migration-12 attestations, the queue statistics and the due rows of scheduler tasks.
Each names the index it walks where that matters."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import peewee

from coordd.core.paging import Page, PageRequest
from coordd.store.jobs.models import Job, JobAttempt, JobAttestation
from coordd.store.models import TimestampField
from coordd.store.paging import keyset_page


def find_job(job_id: str) -> Job | None:
    return Job.get_or_none(Job.id == job_id)


def ended_attempts(job_id: str) -> list[JobAttempt]:
    """The stored rows of a job's attempts that ended without success, in attempt order."""
    return list(JobAttempt.select().where(JobAttempt.job == job_id).order_by(JobAttempt.attempt))


def count_ahead(state: str, priority: int, job_id: str) -> int:
    """Jobs in `state` that come before this one in claim order (priority, then id)."""
    return (
        Job.select()
        .where(
            (Job.state == state)
            & ((Job.priority > priority) | ((Job.priority == priority) & (Job.id < job_id)))
        )
        .count()
    )


_LISTED_FIELDS = [f for f in Job._meta.sorted_fields if f.name not in ("input_data", "output_data")]


def jobs_of(submitter: str, state: str, kind: str, page: PageRequest) -> Page[Job]:
    """A submitter's jobs, newest first, optionally of one state and kind; without their
    inline payloads."""
    query = Job.select(*_LISTED_FIELDS).where(Job.submitter == submitter)
    if state:
        query = query.where(Job.state == state)
    if kind:
        query = query.where(Job.kind == kind)
    return keyset_page(query, Job.id, page, {"s": state, "k": kind, "u": submitter}, descending=True)


def legacy_attestation(job_id: str) -> JobAttestation | None:
    """The stored envelope of a job signed before migration 12."""
    return JobAttestation.get_or_none(JobAttestation.job == job_id)


# -- queue statistics -------------------------------------------------------------------------


class Depth(NamedTuple):
    priority: int
    count: int


def count_by_priority(state: str, leased_only: bool = False) -> list[Depth]:
    """Jobs in `state` per priority, highest first. Queued jobs are counted through
    job_claim_order; running ones with `leased_only` through job_lease_due (a job is running
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


def due_ids(column: str, states: tuple[str, ...], now: datetime, limit: int) -> list[str]:
    """Ids of up to `limit` jobs in `states` whose due-time `column` (lease_expire_time,
    start_deadline or close_deadline; each has a partial index) is at or before `now`,
    earliest first."""
    field = getattr(Job, column)
    return [
        r.id
        for r in Job.select(Job.id).where((field <= now) & Job.state.in_(states)).order_by(field).limit(limit)
    ]
