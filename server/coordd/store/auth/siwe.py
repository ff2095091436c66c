"""Sign-In with Ethereum nonces: issued by the daemon, each usable once before it expires."""

from __future__ import annotations

from datetime import datetime

import peewee

from coordd.store.fields import TimestampField
from coordd.store.models import BaseModel


class SiweNonce(BaseModel):
    nonce = peewee.CharField(max_length=64, primary_key=True)
    expire_time = TimestampField(index=True)


def insert_nonce(nonce: str, expire_time: datetime) -> None:
    SiweNonce.create(nonce=nonce, expire_time=expire_time)


def take_nonce(nonce: str, now: datetime) -> bool:
    """Consumes a nonce that is still valid; False when unknown, used or expired."""
    taken = SiweNonce.delete().where((SiweNonce.nonce == nonce) & (SiweNonce.expire_time > now)).execute()
    return bool(taken)


def drop_expired_nonces(now: datetime) -> int:
    return SiweNonce.delete().where(SiweNonce.expire_time <= now).execute()


def count_nonces(limit: int) -> int:
    """How many nonces are outstanding, counted up to `limit` (a bounded index scan)."""
    return SiweNonce.select(SiweNonce.nonce).limit(limit).count()


def first_expiry() -> datetime | None:
    """When the oldest outstanding nonce expires."""
    row = SiweNonce.select(SiweNonce.expire_time).order_by(SiweNonce.expire_time).first()
    return row.expire_time if row is not None else None


def create_tables(db: peewee.Database) -> None:
    """Migration 91."""
    db.create_tables([SiweNonce], safe=True)
