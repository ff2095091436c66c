"""Every scheduler task. Each domain keeps its tasks in its own scheduler module and is
listed here once."""

from __future__ import annotations

from coordd.domain import idempotency
from coordd.scheduler import ceremony as ceremony_tasks
from coordd.scheduler import competition
from coordd.scheduler import jobs as job_tasks
from coordd.scheduler import node as node_tasks
from coordd.scheduler import notify as notify_tasks
from coordd.scheduler.core import Task


def platform_tasks() -> list[Task]:
    return [
        Task("purge-idempotency-records", 60.0, idempotency.purge_expired),
    ]


def all_tasks() -> list[Task]:
    return [
        *platform_tasks(),
        *node_tasks.tasks(),
        *notify_tasks.tasks(),
        *job_tasks.tasks(),
        *competition.tasks(),
        *ceremony_tasks.tasks(),
    ]
