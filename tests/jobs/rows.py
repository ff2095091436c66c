"""The one place tests read stored job rows (and tamper with one).

docs/job-store-v2.md moves a job's hot columns (state, attempt, lease, deadlines, results) out
of the wide `job` table into new tables. Tests that checked what is stored read those columns
here, not through `Job.select()` or raw SQL of their own, so that split changes only this file.
Each function returns the stored job as the `Job` model (every column filled), whatever tables
hold it; today they read the `job` table with peewee, on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import peewee

from coordd.domain import jobs
from coordd.store.jobs.models import Job


def _where(state: str | None, submitter: str | None) -> peewee.ModelSelect:
    query = Job.select()
    if state is not None:
        query = query.where(Job.state == state)
    if submitter is not None:
        query = query.where(Job.submitter == submitter)
    return query


def job_row(job: str) -> Job:
    """The stored job with this id, or resource name `jobs/<id>` (Job.DoesNotExist if none)."""
    return Job.get_by_id(job.removeprefix("jobs/"))


def job_rows(state: str | None = None, submitter: str | None = None) -> list[Job]:
    """The stored jobs (of one state, of one submitter), oldest first: by creation time, then
    fair order, then id."""
    return list(_where(state, submitter).order_by(Job.create_time, Job.fair_seq, Job.id))


def count_jobs(state: str | None = None, submitter: str | None = None) -> int:
    """How many jobs are stored (of one state, of one submitter)."""
    return int(_where(state, submitter).count())


def unfinished_budgets() -> dict[str, int]:
    """Every submitter with a stored job, and the total budget of their unfinished jobs."""
    unfinished = peewee.Case(None, [(Job.state.in_(list(jobs.UNFINISHED)), Job.budget)], 0)
    query = Job.select(Job.submitter, peewee.fn.SUM(unfinished).alias("held")).group_by(Job.submitter)
    return {row.submitter: int(row.held) for row in query}


def forget_signature(job: str) -> None:
    """Test-only tampering: the job's stored signature and key are gone, as in a row signed
    before migration 12 (whose envelope is in `job_attestation`)."""
    changed = (
        Job.update(attestation_sig=None, attestation_key_id="")
        .where(Job.id == job.removeprefix("jobs/"))
        .execute()
    )
    assert changed == 1, f"no stored job {job}"
