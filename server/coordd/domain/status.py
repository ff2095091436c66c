"""What GetStatus and ListEvents report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.store import status as queries
from coordd.store.models import EventLog, SchedulerLeader, SchedulerTaskRun

SCHEDULER = "scheduler"

# Rows the api converts (attribute access only).
EventRow = EventLog


class LiveTask(Protocol):
    name: str
    interval: float


class LiveScheduler(Protocol):
    """What this process knows about its scheduler (the app passes its Scheduler)."""

    is_leader: bool
    tasks: Sequence[LiveTask]


@dataclass(frozen=True)
class SchedulerView:
    leader: SchedulerLeader | None
    tasks: list[SchedulerTaskRun]


def shows_internals(who: Principal) -> bool:
    """Host name, pid, row counts, the scheduler and streams are for admins; others see that
    the daemon serves, its version and its database backend."""
    return who.is_admin


def counts() -> dict[str, int]:
    return queries.row_counts()


def scheduler_view() -> SchedulerView:
    return SchedulerView(queries.scheduler_leader(SCHEDULER), queries.task_runs())


def list_events(page: PageRequest, type_prefix: str, subject: str) -> Page[EventLog]:
    return queries.events_page(page, type_prefix, subject)
