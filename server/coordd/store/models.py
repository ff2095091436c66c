"""peewee models for the platform tables. Domain modules add their own model files.

Times are stored as integer microseconds since the epoch (TimestampField): the same
on SQLite and PostgreSQL, indexable, and always returned as aware UTC datetimes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import peewee

from coordd.core.ids import new_id
from coordd.store.db import database_proxy


class TimestampField(peewee.BigIntegerField):
    def db_value(self, value: datetime | None) -> int | None:
        if value is None:
            return None
        if isinstance(value, int):
            return value
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: use an aware UTC datetime")
        delta = value - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds

    def python_value(self, value: int | None) -> datetime | None:
        if value is None:
            return None
        seconds, micros = divmod(int(value), 1_000_000)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


class JSONField(peewee.TextField):
    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


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


class User(IdModel):
    email = peewee.CharField(max_length=254)
    # Lower-cased email: uniqueness is case-insensitive while the stored address keeps its case.
    email_key = peewee.CharField(max_length=254, unique=True)
    display_name = peewee.CharField(max_length=100)
    password_hash = peewee.CharField(max_length=255)
    roles = peewee.CharField(max_length=255)  # comma-separated role names
    create_time = TimestampField()
    disabled = peewee.BooleanField(default=False)


class ApiKey(IdModel):
    user = peewee.ForeignKeyField(User, backref="api_keys", on_delete="CASCADE")
    display_name = peewee.CharField(max_length=100)
    prefix = peewee.CharField(max_length=16)
    # SHA-256 of the secret: secrets are 256-bit random, so a slow KDF adds nothing.
    secret_hash = peewee.CharField(max_length=64, unique=True)
    roles = peewee.CharField(max_length=255)
    create_time = TimestampField()
    expire_time = TimestampField(null=True)
    revoke_time = TimestampField(null=True)


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
