"""Claims and leases: a worker leases claimable jobs in one statement, keeps a lease alive
with heartbeats (which also deliver a pending cancellation), or hands back a job its call
never delivered. A lease is (job, attempt, lease id, provider)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.principal import Principal
from coordd.domain.jobs.policy import policy_of
from coordd.domain.jobs.specs import LeaseRef, Worker
from coordd.domain.jobs.states import CANCELLED, MAX_CLAIM, QUEUE_KEY, RUNNING
from coordd.domain.jobs.transitions import (
    close_attempt,
    enqueue_fields,
    leased_job,
    lock,
    refund_and_finish,
)
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import queries
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
    """Leases up to `limit` claimable jobs to `worker`, in the caller's transaction (see
    coordd.store.jobs.queries.claim_jobs)."""
    lease_id = secrets.token_hex(12)
    claimed = queries.claim_jobs(
        rt.store, tx.now, lease_id, worker.provider_id, worker.labels, worker.gpus, limit, only_job
    )
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


def claim(rt: Runtime, worker: Worker, limit: int) -> list[Leased]:
    """One claim attempt; empty when nothing matching is claimable now."""
    if not 1 <= limit <= MAX_CLAIM:
        raise InvalidArgument(f"max_jobs must be 1..{MAX_CLAIM}")
    with rt.store.write() as tx:
        return lease_to(rt, tx, worker, limit)


def return_lease(rt: Runtime, leased: Leased) -> bool:
    """A job handed to a worker whose call had already gone: back to the queue, attempt not spent."""
    with rt.store.write() as tx:
        job = lock(rt, leased.job.id)
        if job is None or job.state != RUNNING or job.lease_id != leased.lease_id:
            return False
        close_attempt(tx, job, "returned", "the claiming call ended before the job was delivered")
        job.attempt_limit += 1
        enqueue_fields(job, tx.now, tx.now)
        queries.save_job(job)
        tx.emit("job.returned", f"jobs/{job.id}", {"watch_keys": [QUEUE_KEY]})
        return True


def heartbeat(rt: Runtime, who: Principal, lease: LeaseRef, progress: float) -> Heartbeat:
    if not 0.0 <= progress <= 1.0 or math.isnan(progress):
        raise InvalidArgument("progress must be 0..1", violations=[FieldViolation("progress", "0..1")])
    policy = policy_of(rt)
    with rt.store.write() as tx:
        job = leased_job(rt, who, lease)
        if job.cancel_requested:
            job = lock(rt, job.id)  # the whole row: it is saved below
            assert job is not None
            close_attempt(tx, job, CANCELLED, "cancelled by request")
            refund_and_finish(tx, job, CANCELLED, "cancelled while running", policy)
            return Heartbeat(None, True)
        expire = tx.now + timedelta(milliseconds=job.heartbeat_ms)
        if job.attempt_deadline is not None:
            expire = min(expire, job.attempt_deadline)
        job.lease_expire_time = expire
        job.progress = progress
        queries.save_job(job)
        tx.emit("job.progress", f"jobs/{job.id}", {"progress": progress})
        return Heartbeat(expire, False)
