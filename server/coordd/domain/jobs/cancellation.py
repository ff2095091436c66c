"""Cancellation by the submitter (or an admin): a queued job is cancelled and refunded at
once (a pending one too, and its pending dependants with it); a running one is marked, and
its worker learns of it at its next heartbeat (the reply says `cancelled`) or result."""

from __future__ import annotations

from coordd.core.errors import FailedPrecondition, InvalidArgument
from coordd.core.principal import Principal
from coordd.domain.jobs.policy import policy_of
from coordd.domain.jobs.states import CANCELLED, PENDING, QUEUED, TERMINAL
from coordd.domain.jobs.transitions import lock, not_found, refund_and_finish
from coordd.runtime import Runtime
from coordd.store.jobs import writes
from coordd.store.jobs.models import Job


def cancel(rt: Runtime, who: Principal, job_id: str, reason: str) -> Job:
    if len(reason) > 500:
        raise InvalidArgument("reason: at most 500 characters")
    policy = policy_of(rt)
    with rt.store.write() as tx:
        job = lock(rt, job_id)
        if job is None or not (who.is_admin or job.submitter == who.user_id):
            raise not_found(job_id)
        if job.state in TERMINAL:
            raise FailedPrecondition(f"jobs/{job_id} is already {job.state}", reason="JOB_FINISHED")
        if job.state in (QUEUED, PENDING):
            refund_and_finish(tx, job, CANCELLED, reason or "cancelled", policy)
        elif not job.cancel_requested:
            job.cancel_requested = True
            job.error = reason or "cancelled"
            writes.write_cancel_requested(job)
            tx.emit("job.cancel_requested", f"jobs/{job.id}", {})
        return job
