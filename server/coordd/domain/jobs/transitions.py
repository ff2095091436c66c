"""The state changes every operation shares: locking a job, checking a lease (the attempt
number is the fencing token), putting a job (back) in the queue, recording an attempt that
ended without success, and finishing a job with or without a refund."""

from __future__ import annotations

from datetime import datetime, timedelta

from coordd.core.errors import DomainError, FailedPrecondition, NotFound, PermissionDenied
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.domain.jobs.policy import JobPolicy
from coordd.domain.jobs.specs import LeaseRef
from coordd.domain.jobs.states import FAILED, PENDING, QUEUED, RUNNING
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import graph, queries, writes
from coordd.store.jobs.models import Job


def not_found(job_id: str) -> NotFound:
    return NotFound(f"jobs/{job_id} not found", metadata={"resource": f"jobs/{job_id}"})


def lock(rt: Runtime, job_id: str) -> Job | None:
    """The whole job row, locked for the rest of the transaction."""
    return queries.lock_job(job_id)


def lease_error(job: Job | None, who: Principal, lease: LeaseRef) -> DomainError | None:
    if job is None:
        return not_found(lease.job_id)
    if job.provider != who.user_id and job.attempt == lease.attempt:
        return PermissionDenied("this lease belongs to another provider", reason="NOT_LEASE_HOLDER")
    if job.state != RUNNING or job.attempt != lease.attempt or job.lease_id != lease.lease_id:
        return FailedPrecondition(
            f"the lease on jobs/{job.id} attempt {lease.attempt} is no longer held",
            reason="STALE_LEASE",
            metadata={"state": job.state, "attempt": str(job.attempt)},
        )
    return None


def leased_job(rt: Runtime, who: Principal, lease: LeaseRef) -> Job:
    """The job `lease` is still held on by `who`, locked; the lease error otherwise."""
    job = lock(rt, lease.job_id)
    error = lease_error(job, who, lease)
    if error is not None:
        raise error
    assert job is not None
    return job


def enqueue_fields(job: Job, now: datetime, run_after: datetime) -> None:
    job.state = QUEUED
    job.run_after = run_after
    job.queue_time = now
    job.start_deadline = (
        run_after + timedelta(milliseconds=job.schedule_to_start_ms) if job.schedule_to_start_ms else None
    )
    job.lease_id = None
    job.lease_expire_time = None
    job.attempt_deadline = None


def close_attempt(tx: Tx, job: Job, outcome: str, error: str = "") -> None:
    """Records the attempt that just ended without success; call before the job row's lease
    fields are cleared. Successful and running attempts are read from the job row instead
    (see `views.attempt_history`), so the hot path (claim, complete) writes no attempt row."""
    queries.insert_attempt(
        job.id,
        job.attempt,
        job.provider or "",
        job.lease_id or "",
        job.start_time or tx.now,
        tx.now,
        outcome,
        error[:4000],
    )


def finish(tx: Tx, job: Job, state: str, error: str, policy: JobPolicy) -> None:
    job.state = state
    job.error = error[:4000]
    job.finish_time = tx.now
    job.lease_id = None
    job.lease_expire_time = None
    job.attempt_deadline = None
    job.start_deadline = None
    job.close_deadline = None
    job.purge_time = tx.now + timedelta(seconds=policy.payload_retention_s)


def refund_and_finish(tx: Tx, job: Job, state: str, error: str, policy: JobPolicy) -> None:
    """Finishes `job` failed or cancelled with its budget refunded; its pending dependants
    (and theirs) end the same way: a failed parent fails them, a cancelled one cancels them."""
    _refund_and_finish_one(tx, job, state, error, policy)
    if job.has_children:
        _finish_dependants(tx, job, state, policy)


def _refund_and_finish_one(tx: Tx, job: Job, state: str, error: str, policy: JobPolicy) -> None:
    finish(tx, job, state, error, policy)
    if job.budget:
        ledger.refund(tx, job.submitter, job.budget, f"jobs/{job.id}", reason="job.refund")
    writes.write_finished(job)
    tx.emit(f"job.{state}", f"jobs/{job.id}", {"error": job.error, "refunded": job.budget})


def _finish_dependants(tx: Tx, root: Job, state: str, policy: JobPolicy) -> None:
    """Every pending job below `root` in the graph, depth first, each locked and refunded
    once (a job reached through two parents is finished at the first)."""
    verb = "failed" if state == FAILED else "was cancelled"
    stack = [root.id]
    while stack:
        parent_id = stack.pop()
        for _, child_id in graph.children_of([parent_id]):
            child = queries.lock_job(child_id)
            if child is None or child.state != PENDING:
                continue  # already finished (or released: it cannot be, a parent did not succeed)
            _refund_and_finish_one(tx, child, state, f"parent jobs/{parent_id} {verb}", policy)
            if child.has_children:
                stack.append(child.id)
