"""The named writes of a job's cold state changes (hand-back, heartbeat, retry, requeue,
snooze, release, cancellation, finish), each writing only the columns its transition
changes, on a row locked by `queries.lock_job`. Before, every one was `job.save()`, which
rewrote every column, payloads too.

Each write names its columns so that docs/job-store-v2.md can give each transition its own
statements on the tables it splits `job` into (a finish deletes the queue row and inserts
the result row, a heartbeat touches only the queue row...). A transition that changed a
column its write does not name is a programming error, raised as such: it would be lost."""

from __future__ import annotations

from coordd.store.jobs.models import Job

# What `domain.jobs.transitions.enqueue_fields` sets: back in the queue (or pending).
_QUEUE = (
    Job.state,
    Job.run_after,
    Job.queue_time,
    Job.start_deadline,
    Job.lease_id,
    Job.lease_expire_time,
    Job.attempt_deadline,
)
# What a finish sets, plus the attempt columns a hand-back restores before a cancellation
# finishes the job (`domain.jobs.leases.return_leases`).
_FINISHED = (
    Job.state,
    Job.error,
    Job.finish_time,
    Job.purge_time,
    Job.lease_id,
    Job.lease_expire_time,
    Job.attempt_deadline,
    Job.start_deadline,
    Job.close_deadline,
    Job.attempt,
    Job.provider,
    Job.start_time,
    Job.progress,
)
_UNCLAIMED = (*_QUEUE, Job.attempt, Job.provider, Job.start_time, Job.progress)


def _write(job: Job, columns: tuple[object, ...], what: str) -> None:
    named = {c.name for c in columns}  # type: ignore[attr-defined]
    unnamed = sorted(f.name for f in job.dirty_fields if f.name not in named)
    if unnamed:
        raise AssertionError(f"the {what} write of jobs/{job.id} does not write {', '.join(unnamed)}")
    job.save(only=columns)


def write_unclaimed(job: Job) -> None:
    """A lease handed back undelivered: queued again as before the claim."""
    _write(job, _UNCLAIMED, "unclaimed")


def write_heartbeat(job: Job) -> None:
    """A lease's new expiry and the worker's progress."""
    _write(job, (Job.lease_expire_time, Job.progress), "heartbeat")


def write_cancel_requested(job: Job) -> None:
    """A running job asked to stop: its worker learns it at the next heartbeat."""
    _write(job, (Job.cancel_requested, Job.error), "cancel request")


def write_retry(job: Job) -> None:
    """A failed attempt queued again after its backoff."""
    _write(job, (*_QUEUE, Job.error), "retry")


def write_requeued(job: Job) -> None:
    """A dead letter queued again with a fresh set of attempts."""
    fresh = (
        Job.attempt_limit,
        Job.finish_time,
        Job.purge_time,
        Job.error,
        Job.cancel_requested,
        Job.close_deadline,
    )
    _write(job, (*_QUEUE, *fresh), "requeue")


def write_snoozed(job: Job) -> None:
    """A running job put back to pending until its snooze time, with one more attempt."""
    _write(job, (*_QUEUE, Job.attempt_limit, Job.progress, Job.error), "snooze")


def write_parents_left(job: Job) -> None:
    """A pending job's count of parents still to succeed."""
    _write(job, (Job.parents_left,), "parents left")


def write_released(job: Job) -> None:
    """A pending job queued, with its fair-share place (and its last parents counted off)."""
    _write(job, (*_QUEUE, Job.fair_seq, Job.parents_left), "release")


def write_finished(job: Job) -> None:
    """Failed or cancelled (a success is `queries.record_successes`)."""
    _write(job, _FINISHED, "finish")
