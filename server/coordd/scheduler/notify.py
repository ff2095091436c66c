"""Scheduler tasks of the notification outbox."""

from __future__ import annotations

from coordd.domain import notify
from coordd.scheduler.core import Task


def tasks() -> list[Task]:
    return [Task("notify-deliver", 1.0, notify.deliver_due)]
