"""The scheduler's job tasks: rescue expired leases (retry or dead letter), enforce the
schedule-to-start and schedule-to-close deadlines, purge old inline payloads. Each reads
only due rows, through a partial index on its due-time column, a batch per transaction."""

from __future__ import annotations

import weakref

from coordd.domain.jobs.graph import release_due
from coordd.domain.jobs.leases import largest_reply_budget
from coordd.domain.jobs.policy import policy_of
from coordd.domain.jobs.retry import retry_or_dead
from coordd.domain.jobs.states import FAILED, LEASED_JOB_OVERHEAD, PENDING, QUEUED, RUNNING
from coordd.domain.jobs.transitions import close_attempt, lock, refund_and_finish
from coordd.runtime import Runtime
from coordd.store.jobs import graph, queries, reads


def rescue_expired_leases(rt: Runtime) -> int:
    """Running jobs whose lease ran out (no heartbeat, or start-to-close reached): retried or
    dead-lettered."""
    policy = policy_of(rt)
    total = 0
    while True:
        ids = reads.due_ids("lease_expire_time", (RUNNING,), rt.now(), policy.task_batch)
        with rt.store.write() as tx:
            for job_id in ids:
                job = lock(rt, job_id)
                if job is None or job.state != RUNNING or job.lease_expire_time is None:
                    continue
                if job.lease_expire_time > tx.now:
                    continue  # heartbeated since we looked
                timed_out = job.attempt_deadline is not None and job.attempt_deadline <= tx.now
                outcome = "timed_out" if timed_out else "lease_expired"
                error = (
                    "start-to-close timeout"
                    if timed_out
                    else f"lease expired: no heartbeat from users/{job.provider}"
                )
                retry_or_dead(tx, job, outcome, error, True, policy)
                total += 1
        if len(ids) < policy.task_batch:
            return total


_swept: weakref.WeakSet[Runtime] = weakref.WeakSet()


def fail_undeliverable(rt: Runtime) -> int:
    """Queued jobs too large for any claim reply this server can send (accepted before its
    message limit was lowered; submissions and requeues of such jobs are refused): the claim
    skips them, so they are failed and refunded here with the reason, instead of waiting forever."""
    policy = policy_of(rt)
    budget = largest_reply_budget(rt)
    reason = f"too large for a claim reply on this server ({budget} bytes); resubmit it with a uri"
    total = 0
    while True:
        ids = reads.queued_larger_than(rt.store, budget, LEASED_JOB_OVERHEAD, policy.task_batch)
        with rt.store.write() as tx:
            for job_id in ids:
                job = lock(rt, job_id)
                if job is None or job.state != QUEUED:
                    continue
                refund_and_finish(tx, job, FAILED, reason, policy)
                total += 1
        if len(ids) < policy.task_batch:
            return total


def enforce_deadlines(rt: Runtime) -> int:
    """Schedule-to-start (queued too long) and schedule-to-close (not done in time) -> failed,
    refunded; on the first run after a start, also queued jobs no reply can carry."""
    policy = policy_of(rt)
    total = 0
    if rt not in _swept:
        total += fail_undeliverable(rt)
        _swept.add(rt)
    for column, states, reason in (
        ("start_deadline", (QUEUED,), "schedule-to-start timeout"),
        ("close_deadline", (PENDING, QUEUED, RUNNING), "schedule-to-close timeout"),
    ):
        while True:
            ids = reads.due_ids(column, states, rt.now(), policy.task_batch)
            with rt.store.write() as tx:
                for job_id in ids:
                    job = lock(rt, job_id)
                    if job is None or job.state not in states:
                        continue
                    deadline = getattr(job, column)
                    if deadline is None or deadline > tx.now:
                        continue
                    if job.state == RUNNING:
                        close_attempt(tx, job, "timed_out", reason)
                    refund_and_finish(tx, job, FAILED, reason, policy)
                    total += 1
            if len(ids) < policy.task_batch:
                break
    return total


def release_pending(rt: Runtime) -> int:
    """Pending jobs whose schedule time or snooze has come and whose parents all succeeded
    -> queued (waking waiting workers)."""
    policy = policy_of(rt)
    total = 0
    while True:
        with rt.store.write() as tx:
            n = release_due(tx, policy.task_batch)
        total += n
        if n < policy.task_batch:
            return total


def purge_payloads(rt: Runtime) -> int:
    """Deletes inline input/output data of jobs finished longer ago than the retention period."""
    policy = policy_of(rt)
    total = 0
    while True:
        with rt.store.write() as tx:
            ids = queries.purge_due_payloads(tx.now, policy.task_batch)
            graph.delete_expired_unique_keys(tx.now, policy.task_batch)
        total += len(ids)
        if len(ids) < policy.task_batch:
            return total
