"""Users, their API keys, and the audit trail of logins, denials and admin actions."""

from __future__ import annotations

import peewee

from coordd.store.fields import JSONField, TimestampField
from coordd.store.models import BaseModel, IdModel


class User(IdModel):
    email = peewee.CharField(max_length=254)
    # Lower-cased email: uniqueness is case-insensitive while the stored address keeps its case.
    email_key = peewee.CharField(max_length=254, unique=True)
    display_name = peewee.CharField(max_length=100)
    password_hash = peewee.CharField(max_length=255)
    roles = peewee.CharField(max_length=255)  # comma-separated role names
    create_time = TimestampField()
    disabled = peewee.BooleanField(default=False)
    # Revocation epoch: tokens issued under an older epoch are refused (migration 60).
    # DEFAULT in the schema too: code from before migration 60 still inserts users.
    token_epoch = peewee.IntegerField(default=0, constraints=[peewee.SQL("DEFAULT 0")])
    # Last disable/enable, role change or revocation; every replica reloads users changed
    # since its last look through this index (migration 60).
    auth_change_time = TimestampField(null=True, index=True)


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
    # Scoped keys: comma-separated service and method names; "" is unscoped (migration 80).
    scopes = peewee.TextField(default="", constraints=[peewee.SQL("DEFAULT ''")])
    # Set on a node key: the node it authenticates (a plain id, no foreign key: the node
    # tables live in another domain). Set on the current and the rotated-out keys (migration 80).
    node_id = peewee.CharField(max_length=26, null=True, index=True)


class AuditEvent(BaseModel):
    """Who did what, when, to what, from where. Never a secret: no password, hash, token or key."""

    id = peewee.BigAutoField()
    create_time = TimestampField(index=True)
    # e.g. auth.login, rpc.denied, auth.user.disable, admin.call
    action = peewee.CharField(max_length=100, index=True)
    # users/{id}, or "" when the caller is not known (a failed login for an unknown email)
    actor = peewee.CharField(max_length=100, index=True)
    # How the actor authenticated: password, token, api_key (or "" when anonymous)
    credential = peewee.CharField(max_length=20)
    target = peewee.CharField(max_length=200, index=True)
    peer = peewee.CharField(max_length=200)
    outcome = peewee.CharField(max_length=20)  # ok | failed | denied
    detail = JSONField()

    class Meta:
        table_name = "audit_event"


def add_account_control(db: peewee.Database) -> None:
    """Migration 60: revocation epoch and change time on users, and the audit table."""
    columns = {c.name for c in db.get_columns("user")}
    # Present already on installs whose migration 1 ran with this model.
    if "token_epoch" not in columns:
        db.execute_sql('ALTER TABLE "user" ADD COLUMN token_epoch INTEGER NOT NULL DEFAULT 0')
    if "auth_change_time" not in columns:
        db.execute_sql('ALTER TABLE "user" ADD COLUMN auth_change_time BIGINT')
    db.execute_sql('CREATE INDEX IF NOT EXISTS user_auth_change_time ON "user" (auth_change_time)')
    db.create_tables([AuditEvent], safe=True)


def add_key_scopes(db: peewee.Database) -> None:
    """Migration 80: API key scopes, and the node a node key belongs to."""
    columns = {c.name for c in db.get_columns("api_key")}
    # Present already on installs whose migration 1 ran with this model.
    if "scopes" not in columns:
        db.execute_sql("ALTER TABLE api_key ADD COLUMN scopes TEXT NOT NULL DEFAULT ''")
    if "node_id" not in columns:
        db.execute_sql("ALTER TABLE api_key ADD COLUMN node_id VARCHAR(26)")
    db.execute_sql("CREATE INDEX IF NOT EXISTS api_key_node_id ON api_key (node_id)")
