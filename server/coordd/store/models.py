"""peewee base classes and the platform tables (migrations, events, scheduler, idempotency).

Each domain keeps its own models under `store/<domain>/models.py`; users and API keys live
in `coordd.store.auth.models`. Column types come from `coordd.store.fields` (re-exported here).
"""

from __future__ import annotations

import peewee

from coordd.core.ids import new_id
from coordd.store.db import database_proxy
from coordd.store.fields import JSONField, TimestampField

__all__ = [
    "BaseModel",
    "EventLog",
    "IdModel",
    "IdempotencyRecord",
    "JSONField",
    "SchedulerLeader",
    "SchedulerTaskRun",
    "SchemaMigration",
    "TimestampField",
]


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class IdModel(BaseModel):
    id = peewee.CharField(primary_key=True, max_length=26, default=new_id)


class SchemaMigration(BaseModel):
    version = peewee.IntegerField(primary_key=True)
    name = peewee.CharField()
    applied_time = TimestampField()


class IdempotencyRecord(BaseModel):
    scope = peewee.CharField(max_length=64)
    key = peewee.CharField(max_length=128)
    method = peewee.CharField(max_length=200)
    request_hash = peewee.CharField(max_length=64)
    state = peewee.CharField(max_length=16)  # running | done
    response = peewee.BlobField(null=True)
    locked_until = TimestampField()
    expire_time = TimestampField(index=True)
    create_time = TimestampField()

    class Meta:
        primary_key = peewee.CompositeKey("scope", "key")


class EventLog(BaseModel):
    id = peewee.BigAutoField()
    type = peewee.CharField(max_length=100, index=True)
    subject = peewee.CharField(max_length=200, index=True)
    data = JSONField()
    create_time = TimestampField(index=True)


class SchedulerLeader(BaseModel):
    """The scheduler's lease (one row, name "scheduler"). On PostgreSQL every time in it comes
    from the database's clock (store/scheduler_lease.py), never a replica's."""

    name = peewee.CharField(primary_key=True, max_length=50)
    # The holder: the instance that took the lease last (it leads while expire_time is ahead).
    instance_id = peewee.CharField(max_length=100)
    since_time = TimestampField()
    # The holder's last renewal.
    heartbeat_time = TimestampField()
    # Grows by one at every takeover; a scheduled task's write commits only under its own epoch.
    epoch = peewee.BigIntegerField(default=0)
    # The lease ends here unless renewed; 0: released (or never held).
    expire_time = TimestampField(default=0)
    # The holder's lease connection (PostgreSQL backend pid): when it is gone, so is the lease.
    holder_pid = peewee.IntegerField(default=0)


class SchedulerTaskRun(BaseModel):
    name = peewee.CharField(primary_key=True, max_length=100)
    interval_s = peewee.FloatField()
    last_start_time = TimestampField(null=True)
    last_duration_s = peewee.FloatField(null=True)
    last_error = peewee.TextField(default="")
    run_count = peewee.BigIntegerField(default=0)
    failure_count = peewee.BigIntegerField(default=0)
    # Who ran it last, under which leadership epoch (0: a single-process leader, SQLite).
    last_instance_id = peewee.CharField(max_length=100, default="")
    last_epoch = peewee.BigIntegerField(default=0)
