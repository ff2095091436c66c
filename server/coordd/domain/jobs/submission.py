"""Submission: jobs are queued (or pending: scheduled later, or waiting for parents) and their
budgets held in the same transaction, one INSERT for any number of jobs; a duplicate of a
unique job returns the existing one instead; a single submission may be leased at once to a
waiting worker."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.domain.jobs.fairness import assign as assign_fair_seq
from coordd.domain.jobs.graph import link_parents, record_edges
from coordd.domain.jobs.ids import new_ids
from coordd.domain.jobs.leases import Leased, lease_to
from coordd.domain.jobs.specs import JobSpec, Worker
from coordd.domain.jobs.states import (
    MAX_SCHEDULE_AHEAD_S,
    MAX_SUBMIT_BATCH,
    PENDING,
    QUEUE_KEY,
    QUEUED,
    RUNNING,
)
from coordd.domain.jobs.transitions import enqueue_fields
from coordd.domain.jobs.unique import duplicate_error, take_key
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import inserts, queries
from coordd.store.jobs.models import Job


@dataclass(frozen=True)
class Submitted:
    """One submission's job, and whether it is the existing job of a unique key."""

    job: Job
    existed: bool = False


def insert_jobs(tx: Tx, submitter_id: str, specs: list[JobSpec]) -> list[Job]:
    """Queues jobs and holds their budgets, inside the caller's transaction (one INSERT for
    the jobs, one ledger entry per job posted as a batch). Specs without a unique key,
    schedule time or parents only (see `insert_submissions`)."""
    return [s.job for s in insert_submissions(None, tx, submitter_id, specs)]


def check_schedule(tx: Tx, specs: list[JobSpec]) -> None:
    late = tx.now + timedelta(seconds=MAX_SCHEDULE_AHEAD_S)
    for i, spec in enumerate(specs):
        if spec.schedule_time is not None and spec.schedule_time > late:
            path = f"requests[{i}].schedule_time" if len(specs) > 1 else "schedule_time"
            raise InvalidArgument(
                "schedule_time: at most 366 days ahead",
                violations=[FieldViolation(path, "at most 366 days ahead")],
            )


# A spec's values that go into its job's row, but its input and labels: the key of a run of
# submissions sharing them, and what `_with_settings` reads (so the two cannot drift apart).
_SETTINGS = operator.attrgetter(
    "kind", "model_ref", "gpus", "budget", "priority", "max_attempts", "schedule_to_start_ms",
    "start_to_close_ms", "heartbeat_ms", "schedule_to_close_ms",
)  # fmt: skip


def _with_settings(base: dict[str, Any], settings: tuple[Any, ...], now: datetime) -> dict[str, Any]:
    """`base` with the row values of a spec's `_SETTINGS`, for `inserts.new_job`."""
    kind, model_ref, gpus, budget, priority, max_attempts, s2s, s2c, heartbeat, total = settings
    return {
        **base,
        "kind": kind,
        "model_ref": model_ref,
        "gpus": gpus,
        "budget": budget,
        "priority": priority,
        "base_priority": priority,
        "max_attempts": max_attempts,
        "attempt_limit": max_attempts,
        "schedule_to_start_ms": s2s,
        "start_to_close_ms": s2c,
        "heartbeat_ms": heartbeat,
        "schedule_to_close_ms": total,
        "lease_ms": min(heartbeat, s2c or heartbeat),
        "start_deadline": now + timedelta(milliseconds=s2s) if s2s else None,
        "close_deadline": now + timedelta(milliseconds=total) if total else None,
    }


def insert_submissions(
    rt: Runtime | None, tx: Tx, submitter_id: str, specs: list[JobSpec]
) -> list[Submitted]:
    """`insert_jobs` for any spec: a duplicate of a unique job is the existing job (its
    budget is not held again; no row written); a job scheduled later or with unfinished
    parents is pending. `rt` is needed for unique keys only."""
    check_schedule(tx, specs)
    jobs: list[Job] = []
    out: list[Submitted] = []
    edges: list[tuple[str, str]] = []
    keys: dict[str, Job] = {}
    now = tx.now
    # What every new row of the batch shares; the queued state as `enqueue_fields` sets it.
    base = inserts.new_jobs_base(
        submitter=submitter_id,
        fee=0,
        attempt=0,
        provider=None,
        create_time=now,
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
        state=QUEUED,
        run_after=now,
        queue_time=now,
        lease_id=None,
        lease_expire_time=None,
        attempt_deadline=None,
    )
    settings: tuple[Any, ...] | None = None
    shared = base
    for spec, job_id in zip(specs, new_ids(len(specs)), strict=True):
        if (these := _SETTINGS(spec)) != settings:  # a batch's submissions mostly share theirs
            settings, shared = these, _with_settings(base, these, now)
        payload = spec.input
        job = inserts.new_job(
            shared,
            job_id,
            input_data=payload.data,
            input_uri=payload.uri,
            input_digest=payload.sha256,
            labels=spec.labels,
            label_count=len(spec.labels),
        )
        start = now
        if spec.schedule_time is not None and spec.schedule_time > now:
            start = job.schedule_time = spec.schedule_time
            if job.schedule_to_close_ms:
                job.close_deadline = start + timedelta(milliseconds=spec.schedule_to_close_ms)
            enqueue_fields(job, now, start)
        if spec.unique is not None:
            assert rt is not None
            job.unique_key = spec.unique.key
            existing = take_key(rt, tx, job, spec, keys)
            if existing is not None:
                out.append(Submitted(existing, existed=True))
                continue
        if spec.parents:
            edges.extend(link_parents(tx, job, spec.parents))
        if start > now or job.parents_left:
            job.state = PENDING
            job.start_deadline = None  # counts from the release
        jobs.append(job)
        out.append(Submitted(job))
    if not jobs:
        return out
    if len(jobs) == 1:
        inserts.insert_job_in_fair_order(jobs[0])  # the fair-order lookup inside the INSERT
    else:
        assign_fair_seq(submitter_id, jobs)
        inserts.insert_jobs(jobs)
    labels = [{"job": j.id, "label": label} for j in jobs for label in j.labels]
    if labels:
        inserts.insert_labels(labels)
    holds = [ledger.hold_entry(submitter_id, j.budget, f"jobs/{j.id}", "job.hold") for j in jobs if j.budget]
    ledger.post_many(tx, holds)
    record_edges(edges)
    return out


def insert_job(tx: Tx, submitter_id: str, spec: JobSpec) -> Job:
    """Queues one job and holds its budget, inside the caller's transaction."""
    return insert_jobs(tx, submitter_id, [spec])[0]


def submit(
    rt: Runtime, who: Principal, spec: JobSpec, handover: Worker | None = None
) -> tuple[Job, Leased | None]:
    """`submit_one` returning the job (the existing one for a duplicate asked to return it)."""
    done, leased = submit_one(rt, who, spec, handover)
    return done.job, leased


def submit_one(
    rt: Runtime, who: Principal, spec: JobSpec, handover: Worker | None = None
) -> tuple[Submitted, Leased | None]:
    """Queues the job; with `handover`, leases it to that waiting worker in the same
    transaction. A duplicate of a unique job: ALREADY_EXISTS (DUPLICATE_JOB, metadata `job`),
    or the existing job when the spec asks for it."""
    with rt.store.write() as tx:
        [done] = insert_submissions(rt, tx, who.user_id, [spec])
        job = done.job
        if done.existed:
            if spec.unique is None or not spec.unique.return_existing:
                raise duplicate_error(job)
            return done, None
        ready = job.state == QUEUED
        leased = lease_to(rt, tx, handover, 1, only_job=job.id) if handover is not None and ready else []
        tx.emit(
            "job.submitted",
            f"jobs/{job.id}",
            {"budget": spec.budget, "watch_keys": [QUEUE_KEY] if ready and not leased else []},
        )
    if leased:
        _mark_claimed(job, leased[0])
        return done, leased[0]
    return done, None


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
    """`submit_batch` returning the jobs."""
    return [s.job for s in submit_batch(rt, who, specs)]


def submit_batch(rt: Runtime, who: Principal, specs: list[JobSpec]) -> list[Submitted]:
    """Queues every job and holds every budget in one transaction, or none (insufficient
    funds for the total fails it all). One INSERT for the jobs, one ledger batch, one event:
    a producer's cost per job stops being a call and a commit per job."""
    if not 1 <= len(specs) <= MAX_SUBMIT_BATCH:
        raise InvalidArgument(
            f"requests: 1..{MAX_SUBMIT_BATCH} submissions",
            violations=[FieldViolation("requests", f"1..{MAX_SUBMIT_BATCH} items")],
        )
    with rt.store.write() as tx:
        done = insert_submissions(rt, tx, who.user_id, specs)
        for spec, item in zip(specs, done, strict=True):
            if item.existed and (spec.unique is None or not spec.unique.return_existing):
                raise duplicate_error(item.job)
        names = [f"jobs/{s.job.id}" for s in done if not s.existed]
        if names:
            tx.emit(
                "jobs.submitted",
                names[0],
                {
                    "jobs": names,
                    "budget": sum(s.job.budget for s in done if not s.existed),
                    "watch_keys": [QUEUE_KEY],
                },
            )
    return done
