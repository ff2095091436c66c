"""The registration hot path as fixed SQL statements, built once per placeholder style:
building them with the query builder on every call cost more than running them.

The rules (domain/competition/registration.py) decide the order; these run inside the
caller's transaction. `claim_seat` is the statement that keeps a competition from ever
confirming more than its capacity: one conditional UPDATE on the competition row
(`confirmed + offered < capacity`, and now inside the registration window).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from coordd.store.competition.models import (
    CONFIRMATION,
    DRAFT,
    OPEN,
    Competition,
    CompetitionNotification,
    Registration,
)
from coordd.store.db import database_proxy

_to_db = Competition.update_time.db_value
_from_db = Competition.update_time.python_value

# What the seat (or waitlist) UPDATE hands back, in this order.
_HOT_COLUMNS = (
    "confirmed",
    "waitlisted",
    "waitlist_seq",
    "entry_fee",
    "title",
    "state",
    "start_time",
    "publish_time",
    "reminder_time",
    "reminder_lead_s",
    "waitlist_extra",
)
_hot_sql: dict[str, dict[str, str]] = {}


class SeatRow(NamedTuple):
    """The competition row as the seat (or waitlist) UPDATE left it. Times stay integer
    microseconds except the two the rules read (`publish_time`, `reminder_time`)."""

    confirmed: int
    waitlisted: int
    waitlist_seq: int
    entry_fee: int
    title: str
    state: str
    start_time: int
    publish_time: datetime | None
    reminder_time: datetime | None
    reminder_lead_s: int
    # Waitlisted people beyond the first of each group: `waitlisted - waitlist_extra` entries.
    waitlist_extra: int

    @property
    def waitlist_entries(self) -> int:
        """Entries on the waitlist (a group counts once), the newcomer included."""
        return self.waitlisted - self.waitlist_extra


class Outlook(NamedTuple):
    """An unlocked read of a competition before registering: whether every seat looks
    taken, and the competition's fields a confirmation notice needs (id, title, state,
    start_time) in an unsaved model."""

    full: bool
    competition: Competition
    # The competition has teams: its participants register through them, not one by one.
    teams: bool = False


def _statements() -> tuple[Any, dict[str, str]]:
    db = database_proxy.obj
    p = db.param
    found = _hot_sql.get(p)
    if found is None:
        comp, reg = Competition._meta.table_name, Registration._meta.table_name
        window = (
            f"state IN ('{DRAFT}', '{OPEN}') AND publish_time IS NOT NULL"
            f" AND open_time <= {p} AND close_time > {p}"
        )
        returning = ", ".join(_HOT_COLUMNS)
        columns = (
            "id, competition_id, user_id, state, waitlist_seq, fee_held, create_time, update_time,"
            " confirm_time"
        )
        found = _hot_sql[p] = {
            "existing": f'SELECT id FROM "{reg}" WHERE competition_id = {p} AND user_id = {p}',
            "seat": (
                f'UPDATE "{comp}" SET confirmed = confirmed + 1, update_time = {p}'
                f" WHERE id = {p} AND confirmed + offered < capacity AND waitlisted = 0 AND {window}"
                f" RETURNING {returning}"
            ),
            "waitlist": (
                f'UPDATE "{comp}" SET waitlisted = waitlisted + 1, waitlist_seq = waitlist_seq + 1,'
                f" update_time = {p} WHERE id = {p} AND (confirmed + offered >= capacity OR waitlisted > 0)"
                f" AND {window}"
                f" RETURNING {returning}"
            ),
            "full": (
                "SELECT confirmed + offered >= capacity OR waitlisted > 0, title, state, start_time, team_max"
                f' FROM "{comp}" WHERE id = {p}'
            ),
            "unnote": (
                f'DELETE FROM "{CompetitionNotification._meta.table_name}" WHERE registration_id = {p}'
                f" AND kind = '{CONFIRMATION}'"
            ),
            "insert": f'INSERT INTO "{reg}" ({columns}) VALUES ({", ".join([p] * 9)})',
            "to_waitlist": (
                f'UPDATE "{reg}" SET state = {p}, waitlist_seq = {p}, confirm_time = NULL WHERE id = {p}'
            ),
            "to_seat": f'UPDATE "{reg}" SET state = {p}, confirm_time = {p} WHERE id = {p}',
            "fee": f'UPDATE "{reg}" SET fee_held = {p} WHERE id = {p}',
        }
    return db, found


def existing_registration(comp_id: str, user_id: str) -> Registration | None:
    """The user's registration for this competition, in any state."""
    db, sql = _statements()
    row = db.execute_sql(sql["existing"], (comp_id, user_id)).fetchone()
    return Registration.get_by_id(row[0]) if row else None


def seat_outlook(comp_id: str) -> Outlook | None:
    db, sql = _statements()
    row = db.execute_sql(sql["full"], (comp_id,)).fetchone()
    if row is None:
        return None
    full, title, state, start_time, team_max = row
    comp = Competition(id=comp_id, title=title, state=state, start_time=_from_db(start_time))
    return Outlook(bool(full), comp, team_max > 0)


def insert_registration(reg: Registration) -> None:
    """A new registration row, before any lock is taken: a second registration of the same
    user fails here (the unique (competition, user) key), early."""
    db, sql = _statements()
    db.execute_sql(
        sql["insert"],
        (
            reg.id,
            reg.competition_id,
            reg.user_id,
            reg.state,
            reg.waitlist_seq,
            reg.fee_held,
            _to_db(reg.create_time),
            _to_db(reg.update_time),
            _to_db(reg.confirm_time),
        ),
    )


def _seat_update(kind: str, comp_id: str, now: datetime) -> SeatRow | None:
    db, sql = _statements()
    stamp = _to_db(now)
    values = db.execute_sql(sql[kind], (stamp, comp_id, stamp, stamp)).fetchall()
    if not values:
        return None
    got = values[0]
    return SeatRow(*got[:7], _from_db(got[7]), _from_db(got[8]), got[9], got[10])


def claim_seat(comp_id: str, now: datetime) -> SeatRow | None:
    """Takes one seat: `confirmed + 1` only while `confirmed + offered < capacity`, nobody
    waits (a group at the head of the waitlist may be waiting for more seats than are free:
    a newcomer must not pass it), and `now` is inside the registration window (published,
    DRAFT or OPEN, open_time <= now < close_time). The row lock it takes on PostgreSQL
    (SQLite: the single writer) serializes seat allocation. None: no seat (full, or outside the window)."""
    return _seat_update("seat", comp_id, now)


def join_waitlist(comp_id: str, now: datetime) -> SeatRow | None:
    """Hands out the next waitlist number, only while every seat is taken or someone waits
    already, and `now` is inside the registration window. None: a seat is free (or outside the window)."""
    return _seat_update("waitlist", comp_id, now)


def write_confirmed(reg: Registration) -> None:
    """Stores `reg.state` and `reg.confirm_time` (the guess was the waitlist, it got a seat)."""
    db, sql = _statements()
    db.execute_sql(sql["to_seat"], (reg.state, _to_db(reg.confirm_time), reg.id))


def write_waitlisted(reg: Registration) -> None:
    """Stores `reg.state` and `reg.waitlist_seq`, clearing confirm_time (the guess was a seat)."""
    db, sql = _statements()
    db.execute_sql(sql["to_waitlist"], (reg.state, reg.waitlist_seq, reg.id))


def write_fee_held(reg: Registration) -> None:
    db, sql = _statements()
    db.execute_sql(sql["fee"], (reg.fee_held, reg.id))


def forget_confirmation(reg_id: str) -> None:
    """Deletes the confirmation record written for a seat that went to the waitlist instead."""
    db, sql = _statements()
    db.execute_sql(sql["unnote"], (reg_id,))
