"""Tables of the notification outbox: channels and deliveries."""

from __future__ import annotations

import peewee

from coordd.store.auth.models import User
from coordd.store.models import IdModel, JSONField, TimestampField

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

# Channel kinds: a signed generic webhook, a Slack-compatible incoming webhook, e-mail.
WEBHOOK = "webhook"
SLACK = "slack"
SMTP = "smtp"
KINDS = (WEBHOOK, SLACK, SMTP)


class Channel(IdModel):
    owner = peewee.ForeignKeyField(User, backref="notify_channels", on_delete="CASCADE")
    display_name = peewee.CharField(max_length=100)
    url = peewee.CharField(max_length=2000)
    # The HMAC key has to be kept to sign; it is never returned after creation, and stored
    # sealed (crypto.sealing, bound to the channel id) since migration 22.
    secret = peewee.CharField(max_length=512)
    event_types = JSONField(default=list)
    create_time = TimestampField()
    delete_time = TimestampField(null=True)
    # Since migration 100: the kind of target (`url` is mailto:/smtp:// for e-mail).
    kind = peewee.CharField(max_length=16, default=WEBHOOK)
    # The circuit breaker: consecutive failed attempts, how often it opened in a row, and
    # until when no delivery is attempted (NULL: closed).
    consecutive_failures = peewee.IntegerField(default=0)
    circuit_trips = peewee.IntegerField(default=0)
    circuit_open_until = TimestampField(null=True)

    class Meta:
        table_name = "notify_channels"
        indexes = ((("owner", "id"), False),)


class Delivery(IdModel):
    channel = peewee.ForeignKeyField(Channel, backref="deliveries", on_delete="CASCADE")
    event_type = peewee.CharField(max_length=100)
    dedup_key = peewee.CharField(max_length=200)
    body = peewee.TextField()
    state = peewee.CharField(max_length=16, default=PENDING)
    attempts = peewee.IntegerField(default=0)
    # When the next attempt is due; NULL once delivered or given up.
    next_attempt_time = TimestampField(null=True, index=True)
    last_status_code = peewee.IntegerField(default=0)
    last_error = peewee.CharField(max_length=500, default="")
    create_time = TimestampField()
    delivered_time = TimestampField(null=True)

    class Meta:
        table_name = "notify_deliveries"
        # Dedup: one delivery per channel and key, however often the change is replayed.
        indexes = ((("channel", "dedup_key"), True),)


def widen_secret(db: peewee.Database) -> None:
    """Migration 22: room for sealed secrets (SQLite does not enforce VARCHAR lengths)."""
    if isinstance(db, peewee.PostgresqlDatabase):
        db.execute_sql("ALTER TABLE notify_channels ALTER COLUMN secret TYPE VARCHAR(512)")


def add_isolation(db: peewee.Database) -> None:
    """Migration 100: channel kinds and the circuit breaker's columns."""
    columns = {c.name for c in db.get_columns("notify_channels")}
    added = {
        "kind": "VARCHAR(16) NOT NULL DEFAULT 'webhook'",
        "consecutive_failures": "INTEGER NOT NULL DEFAULT 0",
        "circuit_trips": "INTEGER NOT NULL DEFAULT 0",
        "circuit_open_until": "BIGINT",
    }
    for name, ddl in added.items():
        if name not in columns:
            db.execute_sql(f"ALTER TABLE notify_channels ADD COLUMN {name} {ddl}")
    db.execute_sql(
        "CREATE INDEX IF NOT EXISTS notify_deliveries_event_time"
        " ON notify_deliveries (event_type, create_time)"
    )


def index_dedup_key(db: peewee.Database) -> None:
    """Migration 103: which channels heard of an incident (its recovery goes to all of them)."""
    db.execute_sql("CREATE INDEX IF NOT EXISTS notify_deliveries_dedup_key ON notify_deliveries (dedup_key)")
