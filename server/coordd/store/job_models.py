"""Job tables: jobs, their required labels, every attempt, and signed attestations.

Due-time columns are indexed and set only while they matter (`lease_expire_time` while
running, `start_deadline` while queued, `close_deadline` until finished, `purge_time` after),
so each scheduler task reads only what is due. Claims use the partial index on queued
jobs ordered by (priority DESC, id), created by the migration.
Durations are stored as integer milliseconds (0 = no limit).
"""

from __future__ import annotations

import peewee

from coordd.store.models import BaseModel, IdModel, JSONField, TimestampField


class Job(IdModel):
    submitter = peewee.CharField(max_length=64)
    kind = peewee.CharField(max_length=16)  # inference | training
    model_ref = peewee.CharField(max_length=500)
    input_data = peewee.BlobField(null=True)
    input_uri = peewee.CharField(max_length=2000, default="")
    input_digest = peewee.CharField(max_length=64)
    labels = JSONField(default=list)
    label_count = peewee.IntegerField(default=0)
    gpus = peewee.IntegerField(default=0)
    budget = peewee.BigIntegerField(default=0)
    fee = peewee.BigIntegerField(default=0)
    priority = peewee.IntegerField(default=0)
    max_attempts = peewee.IntegerField()
    # The attempt number after which the job dead-letters (raised by RequeueJob).
    attempt_limit = peewee.IntegerField()
    schedule_to_start_ms = peewee.BigIntegerField(default=0)
    start_to_close_ms = peewee.BigIntegerField(default=0)
    heartbeat_ms = peewee.BigIntegerField()
    schedule_to_close_ms = peewee.BigIntegerField(default=0)
    # First lease of an attempt: min(heartbeat, start-to-close), precomputed for the claim statement.
    lease_ms = peewee.BigIntegerField()
    state = peewee.CharField(max_length=16)  # queued | running | succeeded | failed | cancelled
    attempt = peewee.IntegerField(default=0)
    lease_id = peewee.CharField(max_length=32, null=True)
    provider = peewee.CharField(max_length=64, null=True)
    lease_expire_time = TimestampField(null=True, index=True)
    attempt_deadline = TimestampField(null=True)
    run_after = TimestampField()
    queue_time = TimestampField()
    start_deadline = TimestampField(null=True, index=True)
    close_deadline = TimestampField(null=True, index=True)
    create_time = TimestampField()
    start_time = TimestampField(null=True)
    finish_time = TimestampField(null=True, index=True)
    progress = peewee.FloatField(default=0.0)
    cancel_requested = peewee.BooleanField(default=False)
    output_data = peewee.BlobField(null=True)
    output_uri = peewee.CharField(max_length=2000, default="")
    output_digest = peewee.CharField(max_length=64, default="")
    error = peewee.TextField(default="")
    purge_time = TimestampField(null=True, index=True)
    payload_purged = peewee.BooleanField(default=False)

    class Meta:
        indexes = (
            (("submitter", "id"), False),
            (("state", "priority"), False),
        )


class JobLabel(BaseModel):
    """One row per required label, so a claim can test "every label is offered" in SQL."""

    job = peewee.ForeignKeyField(Job, on_delete="CASCADE")
    label = peewee.CharField(max_length=100)

    class Meta:
        primary_key = peewee.CompositeKey("job", "label")


class JobAttempt(BaseModel):
    id = peewee.BigAutoField()
    job = peewee.ForeignKeyField(Job, backref="attempts", on_delete="CASCADE")
    attempt = peewee.IntegerField()
    provider = peewee.CharField(max_length=64)
    lease_id = peewee.CharField(max_length=32)
    start_time = TimestampField()
    end_time = TimestampField(null=True)
    # running | succeeded | failed | lease_expired | timed_out | cancelled | returned
    outcome = peewee.CharField(max_length=16, default="running")
    error = peewee.TextField(default="")

    class Meta:
        indexes = ((("job", "attempt"), True),)


class JobAttestation(BaseModel):
    job = peewee.ForeignKeyField(Job, primary_key=True, on_delete="CASCADE")
    payload_type = peewee.CharField(max_length=100)
    payload = peewee.BlobField()
    key_id = peewee.CharField(max_length=64)
    signature = peewee.BlobField()
    create_time = TimestampField()


def create_tables(db: peewee.Database) -> None:
    """Migration 11: the tables, plus the claim index (queued jobs only, in claim order)."""
    db.create_tables([Job, JobLabel, JobAttempt, JobAttestation], safe=False)
    db.execute_sql("CREATE INDEX job_claim_order ON job (priority DESC, id) WHERE state = 'queued'")
