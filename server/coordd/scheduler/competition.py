"""Competition scheduler tasks: lifecycle by time, offer expiry, reminders. (Webhooks are
delivered by the shared outbox's own task, notify/tasks.py.)

Each selects only what is due through an indexed column (competitions.due_time,
competitions.reminder_time, registrations.offer_expire_time) and is idempotent.
"""

from __future__ import annotations

from coordd.domain import competition
from coordd.scheduler.core import Task

LIFECYCLE = "competition-lifecycle"
OFFERS = "competition-offers"
REMINDERS = "competition-reminders"


def tasks() -> list[Task]:
    return [
        Task(LIFECYCLE, 1.0, competition.advance_due),
        Task(OFFERS, 5.0, competition.expire_offers),
        Task(REMINDERS, 10.0, competition.queue_reminders),
    ]
