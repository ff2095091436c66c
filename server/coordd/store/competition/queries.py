"""Every competition read and write the rules make, besides the registration hot path
(registration.py). Each runs in the caller's transaction (or, for reads, on its own)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, NamedTuple

import peewee

from coordd.store.auth.models import User
from coordd.store.competition.models import (
    DRAFT,
    OFFERED,
    WAITLISTED,
    Competition,
    CompetitionEntry,
    CompetitionNotification,
    CompetitionResult,
    CompetitionTransition,
    Registration,
)
from coordd.store.db import Store, database_proxy
from coordd.store.paging import Page, PageRequest, keyset_page

# A unique key refused a row (e.g. the same user registering twice at once): the rules
# catch it without importing peewee.
IntegrityError = peewee.IntegrityError


class Registrant(NamedTuple):
    registration_id: str
    user_id: str


class WaitingRef(NamedTuple):
    registration_id: str
    waitlist_seq: int


class OfferRef(NamedTuple):
    registration_id: str
    competition_id: str


# -- competitions -----------------------------------------------------------------------


def find_competition(comp_id: str) -> Competition | None:
    return Competition.get_or_none(Competition.id == comp_id)


def lock_competition(store: Store, comp_id: str) -> Competition | None:
    """Reads the competition row for change. On PostgreSQL the row is locked until commit;
    on SQLite the write transaction already excludes every other writer."""
    query = Competition.select().where(Competition.id == comp_id)
    if store.is_postgres:
        query = query.for_update()
    return query.first()


def lock_competition_after_insert(store: Store, comp_id: str) -> Competition | None:
    """Like lock_competition, for a transaction that inserted registration rows first: on
    PostgreSQL those inserts hold FOR KEY SHARE on the competition row (their foreign key),
    which FOR UPDATE would wait for in another such transaction, and that one for ours (a
    deadlock). FOR NO KEY UPDATE, what the seat UPDATE takes too, does not conflict with it."""
    query = Competition.select().where(Competition.id == comp_id)
    if store.is_postgres:
        query = query.for_update("FOR NO KEY UPDATE")
    return query.first()


def insert_competition(comp: Competition) -> None:
    comp.save(force_insert=True)


def tags_text(tags: list[str]) -> str:
    """The `tags_text` column for these tags: ",tag1,tag2,", so that a tag filter is one
    LIKE on one column, the same on both backends."""
    return "," + "".join(f"{t}," for t in tags)


def save_competition(comp: Competition) -> None:
    comp.save()


def transitions_of(ids: list[str]) -> dict[str, list[CompetitionTransition]]:
    """Each competition's transitions, oldest first."""
    out: dict[str, list[CompetitionTransition]] = {i: [] for i in ids}
    if ids:
        for t in (
            CompetitionTransition.select()
            .where(CompetitionTransition.competition.in_(ids))
            .order_by(CompetitionTransition.id)
        ):
            out[t.competition_id].append(t)
    return out


def insert_transition(comp_id: str, from_state: str, to_state: str, reason: str, time: datetime) -> None:
    CompetitionTransition.create(
        competition=comp_id, from_state=from_state, to_state=to_state, reason=reason, time=time
    )


def competitions_page(
    page: PageRequest, user_id: str, is_admin: bool, state: str, tag: str, owner_id: str
) -> Page[Competition]:
    """Competitions by id. Unless `is_admin`, unpublished drafts of others are left out (the
    rules' visibility, as a condition)."""
    query = Competition.select()
    if not is_admin:
        query = query.where(
            (Competition.state != DRAFT)
            | Competition.publish_time.is_null(False)
            | (Competition.owner == user_id)
        )
    if state:
        query = query.where(Competition.state == state)
    if tag:
        query = query.where(Competition.tags_text.contains(f",{tag},"))
    if owner_id:
        query = query.where(Competition.owner == owner_id)
    return keyset_page(
        query, Competition.id, page, filters={"state": state, "tag": tag, "owner": owner_id, "u": user_id}
    )


def due_competitions(now: datetime, limit: int) -> list[str]:
    """Ids of competitions whose due_time has come, the longest due first."""
    return [
        c.id
        for c in Competition.select(Competition.id)
        .where(Competition.due_time <= now)
        .order_by(Competition.due_time)
        .limit(limit)
    ]


def reminders_due(now: datetime, limit: int) -> list[str]:
    """Ids of competitions whose reminder_time has come."""
    return [
        c.id for c in Competition.select(Competition.id).where(Competition.reminder_time <= now).limit(limit)
    ]


# -- registrations ----------------------------------------------------------------------


def registration_of(comp_id: str, user_id: str) -> Registration | None:
    return Registration.get_or_none((Registration.competition == comp_id) & (Registration.user == user_id))


def find_registration(reg_id: str) -> Registration | None:
    return Registration.get_or_none(Registration.id == reg_id)


def registration_in(comp_id: str, reg_id: str) -> Registration | None:
    return Registration.get_or_none((Registration.id == reg_id) & (Registration.competition == comp_id))


def save_registration(reg: Registration) -> None:
    reg.save()


def registrations_in_state(comp_id: str, state: str) -> list[Registration]:
    return list(
        Registration.select().where((Registration.competition == comp_id) & (Registration.state == state))
    )


def registrants_in(comp_id: str, states: Collection[str]) -> list[Registrant]:
    """(registration, user) of every registration in one of `states`."""
    state = Registration.state == next(iter(states)) if len(states) == 1 else Registration.state.in_(states)
    rows = Registration.select(Registration.id, Registration.user).where(
        (Registration.competition == comp_id) & state
    )
    return [Registrant(r.id, r.user_id) for r in rows]


def waitlist_position(reg: Registration) -> int:
    """How many waitlist entries of its competition are at or ahead of `reg` (the members
    of a group share one waitlist number: a group is one entry)."""
    return (
        Registration.select(peewee.fn.COUNT(Registration.waitlist_seq.distinct()))
        .where(
            (Registration.competition == reg.competition_id)
            & (Registration.state == WAITLISTED)
            & (Registration.waitlist_seq <= reg.waitlist_seq)
        )
        .scalar()
        or 0
    )


def waitlist_entry(comp_id: str, seq: int) -> list[Registration]:
    """The waitlisted registrations sharing waitlist number `seq` (a group, or one)."""
    return list(
        Registration.select()
        .where(
            (Registration.competition == comp_id)
            & (Registration.state == WAITLISTED)
            & (Registration.waitlist_seq == seq)
        )
        .order_by(Registration.id)
    )


def group_members(comp_id: str, group_id: str, state: str = "") -> list[Registration]:
    """The registrations of a group (only those in `state`, if given)."""
    query = Registration.select().where(
        (Registration.competition == comp_id) & (Registration.group_id == group_id)
    )
    if state:
        query = query.where(Registration.state == state)
    return list(query.order_by(Registration.id))


def registrations_of_users(comp_id: str, user_ids: list[str]) -> dict[str, Registration]:
    """Each of these users' registration for the competition, if any."""
    rows = Registration.select().where(
        (Registration.competition == comp_id) & Registration.user.in_(user_ids)
    )
    return {r.user_id: r for r in rows}


def existing_users(user_ids: list[str]) -> set[str]:
    """Which of these user ids exist."""
    return {u.id for u in User.select(User.id).where(User.id.in_(user_ids))}


def insert_registration_row(reg: Registration) -> None:
    reg.save(force_insert=True)


def delete_registration(reg: Registration) -> None:
    """Removes an inactive registration row (its notification records go with it)."""
    reg.delete_instance(recursive=False)


def waitlist_head(comp_id: str) -> Registration | None:
    """The waitlisted registration with the smallest waitlist number."""
    return (
        Registration.select()
        .where((Registration.competition == comp_id) & (Registration.state == WAITLISTED))
        .order_by(Registration.waitlist_seq)
        .first()
    )


def waitlist_order(comp_id: str) -> list[WaitingRef]:
    """The waitlisted registrations with their waitlist numbers, head first (the members
    of a group share one number)."""
    rows = (
        Registration.select(Registration.id, Registration.waitlist_seq)
        .where((Registration.competition == comp_id) & (Registration.state == WAITLISTED))
        .order_by(Registration.waitlist_seq, Registration.id)
    )
    return [WaitingRef(r.id, r.waitlist_seq) for r in rows]


def offers_due(now: datetime, limit: int) -> list[OfferRef]:
    """Offers whose hold time has passed."""
    rows = (
        Registration.select(Registration.id, Registration.competition)
        .where((Registration.offer_expire_time <= now) & (Registration.state == OFFERED))
        .limit(limit)
    )
    return [OfferRef(r.id, r.competition_id) for r in rows]


def fees_held_in(comp_id: str) -> list[Registration]:
    """Registrations of the competition that still hold an entry fee."""
    return list(
        Registration.select().where((Registration.competition == comp_id) & (Registration.fee_held > 0))
    )


def clear_fees(reg_ids: list[str], now: datetime) -> None:
    Registration.update(fee_held=0, update_time=now).where(Registration.id.in_(reg_ids)).execute()


def clear_fees_in(comp_id: str, now: datetime) -> None:
    Registration.update(fee_held=0, update_time=now).where(
        (Registration.competition == comp_id) & (Registration.fee_held > 0)
    ).execute()


def registrations_page(comp_id: str, page: PageRequest, state: str) -> Page[Registration]:
    query = Registration.select().where(Registration.competition == comp_id)
    if state:
        query = query.where(Registration.state == state)
    return keyset_page(query, Registration.id, page, filters={"c": comp_id, "state": state})


def user_registrations_page(user_id: str, page: PageRequest) -> Page[Registration]:
    query = Registration.select().where(Registration.user == user_id)
    return keyset_page(query, Registration.id, page, filters={"u": user_id})


def registrations_with_users(comp_id: str, after: str, limit: int) -> list[Registration]:
    """Registrations by id after `after`, each with its `user` loaded (one join)."""
    return list(
        Registration.select(Registration, User)
        .join(User)
        .where((Registration.competition == comp_id) & (Registration.id > after))
        .order_by(Registration.id)
        .limit(limit)
    )


# -- entries and results ----------------------------------------------------------------


def entry_of(reg_id: str) -> CompetitionEntry | None:
    return CompetitionEntry.get_or_none(CompetitionEntry.registration == reg_id)


def save_entry(entry: CompetitionEntry, new: bool) -> None:
    entry.save(force_insert=new)


def insert_results(rows: list[dict[str, Any]]) -> None:
    """Result rows: {"competition", "rank", "user", "score", "prize"}."""
    if rows:
        CompetitionResult.insert_many(rows).execute()


def leaderboard_page(comp_id: str, page: PageRequest) -> Page[CompetitionResult]:
    """Results by rank, each with its `user` loaded."""
    query = (
        CompetitionResult.select(CompetitionResult, User)
        .join(User)
        .where(CompetitionResult.competition == comp_id)
    )
    return keyset_page(query, CompetitionResult.rank, page, filters={"c": comp_id})


# -- notifications ----------------------------------------------------------------------


def already_notified(reg_ids: list[str], kind: str) -> set[str]:
    """Which of these registrations already have a notification of `kind`."""
    done: set[str] = set()
    for start in range(0, len(reg_ids), 500):
        done.update(
            r.registration_id
            for r in CompetitionNotification.select(CompetitionNotification.registration).where(
                CompetitionNotification.registration.in_(reg_ids[start : start + 500])
                & (CompetitionNotification.kind == kind)
            )
        )
    return done


def insert_notifications(rows: list[dict[str, Any]]) -> None:
    """Notification records in statements of at most 200 rows."""
    for start in range(0, len(rows), 200):
        CompetitionNotification.insert_many(rows[start : start + 200]).execute()


def insert_notification(
    reg_id: str,
    user_id: str,
    comp_id: str,
    kind: str,
    payload: dict[str, Any],
    queued: int,
    create_time: datetime,
) -> None:
    """One notification record, as a fixed statement (the registration hot path)."""
    db = database_proxy.obj
    db.execute_sql(
        f'INSERT INTO "{CompetitionNotification._meta.table_name}" (registration_id, user_id,'
        " competition_id, kind, payload, deliveries_queued, create_time)"
        f" VALUES ({', '.join([db.param] * 7)})",
        (
            reg_id,
            user_id,
            comp_id,
            kind,
            CompetitionNotification.payload.db_value(payload),
            queued,
            CompetitionNotification.create_time.db_value(create_time),
        ),
    )


def notifications_of(comp_id: str, kind: str = "") -> list[CompetitionNotification]:
    query = CompetitionNotification.select().where(CompetitionNotification.competition == comp_id)
    if kind:
        query = query.where(CompetitionNotification.kind == kind)
    return list(query.order_by(CompetitionNotification.id))
