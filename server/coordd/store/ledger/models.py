"""Ledger tables: accounts with a cached balance, and append-only journal entries.

Every movement is one `LedgerEntry` with two or more `LedgerPosting` rows whose amounts sum
to zero (double entry). `LedgerAccount.balance` is a cache of the sum of the account's
postings, kept in the same transaction, so reads and the non-negative check need no SUM;
`check_consistency()` proves the cache right. Amounts are integers in the smallest unit.
"""

from __future__ import annotations

import peewee

from coordd.store.models import BaseModel, TimestampField


class LedgerAccount(BaseModel):
    # `users/{user}/available`, `users/{user}/held`, `platform/fees`, `platform/external`.
    id = peewee.CharField(primary_key=True, max_length=100)
    # The user the account belongs to; empty for platform accounts.
    owner = peewee.CharField(max_length=64, index=True)
    kind = peewee.CharField(max_length=16)  # available | held | fees | external
    balance = peewee.BigIntegerField(default=0)
    # Only the external (outside-world) account may go negative: it is where deposits come from.
    allow_negative = peewee.BooleanField(default=False)
    create_time = TimestampField()
    update_time = TimestampField()

    class Meta:
        constraints = [peewee.SQL("CHECK (balance >= 0 OR allow_negative)")]


class LedgerEntry(BaseModel):
    id = peewee.BigAutoField()
    # Why money moved: deposit, job.hold, job.payment, job.refund, ...
    reason = peewee.CharField(max_length=64)
    # What it moved for: `jobs/{id}`, `competitions/{id}`, or a deposit reference.
    reference = peewee.CharField(max_length=200, index=True)
    memo = peewee.CharField(max_length=500, default="")
    create_time = TimestampField()


class LedgerPosting(BaseModel):
    id = peewee.BigAutoField()
    entry = peewee.ForeignKeyField(LedgerEntry, backref="postings", on_delete="RESTRICT")
    account = peewee.ForeignKeyField(LedgerAccount, backref="postings", on_delete="RESTRICT")
    # Signed: positive adds to the account, negative takes from it.
    amount = peewee.BigIntegerField()
    balance_after = peewee.BigIntegerField()

    class Meta:
        indexes = ((("account", "id"), False),)
