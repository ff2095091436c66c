"""Failed attempts: retried with exponential backoff while attempts remain, else the job is
dead-lettered (failed, budget refunded); an operator may requeue a dead letter."""

from __future__ import annotations

from datetime import timedelta

from coordd.core.errors import FailedPrecondition, InvalidArgument
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.domain.jobs.leases import deliverable, largest_reply_budget
from coordd.domain.jobs.policy import JobPolicy, backoff_s, policy_of
from coordd.domain.jobs.specs import LeaseRef
from coordd.domain.jobs.states import CANCELLED, FAILED, QUEUE_KEY
from coordd.domain.jobs.transitions import (
    close_attempt,
    enqueue_fields,
    leased_job,
    lock,
    not_found,
    refund_and_finish,
)
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import writes
from coordd.store.jobs.models import Job


def retry_or_dead(tx: Tx, job: Job, outcome: str, error: str, retryable: bool, policy: JobPolicy) -> None:
    """After a failed attempt: cancel if asked, retry with backoff while attempts remain, else dead letter."""
    close_attempt(tx, job, outcome, error)
    if job.cancel_requested:
        refund_and_finish(tx, job, CANCELLED, "cancelled while running", policy)
        return
    if retryable and job.attempt < job.attempt_limit:
        delay = backoff_s(job.attempt, policy)
        enqueue_fields(job, tx.now, tx.now + timedelta(seconds=delay))
        job.error = error[:4000]
        writes.write_retry(job)
        tx.emit(
            "job.retry_scheduled",
            f"jobs/{job.id}",
            {"attempt": job.attempt, "delay_s": round(delay, 3), "watch_keys": [QUEUE_KEY]},
        )
        return
    refund_and_finish(tx, job, FAILED, error, policy)


def fail(rt: Runtime, who: Principal, lease: LeaseRef, error: str, retryable: bool) -> Job:
    if len(error) > 4000:
        raise InvalidArgument("error: at most 4000 characters")
    with rt.store.write() as tx:
        job = leased_job(rt, who, lease)
        retry_or_dead(tx, job, FAILED, error or "failed", retryable, policy_of(rt))
        return job


def requeue(rt: Runtime, who: Principal, job_id: str) -> Job:
    """Dead letter -> queued with a fresh set of attempts; the budget is held again."""
    with rt.store.write() as tx:
        job = lock(rt, job_id)
        if job is None:
            raise not_found(job_id)
        if job.state != FAILED:
            raise FailedPrecondition(
                f"only failed jobs can be requeued; jobs/{job_id} is {job.state}", reason="JOB_NOT_FAILED"
            )
        if job.payload_purged:
            raise FailedPrecondition("the job's input was purged", reason="PAYLOAD_PURGED")
        if not deliverable(rt, job):
            raise FailedPrecondition(
                f"jobs/{job_id} is larger than a claim reply on this server can carry"
                f" ({largest_reply_budget(rt)} bytes)",
                reason="JOB_TOO_LARGE",
            )
        if job.budget:
            ledger.hold(tx, job.submitter, job.budget, f"jobs/{job.id}", reason="job.hold")
        job.attempt_limit = job.attempt + job.max_attempts
        job.finish_time = None
        job.purge_time = None
        job.error = ""
        job.cancel_requested = False
        job.close_deadline = (
            tx.now + timedelta(milliseconds=job.schedule_to_close_ms) if job.schedule_to_close_ms else None
        )
        enqueue_fields(job, tx.now, tx.now)
        writes.write_requeued(job)
        tx.emit("job.requeued", f"jobs/{job.id}", {"by": f"users/{who.user_id}", "watch_keys": [QUEUE_KEY]})
        return job
