"""The queries behind GetStatus and ListEvents: row counts over every table, the scheduler's
lease and task runs, and the event log."""

from __future__ import annotations

from coordd.core.paging import Page, PageRequest
from coordd.store.models import EventLog, SchedulerLeader, SchedulerTaskRun
from coordd.store.paging import keyset_page

# Resource name -> table. By table name, so this module depends on no domain's models;
# each domain adds the tables it wants counted.
COUNTED: dict[str, str] = {
    "users": "user",
    "api_keys": "api_key",
    "events": "event_log",
    "idempotency_records": "idempotency_record",
    "node_projects": "node_projects",
    "nodes": "nodes",
    "node_workloads": "node_workloads",
    "node_incidents": "node_incidents",
    "notify_channels": "notify_channels",
    "notify_deliveries": "notify_deliveries",
    "ledger_accounts": "ledger_account",
    "ledger_entries": "ledger_entry",
    "jobs": "job",
    "competitions": "competition",
    "competition_registrations": "registration",
    "competition_notifications": "competition_notifications",
    "ceremonies": "ceremony",
    "ceremony_participants": "participant",
    "ceremony_contributions": "contribution",
}


def row_counts() -> dict[str, int]:
    db = EventLog._meta.database
    return {
        name: int(db.execute_sql(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])
        for name, table in COUNTED.items()
    }


def scheduler_leader(name: str) -> SchedulerLeader | None:
    return SchedulerLeader.get_or_none(SchedulerLeader.name == name)


def task_runs() -> list[SchedulerTaskRun]:
    return list(SchedulerTaskRun.select().order_by(SchedulerTaskRun.name))


def events_page(page: PageRequest, type_prefix: str, subject: str) -> Page[EventLog]:
    """Newest first."""
    query = EventLog.select()
    if type_prefix:
        query = query.where(EventLog.type.startswith(type_prefix))
    if subject:
        query = query.where(EventLog.subject == subject)
    return keyset_page(
        query, EventLog.id, page, filters={"type": type_prefix, "subject": subject}, descending=True
    )
