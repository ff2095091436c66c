"""What GetStatus and ListEvents report."""

from __future__ import annotations

from dataclasses import dataclass

import peewee

from coordd.store.ceremony_models import Ceremony, Contribution, Participant
from coordd.store.competition_models import Competition, CompetitionNotification, Registration
from coordd.store.job_models import Job
from coordd.store.ledger_models import LedgerAccount, LedgerEntry
from coordd.store.models import ApiKey, EventLog, IdempotencyRecord, SchedulerLeader, SchedulerTaskRun, User
from coordd.store.node.models import Incident, Node, Project, Workload
from coordd.store.notify.models import Channel, Delivery
from coordd.store.paging import Page, PageRequest, keyset_page

SCHEDULER = "scheduler"

# Each domain adds the tables it wants counted.
COUNTED: dict[str, type[peewee.Model]] = {
    "users": User,
    "api_keys": ApiKey,
    "events": EventLog,
    "idempotency_records": IdempotencyRecord,
    "node_projects": Project,
    "nodes": Node,
    "node_workloads": Workload,
    "node_incidents": Incident,
    "notify_channels": Channel,
    "notify_deliveries": Delivery,
    "ledger_accounts": LedgerAccount,
    "ledger_entries": LedgerEntry,
    "jobs": Job,
    "competitions": Competition,
    "competition_registrations": Registration,
    "competition_notifications": CompetitionNotification,
    "ceremonies": Ceremony,
    "ceremony_participants": Participant,
    "ceremony_contributions": Contribution,
}


@dataclass(frozen=True)
class SchedulerView:
    leader: SchedulerLeader | None
    tasks: list[SchedulerTaskRun]


def counts() -> dict[str, int]:
    return {name: model.select().count() for name, model in COUNTED.items()}


def scheduler_view() -> SchedulerView:
    leader = SchedulerLeader.get_or_none(SchedulerLeader.name == SCHEDULER)
    tasks = list(SchedulerTaskRun.select().order_by(SchedulerTaskRun.name))
    return SchedulerView(leader, tasks)


def list_events(page: PageRequest, type_prefix: str, subject: str) -> Page[EventLog]:
    query = EventLog.select()
    if type_prefix:
        query = query.where(EventLog.type.startswith(type_prefix))
    if subject:
        query = query.where(EventLog.subject == subject)
    return keyset_page(
        query, EventLog.id, page, filters={"type": type_prefix, "subject": subject}, descending=True
    )
