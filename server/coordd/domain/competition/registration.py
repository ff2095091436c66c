"""Registration without overselling, exactly once per user, and its cancellation.

Callers registering for one competition at the same time share a transaction (`register_call`).
Newcomers to a free competition are seated as a batch (bulk.py: one conditional UPDATE of the
competition row takes `min(n, free)` seats, the rest join the waitlist in order). Anyone else
goes alone (`register_in`): a seat is taken by one conditional UPDATE on the competition row
(store: `claim_seat`, `confirmed + 1 WHERE confirmed + offered < capacity AND now in the
window`) that also inserts the registration (unique per competition and user), holds the entry
fee in the ledger and records the confirmation; when every seat is taken the registrant joins
the waitlist instead (`join_waitlist`). Nothing slow happens while that transaction is open:
webhooks are queued in the shared outbox and delivered later. A competition with teams takes
no individual registration: its participants register through their team (TEAM_COMPETITION).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from coordd.core.errors import FailedPrecondition
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain import idempotency as idem
from coordd.domain import ledger
from coordd.domain.competition.bulk import Ask, Outcome, Registered, run_batch
from coordd.domain.competition.common import (
    emit_registration,
    not_found,
    own_registration,
    owned,
    payer_of,
    precondition,
    registration_name,
    visible,
)
from coordd.domain.competition.notifications import notify_many, record_notification, users_with_channels
from coordd.domain.competition.states import (
    ACTIVE,
    CONFIRMATION,
    CONFIRMED,
    DRAFT,
    OFFERED,
    OPEN,
    REG_CANCELLED,
    SEATING,
    TERMINAL,
    WAITLISTED,
)
from coordd.domain.competition.views import RegistrationView
from coordd.domain.competition.waitlist import late_reminder, position, promote
from coordd.runtime import Runtime
from coordd.store.competition import queries
from coordd.store.competition import registration as seats
from coordd.store.competition.models import Competition, Registration
from coordd.store.db import Tx
from coordd.store.group_commit import GroupCommit

# Registrations of one competition per PostgreSQL transaction, at most.
MAX_BATCH = 64


def _batch(tx: Tx, comp_id: str, asks: list[Ask]) -> list[Outcome]:
    return run_batch(tx, comp_id, asks, register_in)


def _conflicted(asks: list[Ask], exc: Exception) -> None:
    """The batch's transaction met a conflict, most often at its COMMIT, which carries the
    deferred INSERTs (PostgreSQL): a key used before (idempotency.looks_first), or a user
    registered meanwhile by another process. The run again looks for every key first, and after
    a registration's conflict registers everybody one by one, where such a row is the answer
    and cannot race again."""
    used = idem.key_was_used(exc)
    for ask in asks:
        ask.look = True
        ask.raced = ask.raced or not used


# One group per competition: its row lock serializes registrations on PostgreSQL.
_grouped: GroupCommit[str, Ask, Registered] = GroupCommit(
    batch_work=_batch, max_batch=MAX_BATCH, on_conflict=_conflicted
)


def register_many(rt: Runtime, comp_id: str, asks: list[Ask]) -> list[Outcome]:
    """Several registrations for one competition gathered by one caller (the API's event
    loop gathers the requests that arrive together: one thread hop for all of them), run as
    `register_call` runs one; one outcome (an answer or an error) per ask, in order."""
    return _grouped.submit_many(rt.store, comp_id, asks)


def register(rt: Runtime, who: Principal, comp_id: str) -> RegistrationView:
    """Registers `who` (see `register_call`)."""
    got = register_call(rt, who, comp_id)
    assert got.view is not None
    return got.view


def register_call(
    rt: Runtime,
    who: Principal,
    comp_id: str,
    keyed: idem.InCall | None = None,
    render: Callable[[RegistrationView], bytes] | None = None,
) -> Registered:
    """Registers `who`. Registrations for one competition serialize on its row (PostgreSQL;
    SQLite: the single writer), whose lock is held until the commit. So callers arriving
    together are grouped (per process, store/group_commit.py): one of them runs up to
    MAX_BATCH registrations in one transaction, the newcomers of a free competition as one
    seat claim and a few multi-row statements (bulk.py), the others one by one in a savepoint
    each (a failure, e.g. missing funds, undoes only that one), and all answers are handed out
    after the one commit. With `keyed`, the call's idempotency record, holding `render(view)`
    sealed, is written in that same transaction; `replay` then may carry the response of an
    earlier call with the same key instead of a view."""
    return _grouped.submit(rt.store, comp_id, Ask(rt, who, keyed, render))


def register_in(tx: Tx, comp_id: str, who: Principal) -> RegistrationView:
    """One registration, alone (in a savepoint of the batch's transaction). The registration
    row is written first, as a guess made from an unlocked read of the counters; only then
    the conditional seat (or waitlist) UPDATE takes the competition row's lock, so on
    PostgreSQL the lock covers as few statements as possible before the commit. The guess is
    only an optimisation: the outcome is decided by the UPDATE's condition, and a wrong guess
    is corrected under the lock. A competition with teams refuses (TEAM_COMPETITION)."""
    now = tx.now
    outlook = seats.seat_outlook(comp_id)
    if outlook is None:
        raise not_found(comp_id)
    if outlook.teams:
        raise team_only(outlook.competition)
    existing = seats.existing_registration(comp_id, who.user_id)
    if existing is not None and existing.state in ACTIVE:
        return RegistrationView(existing, position(existing), created=False)
    guess_seat = not outlook.full
    comp = outlook.competition
    reg = existing or Registration(competition=comp_id, user=who.user_id, create_time=now)
    reg.state = CONFIRMED if guess_seat else WAITLISTED
    reg.waitlist_seq = None
    reg.offer_expire_time = None
    reg.confirm_time = now if guess_seat else None
    reg.update_time = now
    reg.fee_held = 0
    if existing is not None:
        # Alone this time, paying for itself, not checked in.
        existing.group_id = existing.payer = existing.checkin_time = None
    if existing is None:
        # Before any lock: a second registration of the same user fails here, early.
        seats.insert_registration(reg)
    else:
        queries.save_registration(reg)
    noted = False
    if guess_seat and existing is None and not users_with_channels([who.user_id]):
        # The confirmation record too (undone below if the guess was wrong); registrants
        # with a webhook channel are queued to the outbox after the seat is certain.
        record_notification(tx, comp, reg.id, who.user_id, CONFIRMATION, {}, 0)
        noted = True
    # The seat: a conditional UPDATE (the deadline is part of it) hands back the row as
    # updated. The waitlist UPDATE only applies while every seat is taken.
    attempts = (
        (seats.claim_seat, seats.join_waitlist) if guess_seat else (seats.join_waitlist, seats.claim_seat)
    )
    got = None
    for attempt in attempts:
        got = attempt(comp_id, now)
        if got is not None:
            took_seat = attempt is seats.claim_seat
            break
    if got is None:
        found = queries.find_competition(comp_id)
        if found is None or not visible(who, found):
            raise not_found(comp_id)
        raise closed_error(found, now)
    comp.entry_fee = got.entry_fee
    comp.publish_time = got.publish_time
    comp.reminder_time = got.reminder_time
    comp.reminder_lead_s = got.reminder_lead_s
    if took_seat and not guess_seat:
        reg.state, reg.confirm_time = CONFIRMED, now
        seats.write_confirmed(reg)
    elif not took_seat:
        reg.state, reg.confirm_time, reg.waitlist_seq = WAITLISTED, None, got.waitlist_seq
        seats.write_waitlisted(reg)
    if took_seat and comp.entry_fee > 0:
        ledger.hold(
            tx, who.user_id, comp.entry_fee, registration_name(comp_id, reg.id), "competition.entry_fee"
        )
        reg.fee_held = comp.entry_fee
        seats.write_fee_held(reg)
    if took_seat and not noted:
        notify_many(tx, comp, [(reg.id, reg.user_id)], CONFIRMATION, known_new=existing is None)
    if took_seat:
        late_reminder(tx, comp, reg)
    elif noted and not took_seat:
        seats.forget_confirmation(reg.id)
    emit_registration(tx, reg, "created")
    # A newcomer joins the tail: every waitlist entry is ahead of it.
    return RegistrationView(reg, 0 if took_seat else got.waitlist_entries, created=True)


def team_only(comp: Competition) -> FailedPrecondition:
    return precondition(
        "this competition has teams: register through your team (the captain's RegisterTeam,"
        " or RegisterGroup for the accepted members), not one by one",
        "TEAM_COMPETITION",
        comp,
    )


def in_window(comp: Competition, now: datetime) -> bool:
    """The registration window, as `claim_seat` states it in SQL."""
    return (
        comp.state in (DRAFT, OPEN)
        and comp.publish_time is not None
        and comp.open_time <= now < comp.close_time
    )


def closed_error(comp: Competition, now: datetime) -> FailedPrecondition:
    if comp.state in TERMINAL or comp.state not in (DRAFT, OPEN):
        return precondition(
            f"registration is closed: the competition is {comp.state}", "REGISTRATION_CLOSED", comp
        )
    if comp.publish_time is None:
        return precondition("the competition is not published", "NOT_PUBLISHED", comp)
    if now < comp.open_time:
        return precondition("registration has not opened yet", "REGISTRATION_NOT_OPEN", comp)
    return precondition("the registration deadline has passed", "REGISTRATION_CLOSED", comp)


def cancel_registration(rt: Runtime, who: Principal, comp_id: str, reg_id: str) -> RegistrationView:
    with rt.store.write() as tx:
        comp, reg = own_registration(rt, who, comp_id, reg_id)
        if reg.state not in ACTIVE:
            return RegistrationView(reg, 0)
        if comp.state not in SEATING or tx.now >= comp.start_time:
            raise precondition(
                "registrations can be cancelled only before the competition starts",
                "COMPETITION_STARTED",
                comp,
            )
        if reg.state == CONFIRMED:
            comp.confirmed -= 1
        elif reg.state == OFFERED:
            comp.offered -= 1
        else:
            comp.waitlisted -= 1
            # A member leaving a waiting group: the group (one entry) waits on, one smaller.
            if reg.group_id and len(queries.waitlist_entry(comp_id, reg.waitlist_seq)) > 1:
                comp.waitlist_extra -= 1
        if reg.checkin_time is not None:
            comp.checked_in -= 1
            reg.checkin_time = None
        if reg.fee_held > 0:
            ledger.refund(
                tx, payer_of(reg), reg.fee_held, registration_name(comp_id, reg.id), "competition.refund"
            )
            reg.fee_held = 0
        reg.state = REG_CANCELLED
        reg.offer_expire_time = None
        reg.update_time = tx.now
        queries.save_registration(reg)
        emit_registration(tx, reg, "cancelled")
        promote(tx, comp)
        comp.update_time = tx.now
        queries.save_competition(comp)
    return RegistrationView(reg, 0)


def _with_positions(regs: list[Registration]) -> list[RegistrationView]:
    return [RegistrationView(r, position(r)) for r in regs]


def list_registrations(who: Principal, comp_id: str, page: PageRequest, state: str) -> Page[RegistrationView]:
    owned(who, comp_id)
    found = queries.registrations_page(comp_id, page, state)
    return Page(_with_positions(found.items), found.next_token)


def list_my_registrations(who: Principal, page: PageRequest) -> Page[RegistrationView]:
    found = queries.user_registrations_page(who.user_id, page)
    return Page(_with_positions(found.items), found.next_token)
