"""What submitters, providers and operators read: a job with its attempt history, its queue
position (for WatchJob), a page of jobs, a job's attestation, and the queue statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from coordd.core.errors import FailedPrecondition, PermissionDenied
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.jobs.attestation import Attestation, attestation_of
from coordd.domain.jobs.states import FAILED, QUEUED, RUNNING, SUCCEEDED
from coordd.domain.jobs.transitions import not_found
from coordd.runtime import Runtime
from coordd.store.jobs import reads
from coordd.store.jobs.models import Job, JobAttempt


@dataclass(frozen=True)
class JobView:
    job: Job
    attempts: list[JobAttempt] = field(default_factory=list)


def _visible(who: Principal, job: Job) -> bool:
    return who.is_admin or who.user_id in (job.submitter, job.provider)


def attempt_history(job: Job, ended: list[JobAttempt]) -> list[JobAttempt]:
    """Every attempt in order: the stored rows of attempts that ended without success, then
    the current attempt (running) or the successful one, taken from the job row."""
    history = list(ended)
    current = job.attempt
    if current and job.state in (RUNNING, SUCCEEDED) and (not history or history[-1].attempt != current):
        history.append(
            JobAttempt(
                job=job.id,
                attempt=current,
                provider=job.provider or "",
                lease_id=job.lease_id or "",
                start_time=job.start_time,
                end_time=job.finish_time if job.state == SUCCEEDED else None,
                outcome=job.state,
                error="",
            )
        )
    return history


def get_job(who: Principal, job_id: str) -> JobView:
    job = reads.find_job(job_id)
    if job is None or not _visible(who, job):
        # Someone else's job is reported as missing: existence is not leaked.
        raise not_found(job_id)
    return JobView(job, attempt_history(job, reads.ended_attempts(job_id)))


def queue_position(job: Job) -> int:
    """1-based position among claimable queued jobs (priority, then age); 0 if not queued."""
    if job.state != QUEUED:
        return 0
    return reads.count_ahead(QUEUED, job.priority, job.id) + 1


def watch_view(who: Principal, job_id: str) -> tuple[JobView, int]:
    view = get_job(who, job_id)
    return view, queue_position(view.job)


def list_jobs(who: Principal, page: PageRequest, state: str, kind: str, submitter: str) -> Page[Job]:
    target = submitter or who.user_id
    if target != who.user_id and not who.is_admin:
        raise PermissionDenied("only admins may list other users' jobs", reason="NOT_OWNER")
    return reads.jobs_of(target, state, kind, page)


def get_attestation(who: Principal, job_id: str) -> Attestation:
    job = reads.find_job(job_id)
    if job is None or not _visible(who, job):
        raise not_found(job_id)
    if job.attestation_sig is not None:
        return attestation_of(job)
    legacy = reads.legacy_attestation(job_id)
    if legacy is None:
        raise FailedPrecondition(
            f"jobs/{job_id} has no attestation: it is {job.state}", reason="NOT_ATTESTED"
        )
    return Attestation.of(legacy)


@dataclass(frozen=True)
class QueueStats:
    depths: list[tuple[str, int, int]]
    oldest_queued_age_s: float
    window_s: float
    succeeded: int
    failed: int
    average_run_time_s: float

    @property
    def throughput(self) -> float:
        return (self.succeeded + self.failed) / self.window_s

    @property
    def success_rate(self) -> float:
        done = self.succeeded + self.failed
        return self.succeeded / done if done else 0.0


def queue_stats(rt: Runtime, window_s: float) -> QueueStats:
    now = rt.now()
    depths = [
        (state, d.priority, d.count)
        for state, rows in (
            (QUEUED, reads.count_by_priority(QUEUED)),
            (RUNNING, reads.count_by_priority(RUNNING, leased_only=True)),
        )
        for d in rows
    ]
    oldest = reads.oldest_claimable(QUEUED, now)
    oldest_age = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())
    rows = reads.finished_since(now - timedelta(seconds=window_s), [SUCCEEDED, FAILED])
    succeeded, run_us = rows.get(SUCCEEDED, (0, None))
    failed = rows.get(FAILED, (0, None))[0]
    return QueueStats(
        depths, oldest_age, window_s, int(succeeded), int(failed), float(run_us or 0) / 1_000_000
    )
