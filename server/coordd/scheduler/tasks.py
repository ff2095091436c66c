"""The platform's scheduler tasks. Each domain appends its own in its scheduler module."""

from __future__ import annotations

from coordd.domain import idempotency
from coordd.scheduler.core import Task


def platform_tasks() -> list[Task]:
    return [
        Task("purge-idempotency-records", 60.0, idempotency.purge_expired),
    ]
