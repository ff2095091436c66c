"""The statements of periodic schedules: insert, lock, the due ones (partial index
`job_schedule_due`), an owner's, delete."""

from __future__ import annotations

from datetime import datetime

import peewee

from coordd.store.jobs.models import JobSchedule


def insert_schedule(row: JobSchedule) -> None:
    row.save(force_insert=True)


def save_schedule(row: JobSchedule) -> None:
    row.save()


def lock_schedule(schedule_id: str) -> JobSchedule | None:
    db = JobSchedule._meta.database
    query = JobSchedule.select().where(JobSchedule.id == schedule_id)
    if not isinstance(getattr(db, "obj", db), peewee.SqliteDatabase):
        query = query.for_update()
    return query.first()


def schedule_by_id(schedule_id: str) -> JobSchedule | None:
    return JobSchedule.get_or_none(JobSchedule.id == schedule_id)


def due_schedule_ids(now: datetime, limit: int) -> list[str]:
    query = (
        JobSchedule.select(JobSchedule.id)
        .where(~JobSchedule.paused & (JobSchedule.next_tick_time <= now))
        .order_by(JobSchedule.next_tick_time)
        .limit(limit)
    )
    return [r.id for r in query]


def schedules_of(owner: str | None, limit: int) -> list[JobSchedule]:
    """An owner's schedules (None: everyone's), oldest first."""
    query = JobSchedule.select()
    if owner is not None:
        query = query.where(JobSchedule.owner == owner)
    return list(query.order_by(JobSchedule.id).limit(limit))


def delete_schedule(schedule_id: str) -> None:
    JobSchedule.delete().where(JobSchedule.id == schedule_id).execute()
