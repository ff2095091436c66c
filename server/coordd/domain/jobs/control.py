"""Worker control: a worker may snooze a leased job ("retry me at T"). The lease ends, the
job waits pending until then, and the attempt is not counted: the attempt limit moves up by
one (the attempt number still advances, it is the lease's fencing token). At most
`JobPolicy.max_snoozes` snoozes per job (config `job_max_snoozes`, default 100): beyond it
FAILED_PRECONDITION (SNOOZE_LIMIT), the lease still held. A cancellation
asked for meanwhile wins. (Cancellation itself reaches the worker in its heartbeat reply:
`leases.heartbeat`.)"""

from __future__ import annotations

from datetime import datetime, timedelta

from coordd.core.errors import FailedPrecondition, FieldViolation, InvalidArgument
from coordd.core.principal import Principal
from coordd.domain.jobs.policy import policy_of
from coordd.domain.jobs.specs import LeaseRef
from coordd.domain.jobs.states import CANCELLED, MAX_SNOOZE_S, PENDING
from coordd.domain.jobs.transitions import close_attempt, enqueue_fields, leased_job, refund_and_finish
from coordd.runtime import Runtime
from coordd.store.jobs import reads, writes
from coordd.store.jobs.models import Job

SNOOZED = "snoozed"


def snooze(rt: Runtime, who: Principal, lease: LeaseRef, until: datetime | None, reason: str) -> Job:
    if len(reason) > 4000:
        raise InvalidArgument("reason: at most 4000 characters")
    now = rt.now()
    if until is None or until <= now or until > now + timedelta(seconds=MAX_SNOOZE_S):
        raise InvalidArgument(
            "snooze_time: required, after now and at most 30 days ahead",
            violations=[FieldViolation("snooze_time", "after now, at most 30 days ahead")],
        )
    policy = policy_of(rt)
    with rt.store.write() as tx:
        job = leased_job(rt, who, lease)
        if job.cancel_requested:
            close_attempt(tx, job, CANCELLED, "cancelled by request")
            refund_and_finish(tx, job, CANCELLED, "cancelled while running", policy)
            cancelled = True
        else:
            cancelled = False
            snoozed = reads.count_attempts(job.id, SNOOZED)
            if snoozed >= policy.max_snoozes:
                raise FailedPrecondition(
                    f"jobs/{job.id} was snoozed {snoozed} times, the limit of this server"
                    f" (job_max_snoozes = {policy.max_snoozes}): complete, fail or hand back the job",
                    reason="SNOOZE_LIMIT",
                    metadata={"snoozes": str(snoozed), "limit": str(policy.max_snoozes)},
                )
            close_attempt(tx, job, SNOOZED, reason)
            job.attempt_limit += 1
            enqueue_fields(job, tx.now, max(until, tx.now))
            job.state = PENDING
            job.start_deadline = None  # counts from the release
            job.progress = 0.0
            job.error = reason[:4000]
            writes.write_snoozed(job)
            tx.emit("job.snoozed", f"jobs/{job.id}", {"until": until.isoformat(), "attempt": job.attempt})
    if cancelled:
        raise FailedPrecondition(f"jobs/{job.id} was cancelled", reason="JOB_CANCELLED")
    return job
