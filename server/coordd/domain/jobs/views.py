"""What submitters, providers and operators read: a job with its attempt history, its queue
position (for WatchJob), a page of jobs, a job's attestation, and the queue statistics.

Reads come in two views (AIP-157): `full` includes the inline input and output bytes, the
basic view leaves them out (their sizes and digests stay) and does not even read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from coordd.core.errors import FailedPrecondition, PermissionDenied
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.jobs.attestation import Attestation, attestation_of
from coordd.domain.jobs.leases import largest_reply_budget
from coordd.domain.jobs.states import FAILED, PENDING, QUEUED, RUNNING, SUCCEEDED
from coordd.domain.jobs.transitions import not_found
from coordd.runtime import Runtime
from coordd.store.jobs import reads
from coordd.store.jobs.models import Job, JobAttempt
from coordd.store.jobs.reads import SizedJob


@dataclass(frozen=True)
class JobView:
    """A job as read: without `full`, `job.input_data` and `job.output_data` are None whatever
    the job holds; the sizes of its inline payloads are there in both views."""

    job: Job
    attempts: list[JobAttempt] = field(default_factory=list)
    full: bool = True
    input_size: int = 0
    output_size: int = 0

    @classmethod
    def of(cls, sized: SizedJob, full: bool, attempts: list[JobAttempt] | None = None) -> JobView:
        return cls(sized.job, attempts or [], full, sized.input_size, sized.output_size)


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


def get_job(who: Principal, job_id: str, full: bool = True) -> JobView:
    sized = reads.find_sized_job(job_id, payloads=full)
    if sized is None or not _visible(who, sized.job):
        # Someone else's job is reported as missing: existence is not leaked.
        raise not_found(job_id)
    return JobView.of(sized, full, attempt_history(sized.job, reads.ended_attempts(job_id)))


def payloads(who: Principal, job_id: str) -> tuple[bytes | None, bytes | None]:
    """A job's inline input and output data (None: a URI, purged, or no output yet)."""
    job = reads.find_job(job_id)
    if job is None or not _visible(who, job):
        raise not_found(job_id)
    data_in, data_out = job.input_data, job.output_data  # PostgreSQL: memoryviews
    return (None if data_in is None else bytes(data_in)), (None if data_out is None else bytes(data_out))


def queue_position(job: Job) -> int:
    """1-based position among queued jobs in claim order (priority, fair share, age); 0 if
    not queued."""
    if job.state != QUEUED:
        return 0
    return reads.count_ahead(QUEUED, job.priority, job.id, job.fair_seq) + 1


def watch_view(who: Principal, job_id: str) -> tuple[JobView, int]:
    """The basic view and the queue position: a watcher re-reads these on every change, so
    the payloads are never read here (WatchJob fetches them once, see `payloads`)."""
    view = get_job(who, job_id, full=False)
    return view, queue_position(view.job)


ALL_SUBMITTERS = "-"


def list_jobs(
    rt: Runtime, who: Principal, page: PageRequest, state: str, kind: str, submitter: str, full: bool = False
) -> Page[JobView]:
    """A page of jobs. In the full view the page also ends before the job whose payloads
    would not fit in one reply (the next page starts there)."""
    target = submitter or who.user_id
    if target != who.user_id and not who.is_admin:
        raise PermissionDenied("only admins may list other users' jobs", reason="NOT_OWNER")
    # `users/-` (AIP-159): every submitter's jobs, for an admin, newest first.
    everyone = target == ALL_SUBMITTERS
    # Payloads take at most half the reply: the rest is for the jobs' other fields.
    budget = largest_reply_budget(rt) // 2 if full else None
    found = reads.jobs_of(None if everyone else target, state, kind, page, budget)
    return Page([JobView.of(item, full) for item in found.items], found.next_token)


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
            (PENDING, reads.count_by_priority(PENDING)),
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
