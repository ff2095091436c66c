"""Ceremony scheduler tasks: open/close at their times, turn deadlines and penalties,
verifications a restart stopped (resumed at once), and the repair of states with no way forward.

Deadlines are indexed due-time columns checked every second, so a deadline fires within
about a second of its time; each task is idempotent and selects only what is due.
"""

from __future__ import annotations

from coordd.domain import ceremony
from coordd.scheduler.core import Task


def tasks() -> list[Task]:
    return [
        Task("ceremony-lifecycle", 1.0, ceremony.run_lifecycle),
        Task("ceremony-deadlines", 1.0, ceremony.fire_deadlines),
        Task("ceremony-verifications", 1.0, ceremony.recover_verifications),
        Task("ceremony-repair", 15.0, ceremony.repair),
    ]
