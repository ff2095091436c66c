"""Users and their API keys."""

from __future__ import annotations

import peewee

from coordd.store.fields import TimestampField
from coordd.store.models import IdModel


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
