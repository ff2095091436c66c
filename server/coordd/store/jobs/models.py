"""Job tables: jobs, their required labels, every attempt, and signed attestations.

Due-time columns are set only while they matter (`lease_expire_time` while running,
`start_deadline` while queued, `close_deadline` until finished, `purge_time` after) and
their indexes are partial (`IS NOT NULL`), so each scheduler task reads only what is due and
a claim or a completion, which clears most of them, writes only the index entries it needs
(migration 12; an update writes an entry in every index whose predicate the new row meets).
Claims use the partial index on queued jobs ordered by (priority DESC, fair_seq, id)
(`job_claim_fair`, migration 112; before it `job_claim_order`, (priority DESC, id)).
Durations are stored as integer milliseconds (0 = no limit).

Attempt history: a `job_attempt` row is written when an attempt ends without success
(failure, expired lease, timeout, cancellation, hand-back), with its error. The current
attempt, and the one that succeeded, live on the job row (attempt, provider, start_time,
finish_time), so a claim and a completion write no attempt row at all.
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
    lease_expire_time = TimestampField(null=True)
    attempt_deadline = TimestampField(null=True)
    run_after = TimestampField()
    queue_time = TimestampField()
    start_deadline = TimestampField(null=True)
    close_deadline = TimestampField(null=True)
    create_time = TimestampField()
    start_time = TimestampField(null=True)
    finish_time = TimestampField(null=True)
    progress = peewee.FloatField(default=0.0)
    cancel_requested = peewee.BooleanField(default=False)
    output_data = peewee.BlobField(null=True)
    output_uri = peewee.CharField(max_length=2000, default="")
    output_digest = peewee.CharField(max_length=64, default="")
    error = peewee.TextField(default="")
    purge_time = TimestampField(null=True)
    payload_purged = peewee.BooleanField(default=False)
    # The coordinator's Ed25519 signature over the result statement, and the key that made it
    # (migration 12). The statement itself is not stored: it is a deterministic function of
    # this row's columns, none of which change once the job succeeded
    # (domain.jobs.attestation.statement_json rebuilds the signed bytes; a new statement format
    # must keep writing the old one for rows signed before it). Storing ~700 bytes per job
    # cost more PostgreSQL CPU than the rest of the completion together.
    attestation_key_id = peewee.CharField(max_length=64, default="")
    attestation_sig = peewee.BlobField(null=True)
    # Migration 110. While `pending`, the job waits for `run_after` (its schedule time, or a
    # snooze) and for `parents_left` parents to succeed; it is outside the claim index.
    schedule_time = TimestampField(null=True)
    unique_key = peewee.CharField(max_length=200, default="")
    parents = JSONField(default=list)
    parents_left = peewee.IntegerField(default=0)
    # Some job lists this one as a parent: its completion or failure must reach them.
    has_children = peewee.BooleanField(default=False)
    # Migration 112. Fair share: the claim order within a priority is fair_seq (the
    # submitter's virtual time, see domain.jobs.fairness), then id. `priority` is the
    # effective priority (raised by aging); `base_priority` the one submitted.
    fair_seq = peewee.BigIntegerField(default=0)
    base_priority = peewee.IntegerField(default=0)

    class Meta:
        indexes = ((("submitter", "id"), False),)


class JobLabel(BaseModel):
    """One row per required label, so a claim can test "every label is offered" in SQL."""

    job = peewee.ForeignKeyField(Job, on_delete="CASCADE", index=False)  # the key leads with it
    label = peewee.CharField(max_length=100)

    class Meta:
        primary_key = peewee.CompositeKey("job", "label")


class JobAttempt(BaseModel):
    id = peewee.BigAutoField()
    job = peewee.ForeignKeyField(Job, backref="attempts", on_delete="CASCADE", index=False)
    attempt = peewee.IntegerField()
    provider = peewee.CharField(max_length=64)
    lease_id = peewee.CharField(max_length=32)
    start_time = TimestampField()
    end_time = TimestampField(null=True)
    # failed | lease_expired | timed_out | cancelled | returned (rows written since migration 12;
    # "running" and "succeeded" are read from the job row)
    outcome = peewee.CharField(max_length=16)
    error = peewee.TextField(default="")

    class Meta:
        indexes = ((("job", "attempt"), True),)


class JobDependency(BaseModel):
    """One edge of the job graph: `job` waits for `parent` (migration 110)."""

    parent = peewee.CharField(max_length=26)
    job = peewee.CharField(max_length=26)

    class Meta:
        primary_key = peewee.CompositeKey("parent", "job")


class JobUnique(BaseModel):
    """The claimed unique keys (migration 110): `key` is the SHA-256 of (submitter, model
    ref if per model, key); its primary key is what makes a racing duplicate impossible.
    `expire_time` is set for a windowed key; without it the key is free once `job` finished."""

    key = peewee.CharField(max_length=64, primary_key=True)
    job = peewee.CharField(max_length=26)
    expire_time = TimestampField(null=True)


class JobLimit(BaseModel):
    """A concurrency cap (migration 111): at most `max_running` running jobs of one
    submitter (`key` a user id, or `*`: each submitter), one model ref, or one label."""

    scope = peewee.CharField(max_length=16)  # submitter | model | label
    key = peewee.CharField(max_length=500)
    max_running = peewee.IntegerField()

    class Meta:
        primary_key = peewee.CompositeKey("scope", "key")


class JobSchedule(IdModel):
    """A periodic job (migration 113): `spec` is the job template (domain.jobs.schedules);
    every tick at or after `next_tick_time` queues one job from it, in the transaction that
    advances `next_tick_time` (the row is locked: one job per tick whoever fires it)."""

    owner = peewee.CharField(max_length=64)
    spec = JSONField()
    cron = peewee.CharField(max_length=200, default="")
    time_zone = peewee.CharField(max_length=64, default="")
    interval_ms = peewee.BigIntegerField(default=0)
    missed_policy = peewee.CharField(max_length=16)  # skip | catch_up_once
    paused = peewee.BooleanField(default=False)
    next_tick_time = TimestampField()
    last_tick_time = TimestampField(null=True)
    last_job = peewee.CharField(max_length=26, default="")
    ticks_fired = peewee.BigIntegerField(default=0)
    ticks_skipped = peewee.BigIntegerField(default=0)
    last_skip_reason = peewee.CharField(max_length=500, default="")
    create_time = TimestampField()

    class Meta:
        indexes = ((("owner", "id"), False),)


class JobAttestation(BaseModel):
    """Attestations signed before migration 12, which stored the whole envelope per job; read
    only for those jobs."""

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


# Migration 12: (name, columns, predicate). Measured with bench/jobs.py: a claim wrote 8 index
# entries per job and a completion 8, most of them for NULLs nobody looks up; now 3 and 4.
# Queue depths read queued jobs through job_claim_order and running ones through job_lease_due
# (a job is running exactly while it has a lease expiry), so (state, priority) is not indexed.
_PARTIAL_INDEXES = (
    ("job_lease_due", "lease_expire_time", "lease_expire_time IS NOT NULL"),
    ("job_start_due", "start_deadline", "start_deadline IS NOT NULL"),
    ("job_close_due", "close_deadline", "close_deadline IS NOT NULL"),
    ("job_finished", "finish_time", "finish_time IS NOT NULL"),
    ("job_purge_due", "purge_time", "purge_time IS NOT NULL"),
)
_REPLACED_INDEXES = (
    "job_lease_expire_time",
    "job_start_deadline",
    "job_close_deadline",
    "job_finish_time",
    "job_purge_time",
    "job_state_priority",
    "job_attempt_job_id",  # the unique (job_id, attempt) index serves lookups by job
    "job_label_job_id",  # so does the (job_id, label) primary key
)


def lean_hot_path(db: peewee.Database) -> None:
    """Migration 12: partial due-time indexes, no redundant ones, attempt rows only for
    attempts that ended without success, and the attestation signature on the job row."""
    columns = {c.name for c in db.get_columns("job")}
    # Created by migration 11 already on installs that started with this model.
    if "attestation_key_id" not in columns:
        db.execute_sql("ALTER TABLE job ADD COLUMN attestation_key_id VARCHAR(64) NOT NULL DEFAULT ''")
    if "attestation_sig" not in columns:
        blob = "BYTEA" if isinstance(db, peewee.PostgresqlDatabase) else "BLOB"
        db.execute_sql(f"ALTER TABLE job ADD COLUMN attestation_sig {blob}")
    for name in _REPLACED_INDEXES:
        db.execute_sql(f"DROP INDEX IF EXISTS {name}")
    for name, columns, predicate in _PARTIAL_INDEXES:
        db.execute_sql(f"CREATE INDEX IF NOT EXISTS {name} ON job ({columns}) WHERE {predicate}")
    # The running or succeeded attempt is read from the job row from now on.
    db.execute_sql("DELETE FROM job_attempt WHERE outcome IN ('running', 'succeeded')")


_PENDING_COLUMNS = (
    ("schedule_time", "BIGINT"),
    ("unique_key", "VARCHAR(200) NOT NULL DEFAULT ''"),
    ("parents", "TEXT NOT NULL DEFAULT '[]'"),
    ("parents_left", "INTEGER NOT NULL DEFAULT 0"),
    ("has_children", "BOOLEAN NOT NULL DEFAULT FALSE"),
)


def add_pending(db: peewee.Database) -> None:
    """Migration 110: pending jobs (schedule time, snooze, parents), the dependency edges and
    the unique keys. Pending jobs are released through their own partial index, so the claim
    index (queued only) never walks jobs that cannot run yet."""
    columns = {c.name for c in db.get_columns("job")}
    for name, ddl in _PENDING_COLUMNS:
        if name not in columns:  # installs that started with this model have them already
            db.execute_sql(f"ALTER TABLE job ADD COLUMN {name} {ddl}")
    db.create_tables([JobDependency, JobUnique], safe=True)
    db.execute_sql("CREATE INDEX IF NOT EXISTS job_dependency_child ON job_dependency (job)")
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS job_pending_due ON job (run_after)"
        " WHERE state = 'pending' AND parents_left = 0"
    )


def add_limits(db: peewee.Database) -> None:
    """Migration 111: concurrency caps."""
    db.create_tables([JobLimit], safe=True)


def add_fair_share(db: peewee.Database) -> None:
    """Migration 112: fair share across submitters. The claim index becomes (priority DESC,
    fair_seq, id); the old one is dropped (each index on queued jobs is written by every
    claim). Existing jobs keep their order (fair_seq 0, then id)."""
    columns = {c.name for c in db.get_columns("job")}
    if "fair_seq" not in columns:
        db.execute_sql("ALTER TABLE job ADD COLUMN fair_seq BIGINT NOT NULL DEFAULT 0")
    if "base_priority" not in columns:
        db.execute_sql("ALTER TABLE job ADD COLUMN base_priority INTEGER NOT NULL DEFAULT 0")
        db.execute_sql("UPDATE job SET base_priority = priority")
    # A submitter's latest queued virtual time; a claim adds no entry to it (the claimed row
    # is no longer queued), a submission one.
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS job_queued_submitter ON job (submitter, fair_seq) WHERE state = 'queued'"
    )
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS job_claim_fair ON job (priority DESC, fair_seq, id)"
        " WHERE state = 'queued'"
    )
    db.execute_sql("DROP INDEX IF EXISTS job_claim_order")


def add_schedules(db: peewee.Database) -> None:
    """Migration 113: periodic jobs, read when due through a partial index."""
    db.create_tables([JobSchedule], safe=True)
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS job_schedule_due ON job_schedule (next_tick_time) WHERE NOT paused"
    )


def add_queue_time_indexes(db: peewee.Database) -> None:
    """Migration 210: aging reads only the queued jobs whose wait crossed a level boundary
    (`job_queued_since`, by queue time), and queue stats count pending jobs by priority
    (`job_pending_priority`) without scanning the table. Neither gets an entry from a claim
    or a completion (their rows are not queued/pending afterwards)."""
    for name, column, state in (
        ("job_queued_since", "queue_time", "queued"),
        ("job_pending_priority", "priority", "pending"),
    ):
        db.execute_sql(f"CREATE INDEX IF NOT EXISTS {name} ON job ({column}) WHERE state = '{state}'")
