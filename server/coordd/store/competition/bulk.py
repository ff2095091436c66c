"""A batch of registrations for one competition as a handful of statements, whatever its size:
one seat claim for the whole batch, one multi-row INSERT each for the registrations, their
confirmation records and their events (domain/competition/bulk.py decides what they hold).

`claim_seats` keeps the competition from ever confirming more than its capacity: ONE conditional
UPDATE of the competition row takes `min(n, free seats)` seats (none while anybody waits: a
group at the head of the waitlist may be waiting for more seats than are free) and hands the
rest consecutive waitlist numbers. Its row lock (PostgreSQL; SQLite: the single writer) is
held until the commit, so batches of one competition serialize, registrations within a batch
do not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from coordd.store.competition.models import (
    DRAFT,
    OPEN,
    Competition,
    CompetitionNotification,
    Registration,
)
from coordd.store.db import database_proxy, defer
from coordd.store.fields import JSONField
from coordd.store.notify.models import Channel

_to_db = Competition.update_time.db_value
_from_db = Competition.update_time.python_value
_json = JSONField().db_value
_sql: dict[str, dict[str, str]] = {}

# Rows per multi-row INSERT (SQLite allows 32,766 parameters; 9 columns x 500 stays below).
CHUNK = 500


class BatchSeats(NamedTuple):
    """What one `claim_seats` did: `seats` of the `n` took a seat, the rest got the waitlist
    numbers `first_seq ..` in order; `entries_before` waitlist entries (a group counts once)
    were ahead of them. The competition fields the confirmations need come along."""

    seats: int
    first_seq: int
    entries_before: int
    competition: Competition


def _statements() -> tuple[Any, dict[str, str]]:
    db = database_proxy.obj
    p = db.param
    found = _sql.get(p)
    if found is None:
        least, greatest = ("LEAST", "GREATEST") if p == "%s" else ("MIN", "MAX")
        free = f"{greatest}(capacity - confirmed - offered, 0)"
        taken = f"(CASE WHEN waitlisted = 0 THEN {least}({p}, {free}) ELSE 0 END)"
        comp = Competition._meta.table_name
        channel, owner, deleted = (
            Channel._meta.table_name,
            Channel.owner.column_name,
            Channel.delete_time.column_name,
        )
        found = _sql[p] = {
            "claim": (
                f'UPDATE "{comp}" SET confirmed = confirmed + {taken},'
                f" waitlisted = waitlisted + {p} - {taken},"
                f" waitlist_seq = waitlist_seq + {p} - {taken}, update_time = {p}"
                f" WHERE id = {p} AND entry_fee = 0 AND team_max = 0"
                f" AND state IN ('{DRAFT}', '{OPEN}') AND publish_time IS NOT NULL"
                f" AND open_time <= {p} AND close_time > {p}"
                " RETURNING waitlisted, waitlist_seq, waitlist_extra, title, state, start_time, publish_time,"
                " reminder_time, reminder_lead_s, owner_id"
            ),
            # A registration's state, or NULL: the user has a live channel.
            "states": (
                f'SELECT user_id, state FROM "{Registration._meta.table_name}" WHERE competition_id = {p}'
                " AND user_id IN ({})"
                f' UNION ALL SELECT DISTINCT {owner}, NULL FROM "{channel}" WHERE {deleted} IS NULL'
                f" AND {owner} IN ({{}})"
            ),
            "insert": (
                f'INSERT INTO "{Registration._meta.table_name}" (id, competition_id, user_id, state,'
                " waitlist_seq, fee_held, create_time, update_time, confirm_time) VALUES {}"
            ),
            "notes": (
                f'INSERT INTO "{CompetitionNotification._meta.table_name}" (registration_id, user_id,'
                " competition_id, kind, payload, deliveries_queued, create_time) VALUES {}"
            ),
        }
    return db, found


def _values(db: Any, width: int, count: int) -> str:
    row = "(" + ", ".join([db.param] * width) + ")"
    return ", ".join([row] * count)


def states_and_channels(comp_id: str, user_ids: list[str]) -> tuple[dict[str, str], set[str]]:
    """(user id -> state of the registrations these users have for the competition already,
    the users among them with a live notification channel), in one statement per chunk: a
    batch of newcomers needs both before it claims their seats."""
    db, sql = _statements()
    states: dict[str, str] = {}
    with_channels: set[str] = set()
    for start in range(0, len(user_ids), CHUNK):
        chunk = user_ids[start : start + CHUNK]
        marks = ", ".join([db.param] * len(chunk))
        for user_id, state in db.execute_sql(sql["states"].format(marks, marks), (comp_id, *chunk, *chunk)):
            if state is None:
                with_channels.add(user_id)
            else:
                states[user_id] = state
    return states, with_channels


def claim_seats(comp_id: str, n: int, now: datetime) -> BatchSeats | None:
    """Seats for `n` newcomers to a free, team-less competition whose registration window
    contains `now`, in one UPDATE; None: no such competition (paid, teams, closed, missing:
    the caller finds out which, and registers them one by one)."""
    db, sql = _statements()
    stamp = _to_db(now)
    got = db.execute_sql(sql["claim"], (n, n, n, n, n, stamp, comp_id, stamp, stamp)).fetchone()
    if got is None:
        return None
    waitlisted, seq, extra, title, state, start, publish, reminder, lead_s, owner = got
    # While nobody waited, min(n, free) took seats and the rest waits now (waitlisted <= n);
    # otherwise nobody took one (waitlisted > n: the earlier ones plus all n).
    seats = max(n - waitlisted, 0)
    joined = n - seats
    comp = Competition(
        id=comp_id,
        title=title,
        state=state,
        start_time=_from_db(start),
        publish_time=_from_db(publish),
        reminder_time=_from_db(reminder),
        reminder_lead_s=lead_s,
        entry_fee=0,
        owner=owner,
    )
    return BatchSeats(seats, seq - joined + 1, waitlisted - joined - extra, comp)


def insert_registrations(regs: list[Registration]) -> None:
    """The new registrations (none of these users has one for the competition)."""
    db, sql = _statements()
    for start in range(0, len(regs), CHUNK):
        chunk = regs[start : start + CHUNK]
        params: list[Any] = []
        for r in chunk:
            params += (
                r.id,
                r.competition_id,
                r.user_id,
                r.state,
                r.waitlist_seq,
                r.fee_held,
                _to_db(r.create_time),
                _to_db(r.update_time),
                _to_db(r.confirm_time),
            )
        # Sent with the batch's next statement (its events): a duplicate raises there, inside
        # run_batch's handling of the whole newcomers' insert.
        defer(sql["insert"].format(_values(db, 9, len(chunk))), params)


def insert_notifications(rows: list[tuple[str, str, str, str, dict[str, Any], int]], now: datetime) -> None:
    """Notification records: (registration id, user id, competition id, kind, payload, queued)."""
    db, sql = _statements()
    stamp = _to_db(now)
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        params: list[Any] = []
        for reg_id, user_id, comp_id, kind, payload, queued in chunk:
            params += (reg_id, user_id, comp_id, kind, _json(payload), queued, stamp)
        defer(sql["notes"].format(_values(db, 7, len(chunk))), params)
