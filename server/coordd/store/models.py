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
    name = peewee.CharField(primary_key=True, max_length=50)
    instance_id = peewee.CharField(max_length=100)
    since_time = TimestampField()
    heartbeat_time = TimestampField()


class SchedulerTaskRun(BaseModel):
    name = peewee.CharField(primary_key=True, max_length=100)
    interval_s = peewee.FloatField()
    last_start_time = TimestampField(null=True)
    last_duration_s = peewee.FloatField(null=True)
    last_error = peewee.TextField(default="")
    run_count = peewee.BigIntegerField(default=0)
    failure_count = peewee.BigIntegerField(default=0)
