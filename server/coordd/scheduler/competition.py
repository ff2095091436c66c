"""Competition scheduler tasks: lifecycle by time, offer expiry, reminders, notifications.

Each selects only what is due through an indexed column (competitions.due_time,
competitions.reminder_time, registrations.offer_expire_time,
competition_notifications.next_attempt_time) and is idempotent.
"""

from __future__ import annotations

from coordd.domain import competition, competition_notify
from coordd.scheduler.core import Task

LIFECYCLE = "competition-lifecycle"
OFFERS = "competition-offers"
REMINDERS = "competition-reminders"
NOTIFICATIONS = "competition-notifications"


def tasks() -> list[Task]:
    return [
        Task(LIFECYCLE, 1.0, competition.advance_due),
        Task(OFFERS, 5.0, competition.expire_offers),
        Task(REMINDERS, 10.0, competition.queue_reminders),
        Task(NOTIFICATIONS, 2.0, competition_notify.deliver),
    ]
