"""Job scheduler tasks: each selects only due rows through an indexed due-time column."""

from __future__ import annotations

from coordd.domain import jobs
from coordd.scheduler.core import Task


def tasks() -> list[Task]:
    return [
        Task("jobs-rescue-expired-leases", 1.0, jobs.rescue_expired_leases),
        Task("jobs-enforce-deadlines", 1.0, jobs.enforce_deadlines),
        Task("jobs-release-pending", 1.0, jobs.release_pending),
        Task("jobs-fire-schedules", 1.0, jobs.fire_schedules),
        Task("jobs-age-priorities", 30.0, jobs.age_priorities),
        Task("jobs-purge-payloads", 300.0, jobs.purge_payloads),
    ]
