"""The ledger's statements, run in the caller's transaction on whichever database the models
are bound to: account balance updates, the multi-row journal inserts (without the query
builder, whose per-value cost dominates the large batches `ledger.post_many` writes: a batch
of job payments or holds), the journal reads, and the consistency checks' aggregates."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import peewee

from coordd.store.auth.models import User
from coordd.store.db import database_proxy
from coordd.store.ledger.models import LedgerAccount, LedgerEntry, LedgerPosting
from coordd.store.models import TimestampField

_to_us = TimestampField().db_value
# SQLite allows 32,766 bound values per statement; 4 per entry row stays far below.
_CHUNK = 2000


def _is_postgres() -> bool:
    return isinstance(database_proxy.obj, peewee.PostgresqlDatabase)


def insert_entries(now: datetime, rows: list[tuple[str, str, str]]) -> list[int]:
    """(reason, reference, memo) rows -> their new ids, in row order."""
    now_us = _to_us(now)
    ids: list[int] = []
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        values = [(reason, reference, memo, now_us) for reason, reference, memo in chunk]
        sql = "INSERT INTO ledger_entry (reason, reference, memo, create_time) VALUES "
        if _is_postgres():
            from psycopg2.extras import execute_values

            cursor = database_proxy.cursor()
            fetched = execute_values(
                cursor, sql + "%s RETURNING id", values, page_size=len(values), fetch=True
            )
        else:
            marks = ", ".join(["(?, ?, ?, ?)"] * len(values))
            params = [v for row in values for v in row]
            fetched = database_proxy.execute_sql(sql + marks + " RETURNING id", params).fetchall()
        # Ids come from one sequence within one statement: ascending in insertion order.
        ids.extend(sorted(int(r[0]) for r in fetched))
    return ids


def insert_postings(rows: list[tuple[int, str, int, int]]) -> None:
    """(entry id, account id, amount, balance after) rows."""
    sql = "INSERT INTO ledger_posting (entry_id, account_id, amount, balance_after) VALUES "
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        if _is_postgres():
            from psycopg2.extras import execute_values

            execute_values(database_proxy.cursor(), sql + "%s", chunk, page_size=len(chunk))
        else:
            database_proxy.cursor().executemany(sql + "(?, ?, ?, ?)", chunk)


# -- accounts -------------------------------------------------------------------------------


def ensure_account(account_id: str, owner: str, kind: str, allow_negative: bool, now: datetime) -> None:
    """Creates the account with a zero balance unless it exists."""
    LedgerAccount.insert(
        id=account_id,
        owner=owner,
        kind=kind,
        balance=0,
        allow_negative=allow_negative,
        create_time=now,
        update_time=now,
    ).on_conflict_ignore().execute()


def apply_delta(account_id: str, delta: int, now: datetime) -> int | None:
    """Adds `delta` to the account's balance unless that takes a non-negative account below
    zero (one conditional UPDATE); the new balance, or None when nothing was updated (no such
    account, or not enough funds)."""
    rows = list(
        LedgerAccount.update(balance=LedgerAccount.balance + delta, update_time=now)
        .where(
            (LedgerAccount.id == account_id)
            & ((LedgerAccount.balance + delta >= 0) | (LedgerAccount.allow_negative == True))  # noqa: E712
        )
        .returning(LedgerAccount.balance)
        .execute()
    )
    return int(rows[0].balance) if rows else None


def apply_delta_opening(
    account_id: str, delta: int, now: datetime, owner: str, kind: str, allow_negative: bool
) -> int | None:
    """apply_delta, creating the account first when it does not exist yet; None only when a
    non-negative account lacks the funds.

    Race-free for concurrent first movements on one account (the platform fee account on a
    fresh database): the INSERT ... ON CONFLICT DO NOTHING waits for a concurrent creator to
    commit (or roll back), and the second UPDATE, a new statement, sees the committed row and
    locks it. (Checking existence with a SELECT instead could see a row the first UPDATE did
    not, and call the new account short of funds.)"""
    balance = apply_delta(account_id, delta, now)
    if balance is not None:
        return balance
    ensure_account(account_id, owner, kind, allow_negative, now)
    return apply_delta(account_id, delta, now)


def balances_by_kind(account_ids: list[str]) -> dict[str, int]:
    """{kind: balance} of those of the accounts that exist."""
    return {
        a.kind: a.balance
        for a in LedgerAccount.select(LedgerAccount.kind, LedgerAccount.balance).where(
            LedgerAccount.id.in_(account_ids)
        )
    }


def user_exists(user_id: str) -> bool:
    """Whether the user a ledger would belong to exists."""
    return User.get_or_none(User.id == user_id) is not None


# -- the journal ------------------------------------------------------------------------------


def entry_ids_page(account_ids: list[str], before: int | None, limit: int) -> list[int]:
    """Ids of the entries with a posting on any of the accounts, newest first, below `before`."""
    query = (
        LedgerEntry.select(LedgerEntry.id)
        .join(LedgerPosting)
        .where(LedgerPosting.account.in_(account_ids))
        .distinct()
    )
    if before is not None:
        query = query.where(LedgerEntry.id < before)
    return [r.id for r in query.order_by(LedgerEntry.id.desc()).limit(limit)]


def entries_by_id(ids: list[int]) -> dict[int, LedgerEntry]:
    return {e.id: e for e in LedgerEntry.select().where(LedgerEntry.id.in_(ids))} if ids else {}


def postings_on(entry_ids: list[int], account_ids: list[str]) -> list[LedgerPosting]:
    """The postings of those entries on those accounts, in posting order."""
    if not entry_ids:
        return []
    return list(
        LedgerPosting.select()
        .where(LedgerPosting.entry.in_(entry_ids) & LedgerPosting.account.in_(account_ids))
        .order_by(LedgerPosting.id)
    )


def entry_postings(entry_id: int, account_id: str) -> list[LedgerPosting]:
    """One entry's postings on one account."""
    return list(
        LedgerPosting.select().where(
            (LedgerPosting.entry == entry_id) & (LedgerPosting.account == account_id)
        )
    )


# -- consistency ------------------------------------------------------------------------------


class EntryTotal(NamedTuple):
    entry_id: int
    total: int


def postings_total() -> int:
    """The sum of every posting (zero in a consistent ledger)."""
    return int(LedgerPosting.select(peewee.fn.COALESCE(peewee.fn.SUM(LedgerPosting.amount), 0)).scalar())


def unbalanced_entries() -> list[EntryTotal]:
    """Entries whose postings do not sum to zero."""
    query = (
        LedgerPosting.select(LedgerPosting.entry, peewee.fn.SUM(LedgerPosting.amount).alias("total"))
        .group_by(LedgerPosting.entry)
        .having(peewee.fn.SUM(LedgerPosting.amount) != 0)
    )
    return [EntryTotal(r.entry_id, int(r.total)) for r in query]


def entries_without_postings() -> list[int]:
    query = LedgerEntry.select(LedgerEntry.id).where(
        ~peewee.fn.EXISTS(LedgerPosting.select(LedgerPosting.id).where(LedgerPosting.entry == LedgerEntry.id))
    )
    return [r.id for r in query]


def posting_sums_by_account() -> dict[str, int]:
    """{account id: sum of its postings}, for every account that has postings."""
    return {
        r.account_id: int(r.total)
        for r in LedgerPosting.select(
            LedgerPosting.account, peewee.fn.SUM(LedgerPosting.amount).alias("total")
        ).group_by(LedgerPosting.account)
    }


def all_accounts() -> list[LedgerAccount]:
    return list(LedgerAccount.select())
