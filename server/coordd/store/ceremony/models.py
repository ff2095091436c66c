"""peewee models for ceremonies: ceremonies, circuits, participants, contributions, uploads.

Every deadline is a `due_time` column with an index, so the scheduler selects only what
is due. Queue order is `queue_seq`, a per-circuit counter taken under the circuit's row
lock, so FIFO order never depends on clock resolution.
"""

from __future__ import annotations

import peewee

from coordd.store.auth.models import User
from coordd.store.models import IdModel, JSONField, TimestampField

# Ceremony states.
SCHEDULED = "SCHEDULED"
OPENED = "OPENED"
PAUSED = "PAUSED"
CLOSED = "CLOSED"
FINALIZED = "FINALIZED"

# Participant statuses (exactly the list).
CREATED = "CREATED"
WAITING = "WAITING"
READY = "READY"
CONTRIBUTING = "CONTRIBUTING"
CONTRIBUTED = "CONTRIBUTED"
DONE = "DONE"
TIMEDOUT = "TIMEDOUT"
FINALIZING = "FINALIZING"
# FINALIZED (the coordinator's last state) shares the ceremony's constant.

# Contribution states.
VERIFYING = "VERIFYING"
VALID = "VALID"
INVALID = "INVALID"


class Ceremony(IdModel):
    coordinator = peewee.ForeignKeyField(User, backref="ceremonies", on_delete="RESTRICT")
    title = peewee.CharField(max_length=200)
    description = peewee.TextField(default="")
    prefix = peewee.CharField(max_length=64, unique=True)
    state = peewee.CharField(max_length=16, index=True)
    start_time = TimestampField()
    end_time = TimestampField()
    # The next scheduled state change (open at start_time, close at end_time); null when none.
    state_due_time = TimestampField(null=True, index=True)
    timeout_policy = peewee.CharField(max_length=16)
    fixed_timeout_s = peewee.FloatField(default=0)
    dynamic_threshold_pct = peewee.IntegerField(default=0)
    dynamic_floor_s = peewee.FloatField(default=0)
    start_window_s = peewee.FloatField()
    penalty_s = peewee.FloatField()
    verifier_command = peewee.TextField(default="")
    verify_timeout_s = peewee.FloatField()
    # An operator-declared verifier chosen by name ("none": size and hash only, unverified);
    # "" on ceremonies from before named verifiers (the command above, or the built-in check).
    verifier_name = peewee.CharField(max_length=64, default="")
    # Uploads rejected for a transport fault (size or digest mismatch) a contributor may
    # retry within the same turn.
    transport_retries = peewee.IntegerField(default=2)
    # Who may join: {"allowed": [identities], "min_account_age_s": n, "require_ethereum": bool}.
    eligibility = JSONField(default=dict)
    create_time = TimestampField()
    update_time = TimestampField()


class Circuit(IdModel):
    ceremony = peewee.ForeignKeyField(Ceremony, backref="circuits", on_delete="CASCADE")
    display_name = peewee.CharField(max_length=100)
    sequence = peewee.IntegerField()
    max_contribution_bytes = peewee.BigIntegerField()
    # Artifacts: size and BLAKE2b-512 hex once uploaded; files live in the blob store.
    r1cs_size = peewee.BigIntegerField(null=True)
    r1cs_hash = peewee.CharField(max_length=128, null=True)
    ptau_size = peewee.BigIntegerField(null=True)
    ptau_hash = peewee.CharField(max_length=128, null=True)
    # The chain: index and hash of the last valid contribution (-1 / "" before genesis).
    last_valid_index = peewee.IntegerField(default=-1)
    last_valid_hash = peewee.CharField(max_length=128, default="")
    last_valid_contribution = peewee.CharField(max_length=26, null=True)
    # The one participant holding the turn (READY, CONTRIBUTING, CONTRIBUTED or FINALIZING).
    current_participant = peewee.CharField(max_length=26, null=True)
    queue_counter = peewee.BigIntegerField(default=0)
    # Running statistics over valid contributions (seconds).
    contribution_count = peewee.IntegerField(default=0)
    contribution_total_s = peewee.FloatField(default=0)
    verification_count = peewee.IntegerField(default=0)
    verification_total_s = peewee.FloatField(default=0)
    beacon_hash = peewee.CharField(max_length=128, default="")
    beacon_iterations = peewee.IntegerField(default=0)
    finalized = peewee.BooleanField(default=False)
    create_time = TimestampField()

    class Meta:
        indexes = ((("ceremony", "sequence"), True),)


class Participant(IdModel):
    ceremony = peewee.ForeignKeyField(Ceremony, backref="participants", on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, backref="participations", on_delete="CASCADE")
    status = peewee.CharField(max_length=16)
    step = peewee.CharField(max_length=16, default="")
    # The circuit the participant is on; null before the ceremony opens and once DONE.
    circuit = peewee.ForeignKeyField(Circuit, null=True, backref="participants", on_delete="SET NULL")
    completed_circuits = peewee.IntegerField(default=0)
    queue_seq = peewee.BigIntegerField(default=0)
    timeouts_count = peewee.IntegerField(default=0)
    # The deadline of the current status (start window, turn, penalty, verification limit).
    due_time = TimestampField(null=True, index=True)
    turn_start_time = TimestampField(null=True)
    is_coordinator = peewee.BooleanField(default=False)
    left = peewee.BooleanField(default=False)
    # Transport-fault retries used in the current turn.
    retries_used = peewee.IntegerField(default=0)
    create_time = TimestampField()
    update_time = TimestampField()

    class Meta:
        indexes = (
            (("ceremony", "user"), True),
            (("circuit", "status", "queue_seq"), False),
        )


class Contribution(IdModel):
    circuit = peewee.ForeignKeyField(Circuit, backref="contributions", on_delete="CASCADE")
    participant = peewee.ForeignKeyField(Participant, null=True, on_delete="SET NULL")
    # The contributor's public id, kept even if the participant row goes.
    contributor = peewee.CharField(max_length=200)
    index = peewee.IntegerField()
    hash = peewee.CharField(max_length=128)
    previous_hash = peewee.CharField(max_length=128, default="")
    size = peewee.BigIntegerField()
    state = peewee.CharField(max_length=16, index=True)
    verifier_output = peewee.TextField(default="")
    contribution_s = peewee.FloatField(null=True)
    verification_s = peewee.FloatField(null=True)
    is_final = peewee.BooleanField(default=False)
    blob_key = peewee.CharField(max_length=300, default="")
    upload_time = TimestampField()
    verify_time = TimestampField(null=True)
    # When an unfinished verification is presumed dead and repaired.
    verify_due_time = TimestampField(null=True, index=True)
    receipt_payload = peewee.BlobField(null=True)
    receipt_signature = peewee.BlobField(null=True)
    receipt_key_id = peewee.CharField(max_length=32, default="")
    extra = JSONField(default=dict)


class CeremonyUpload(IdModel):
    """An unfinished upload: what was declared, and how much is durably on disk."""

    circuit = peewee.ForeignKeyField(Circuit, on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, on_delete="CASCADE")
    # "contribution", "r1cs" or "ptau".
    kind = peewee.CharField(max_length=16)
    size = peewee.BigIntegerField()
    hash = peewee.CharField(max_length=128)
    committed = peewee.BigIntegerField(default=0)
    blob_key = peewee.CharField(max_length=300)
    create_time = TimestampField()
    update_time = TimestampField()

    class Meta:
        indexes = ((("circuit", "user", "kind"), True),)


class CeremonyClock(IdModel):
    """When the ceremony deadlines last ran (wall clock): after a restart, the time the daemon
    was down is given back to the contributors whose turn it interrupted."""

    alive_time = TimestampField()


def add_eligibility(db: peewee.Database) -> None:
    """Migration 92: per-ceremony eligibility rules."""
    if "eligibility" not in {c.name for c in db.get_columns("ceremony")}:
        db.execute_sql("ALTER TABLE ceremony ADD COLUMN eligibility TEXT NOT NULL DEFAULT '{}'")


def add_named_verifiers(db: peewee.Database) -> None:
    """Migration 90: named verifiers, transport retries, the restart clock."""
    added = {
        "ceremony": (
            ("verifier_name", "VARCHAR(64) NOT NULL DEFAULT ''"),
            ("transport_retries", "INTEGER NOT NULL DEFAULT 2"),
        ),
        "participant": (("retries_used", "INTEGER NOT NULL DEFAULT 0"),),
    }
    for table, columns in added.items():
        present = {c.name for c in db.get_columns(table)}
        for name, kind in columns:
            # Present already where migration 30 ran with this model.
            if name not in present:
                db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    db.create_tables([CeremonyClock], safe=True)
