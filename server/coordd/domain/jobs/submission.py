"""Submission: jobs are queued and their budgets held in the same transaction, one INSERT
for any number of jobs; a single submission may be leased at once to a waiting worker."""

from __future__ import annotations

from datetime import timedelta

from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.domain.jobs.leases import Leased, lease_to
from coordd.domain.jobs.specs import JobSpec, Worker
from coordd.domain.jobs.states import MAX_SUBMIT_BATCH, QUEUE_KEY, RUNNING
from coordd.domain.jobs.transitions import enqueue_fields
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import queries
from coordd.store.jobs.models import Job


def insert_jobs(tx: Tx, submitter_id: str, specs: list[JobSpec]) -> list[Job]:
    """Queues jobs and holds their budgets, inside the caller's transaction (one INSERT for
    the jobs, one ledger entry per job posted as a batch)."""
    jobs: list[Job] = []
    for spec in specs:
        lease_ms = min(spec.heartbeat_ms, spec.start_to_close_ms or spec.heartbeat_ms)
        job = Job(  # the id comes from the model's default (new_id), generated once
            submitter=submitter_id,
            kind=spec.kind,
            model_ref=spec.model_ref,
            input_data=spec.input.data,
            input_uri=spec.input.uri,
            input_digest=spec.input.sha256,
            labels=spec.labels,
            label_count=len(spec.labels),
            gpus=spec.gpus,
            budget=spec.budget,
            fee=0,
            priority=spec.priority,
            max_attempts=spec.max_attempts,
            attempt_limit=spec.max_attempts,
            schedule_to_start_ms=spec.schedule_to_start_ms,
            start_to_close_ms=spec.start_to_close_ms,
            heartbeat_ms=spec.heartbeat_ms,
            schedule_to_close_ms=spec.schedule_to_close_ms,
            lease_ms=lease_ms,
            attempt=0,
            provider=None,
            create_time=tx.now,
            start_time=None,
            finish_time=None,
            progress=0.0,
            cancel_requested=False,
            output_data=None,
            output_uri="",
            output_digest="",
            error="",
            purge_time=None,
            payload_purged=False,
            close_deadline=(
                tx.now + timedelta(milliseconds=spec.schedule_to_close_ms)
                if spec.schedule_to_close_ms
                else None
            ),
        )
        enqueue_fields(job, tx.now, tx.now)
        jobs.append(job)
    if not jobs:
        return []
    queries.insert_jobs(jobs)
    labels = [{"job": j.id, "label": label} for j in jobs for label in j.labels]
    if labels:
        queries.insert_labels(labels)
    holds = [ledger.hold_entry(submitter_id, j.budget, f"jobs/{j.id}", "job.hold") for j in jobs if j.budget]
    ledger.post_many(tx, holds)
    return jobs


def insert_job(tx: Tx, submitter_id: str, spec: JobSpec) -> Job:
    """Queues one job and holds its budget, inside the caller's transaction."""
    return insert_jobs(tx, submitter_id, [spec])[0]


def submit(
    rt: Runtime, who: Principal, spec: JobSpec, handover: Worker | None = None
) -> tuple[Job, Leased | None]:
    """Queues the job; with `handover`, leases it to that waiting worker in the same transaction."""
    with rt.store.write() as tx:
        job = insert_job(tx, who.user_id, spec)
        leased = lease_to(rt, tx, handover, 1, only_job=job.id) if handover is not None else []
        tx.emit(
            "job.submitted",
            f"jobs/{job.id}",
            {"budget": spec.budget, "watch_keys": [] if leased else [QUEUE_KEY]},
        )
    if leased:
        _mark_claimed(job, leased[0])
        return job, leased[0]
    return job, None


def _mark_claimed(job: Job, leased: Leased) -> None:
    """Brings a model loaded before its claim up to date with the claimed row."""
    to_time = queries.time_of_us
    row = leased.job
    job.state = RUNNING
    job.attempt = row.attempt
    job.provider = row.provider
    job.lease_id = leased.lease_id
    job.lease_expire_time = to_time(row.lease_expire_us)
    job.start_time = to_time(row.start_us)
    job.start_deadline = None
    job.attempt_deadline = (
        job.start_time + timedelta(milliseconds=job.start_to_close_ms) if job.start_to_close_ms else None
    )
    job.progress = 0.0


def submit_many(rt: Runtime, who: Principal, specs: list[JobSpec]) -> list[Job]:
    """Queues every job and holds every budget in one transaction, or none (insufficient
    funds for the total fails it all). One INSERT for the jobs, one ledger batch, one event:
    a producer's cost per job stops being a call and a commit per job."""
    if not 1 <= len(specs) <= MAX_SUBMIT_BATCH:
        raise InvalidArgument(
            f"requests: 1..{MAX_SUBMIT_BATCH} submissions",
            violations=[FieldViolation("requests", f"1..{MAX_SUBMIT_BATCH} items")],
        )
    with rt.store.write() as tx:
        queued = insert_jobs(tx, who.user_id, specs)
        names = [f"jobs/{job.id}" for job in queued]
        tx.emit(
            "jobs.submitted",
            names[0],
            {"jobs": names, "budget": sum(spec.budget for spec in specs), "watch_keys": [QUEUE_KEY]},
        )
    return queued
