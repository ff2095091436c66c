"""Claims and leases: a worker leases claimable jobs in one statement (never more than its
reply can carry), keeps a lease alive with heartbeats (which also deliver a pending
cancellation); jobs whose claiming call ended before its reply was sent go back to the queue
as if never claimed. A lease is (job, attempt, lease id, provider)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from coordd.core.errors import DomainError, FieldViolation, InvalidArgument
from coordd.core.principal import Principal
from coordd.domain.jobs.limits import any_limit, capped_ids
from coordd.domain.jobs.policy import JobPolicy, policy_of
from coordd.domain.jobs.specs import LeaseRef, Worker, claim_bytes, reply_budget
from coordd.domain.jobs.states import CANCELLED, LEASED_JOB_OVERHEAD, MAX_CLAIM, QUEUE_KEY, QUEUED, RUNNING
from coordd.domain.jobs.transitions import close_attempt, leased_job, lock, refund_and_finish
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import queries, writes
from coordd.store.jobs.models import Job
from coordd.store.jobs.queries import ClaimedRow


@dataclass(frozen=True, slots=True)
class Leased:
    """A job handed to a worker: the claimed row (times in microseconds) and its lease id."""

    job: ClaimedRow
    lease_id: str


@dataclass(frozen=True)
class Heartbeat:
    expire_time: datetime | None
    cancelled: bool


def lease_to(rt: Runtime, tx: Tx, worker: Worker, limit: int, only_job: str | None = None) -> list[Leased]:
    """Leases up to `limit` claimable jobs to `worker`, as many as fit in one reply to it, in
    the caller's transaction (see coordd.store.jobs.queries.claim_jobs)."""
    lease_id = secrets.token_hex(12)

    def claim_now(
        limit: int, only_job: str | None, only_jobs: list[str] | None, unless_capped: bool
    ) -> list[queries.ClaimedRow]:
        return queries.claim_jobs(
            rt.store,
            tx.now,
            lease_id,
            worker.provider_id,
            worker.labels,
            worker.gpus,
            limit,
            worker.reply_budget,
            LEASED_JOB_OVERHEAD,
            only_job,
            only_jobs,
            unless_capped,
        )

    # Without caps (the common case) the claim is one statement, which itself checks that no
    # cap exists; with caps, or an empty queue, the caps are read and applied.
    claimed = claim_now(limit, only_job, None, True)
    if not claimed and any_limit(rt):
        only_jobs = capped_ids(rt, tx, worker, limit, LEASED_JOB_OVERHEAD, only_job)
        if not only_jobs:
            return []
        claimed = claim_now(len(only_jobs), None, only_jobs, False)
    if not claimed:
        return []
    claimed.sort(key=lambda j: (-j.priority, j.id))
    leased = [Leased(j, lease_id) for j in claimed]
    # One event per claim, not per job: its watch keys still wake each job's watchers.
    names = [f"jobs/{j.id}" for j in claimed]
    tx.emit(
        "job.started",
        names[0],
        {
            "jobs": names,
            "attempts": [j.attempt for j in claimed],
            "provider": f"users/{worker.provider_id}",
            "watch_keys": [*names, QUEUE_KEY],
        },
    )
    return leased


def largest_reply_budget(rt: Runtime) -> int:
    """Bytes of jobs the largest claim reply this server can send may carry: a job bigger
    than that can never be delivered."""
    limit = rt.settings.max_message_bytes
    return reply_budget(limit, limit)


def deliverable(rt: Runtime, job: Job) -> bool:
    data = len(job.input_data) if job.input_data is not None else 0
    return claim_bytes(data, job.input_uri, job.model_ref, job.labels or []) <= largest_reply_budget(rt)


def claim(rt: Runtime, worker: Worker, limit: int) -> list[Leased]:
    """One claim attempt; empty when nothing matching is claimable now."""
    if not 1 <= limit <= MAX_CLAIM:
        raise InvalidArgument(f"max_jobs must be 1..{MAX_CLAIM}")
    with rt.store.write() as tx:
        return lease_to(rt, tx, worker, limit)


def return_leases(rt: Runtime, leased: list[Leased]) -> int:
    """Jobs leased to a call that ended before its reply was sent (the caller went away,
    cancelled, ran out of time, or the reply could not be sent): back in the queue at once,
    as if never claimed. The attempt number, the attempt limit, the backoff and the place in
    line are what they were before the claim; no attempt is recorded. The lease id stays the
    fence: a lease from the undelivered reply can never be used. A job whose cancellation was
    asked for meanwhile is cancelled (and refunded) instead. Returns how many were put back."""
    policy = policy_of(rt)
    names: list[str] = []
    with rt.store.write() as tx:
        for item in sorted(leased, key=lambda x: x.job.id):  # one lock order for every caller
            job = lock(rt, item.job.id)
            if job is None or job.state != RUNNING or job.lease_id != item.lease_id:
                continue  # already completed, failed, rescued or returned
            _unclaim(job)
            if job.cancel_requested:
                refund_and_finish(tx, job, CANCELLED, "cancelled by request", policy)
                continue
            writes.write_unclaimed(job)
            names.append(f"jobs/{job.id}")
        if names:
            tx.emit("jobs.returned", names[0], {"jobs": names, "watch_keys": [*names, QUEUE_KEY]})
    return len(names)


def _unclaim(job: Job) -> None:
    """Undoes what the claim statement set: the previous attempt's number, provider and start
    (from its attempt row: an attempt before this one ended without success) come back."""
    job.attempt -= 1
    previous = queries.attempt_row(job.id, job.attempt) if job.attempt else None
    job.provider = previous.provider if previous is not None else None
    job.start_time = previous.start_time if previous is not None else None
    job.state = QUEUED
    job.lease_id = None
    job.lease_expire_time = None
    job.attempt_deadline = None
    job.progress = 0.0
    job.start_deadline = (
        job.run_after + timedelta(milliseconds=job.schedule_to_start_ms) if job.schedule_to_start_ms else None
    )


def heartbeat(rt: Runtime, who: Principal, lease: LeaseRef, progress: float) -> Heartbeat:
    _check_progress(progress, "progress")
    policy = policy_of(rt)
    with rt.store.write() as tx:
        return _beat(rt, tx, who, lease, progress, policy)


def heartbeat_many(
    rt: Runtime, who: Principal, items: list[tuple[LeaseRef, float]]
) -> list[Heartbeat | DomainError]:
    """Several heartbeats (the worker stream's) in one transaction, each as `heartbeat` does with
    its own outcome; the rows are locked in id order (one order for every caller)."""
    for i, (_, progress) in enumerate(items):
        _check_progress(progress, f"heartbeat.progress[{i}]")
    policy = policy_of(rt)
    results: dict[int, Heartbeat | DomainError] = {}
    with rt.store.write() as tx:
        for index in sorted(range(len(items)), key=lambda i: items[i][0].job_id):
            lease, progress = items[index]
            try:
                results[index] = _beat(rt, tx, who, lease, progress, policy)
            except DomainError as error:  # raised before anything of this job was written
                results[index] = error
    return [results[i] for i in range(len(items))]


def _check_progress(progress: float, path: str) -> None:
    if not 0.0 <= progress <= 1.0 or math.isnan(progress):
        raise InvalidArgument(f"{path} must be 0..1", violations=[FieldViolation(path, "0..1")])


def _beat(
    rt: Runtime, tx: Tx, who: Principal, lease: LeaseRef, progress: float, policy: JobPolicy
) -> Heartbeat:
    job = leased_job(rt, who, lease)
    if job.cancel_requested:
        close_attempt(tx, job, CANCELLED, "cancelled by request")
        refund_and_finish(tx, job, CANCELLED, "cancelled while running", policy)
        return Heartbeat(None, True)
    expire = tx.now + timedelta(milliseconds=job.heartbeat_ms)
    if job.attempt_deadline is not None:
        expire = min(expire, job.attempt_deadline)
    job.lease_expire_time = expire
    job.progress = progress
    writes.write_heartbeat(job)
    tx.emit("job.progress", f"jobs/{job.id}", {"progress": progress})
    return Heartbeat(expire, False)
