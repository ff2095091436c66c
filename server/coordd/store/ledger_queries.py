"""Multi-row ledger inserts without the query builder, whose per-value cost dominates the
large batches `ledger.post_many` writes (a batch of job payments or holds). They run in the
caller's transaction, on whichever database the models are bound to."""

from __future__ import annotations

from datetime import datetime

import peewee

from coordd.store.db import database_proxy
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
