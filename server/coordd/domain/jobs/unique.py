"""Unique jobs: a submission with a unique key is a duplicate of the job that holds the key
(same submitter, same key, and the same model_ref when `per_model`) while that job is
unfinished, or, with a window, for the window after its submission whatever its state. The
key's row (`job_unique`, primary key = the key's digest) is what enforces it: a racing
duplicate waits on the index for the first transaction, then finds its key."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from coordd.core.errors import AlreadyExists
from coordd.domain.jobs.specs import JobSpec
from coordd.domain.jobs.states import TERMINAL
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import graph, queries
from coordd.store.jobs.models import Job


def key_digest(submitter_id: str, spec: JobSpec) -> str:
    assert spec.unique is not None
    scope = spec.model_ref if spec.unique.per_model else ""
    text = "\0".join((submitter_id, "model" if spec.unique.per_model else "any", scope, spec.unique.key))
    return hashlib.sha256(text.encode()).hexdigest()


def _holds(job: Job | None, expire_time: datetime | None, now: datetime) -> bool:
    if job is None:
        return False
    if expire_time is not None:
        return expire_time > now
    return job.state not in TERMINAL


def take_key(rt: Runtime, tx: Tx, job: Job, spec: JobSpec, in_batch: dict[str, Job]) -> Job | None:
    """Takes the spec's key for the new `job`; None when taken, else the job that holds it
    (the submission is a duplicate). `in_batch`: keys taken earlier in this batch, whose jobs
    are not written yet."""
    assert spec.unique is not None
    digest = key_digest(job.submitter, spec)
    window = spec.unique.window_ms
    expire = tx.now + timedelta(milliseconds=window) if window else None
    if digest in in_batch:
        return in_batch[digest]
    while True:
        holder = graph.claim_unique_key(digest, job.id, expire, rt.store.is_postgres)
        if holder is None:
            in_batch[digest] = job
            return None
        existing = queries.lock_job(holder.job_id)
        if _holds(existing, holder.expire_time, tx.now):
            assert existing is not None
            return existing
        if graph.replace_unique_key(digest, holder.job_id, job.id, expire):
            in_batch[digest] = job
            return None
        # Another submission replaced the stale holder first: look again.


def duplicate_error(existing: Job) -> AlreadyExists:
    return AlreadyExists(
        f"a job with this unique key exists: jobs/{existing.id} ({existing.state})",
        reason="DUPLICATE_JOB",
        metadata={"job": f"jobs/{existing.id}", "state": existing.state},
    )
