"""The waitlist: free seats go to its head, as a seat (free competitions) or as an offer
held for `offer_hold_s` (paid ones); offers are accepted or lapse; reminders go out.

The order is strict: entries are served by waitlist number, and a group (whose members
share one number) is one entry that gets all its seats at once or waits. While the head
group needs more seats than are free, the free seats stay free and nobody behind it (nor
a newcomer) takes them: the group is never skipped, silently or otherwise."""

from __future__ import annotations

from datetime import datetime, timedelta

from coordd.core.errors import FailedPrecondition
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.domain.competition.common import (
    emit_registration,
    lock,
    own_registration,
    payer_of,
    registration_name,
)
from coordd.domain.competition.notifications import notify, notify_many
from coordd.domain.competition.settings import settings_of
from coordd.domain.competition.states import (
    CONFIRMATION,
    CONFIRMED,
    OFFER,
    OFFER_EXPIRED,
    OFFERED,
    REMINDER,
    SEATING,
    WAITLISTED,
)
from coordd.domain.competition.views import RegistrationView
from coordd.runtime import Runtime
from coordd.store.competition import queries
from coordd.store.competition.models import Competition, Registration
from coordd.store.db import Tx


def position(reg: Registration) -> int:
    """1-based place on the waitlist while WAITLISTED, else 0."""
    if reg.state != WAITLISTED or reg.waitlist_seq is None:
        return 0
    return queries.waitlist_position(reg)


def promote(tx: Tx, comp: Competition) -> None:
    """Gives free seats to the head of the waitlist: straight to CONFIRMED when the
    competition is free, otherwise an offer held for `offer_hold_s` (never past the start).
    Never more than the capacity; a head group that does not fit stops it (strict order)."""
    if comp.state not in SEATING or tx.now >= comp.start_time:
        return
    while comp.waitlisted > 0:
        head = queries.waitlist_head(comp.id)
        if head is None:
            break
        members = queries.waitlist_entry(comp.id, head.waitlist_seq) if head.group_id else [head]
        if comp.confirmed + comp.offered + len(members) > comp.capacity:
            break
        comp.waitlisted -= len(members)
        comp.waitlist_extra -= len(members) - 1
        expire = min(tx.now + timedelta(seconds=comp.offer_hold_s), comp.start_time)
        for member in members:
            _seat(tx, comp, member, expire)


def _seat(tx: Tx, comp: Competition, reg: Registration, expire: datetime) -> None:
    reg.update_time = tx.now
    if comp.entry_fee == 0:
        reg.state = CONFIRMED
        reg.confirm_time = tx.now
        comp.confirmed += 1
        queries.save_registration(reg)
        notify(tx, comp, reg, CONFIRMATION, {"promoted": True})
        late_reminder(tx, comp, reg)
    else:
        reg.state = OFFERED
        reg.offer_expire_time = expire
        comp.offered += 1
        queries.save_registration(reg)
        notify(
            tx,
            comp,
            reg,
            OFFER,
            {"offer_expire_time": reg.offer_expire_time.isoformat(), "fee": comp.entry_fee},
        )
    emit_registration(tx, reg, "promoted")


def offered_together(reg: Registration) -> list[Registration]:
    """The open offer `reg` is part of: its group's OFFERED members, or itself."""
    if not reg.group_id:
        return [reg]
    return queries.group_members(reg.competition_id, reg.group_id, OFFERED)


def late_reminder(tx: Tx, comp: Competition, reg: Registration) -> None:
    """Someone confirmed after the reminders went out gets theirs now (once, as ever)."""
    if (
        comp.publish_time is not None
        and comp.reminder_lead_s > 0
        and comp.reminder_time is None
        and tx.now >= comp.start_time - timedelta(seconds=comp.reminder_lead_s)
    ):
        notify(tx, comp, reg, REMINDER)


def accept_offer(rt: Runtime, who: Principal, comp_id: str, reg_id: str) -> RegistrationView:
    with rt.store.write() as tx:
        comp, reg = own_registration(rt, who, comp_id, reg_id)
        if reg.state == CONFIRMED:
            return RegistrationView(reg, 0)
        if reg.state != OFFERED or reg.offer_expire_time is None or reg.offer_expire_time <= tx.now:
            raise FailedPrecondition(
                "there is no open offer for this registration",
                reason="NO_OPEN_OFFER",
                metadata={"registration_state": reg.state},
            )
        # A group's offer is accepted as one: every member's seat, each fee held from its payer.
        for member in offered_together(reg):
            if comp.entry_fee > 0:
                ledger.hold(
                    tx,
                    payer_of(member),
                    comp.entry_fee,
                    registration_name(comp_id, member.id),
                    "competition.entry_fee",
                )
                member.fee_held = comp.entry_fee
            comp.offered -= 1
            comp.confirmed += 1
            member.state = CONFIRMED
            member.confirm_time = tx.now
            member.offer_expire_time = None
            member.update_time = tx.now
            queries.save_registration(member)
            notify(tx, comp, member, CONFIRMATION, {"promoted": True})
            late_reminder(tx, comp, member)
            emit_registration(tx, member, "confirmed")
            if member.id == reg.id:
                reg = member
        comp.update_time = tx.now
        queries.save_competition(comp)
    return RegistrationView(reg, 0)


def expire_offers(rt: Runtime) -> int:
    """Scheduler task: offers past their hold time lapse and the seat moves on."""
    s = settings_of(rt)
    expired = 0
    for due in queries.offers_due(rt.now(), s.batch):
        with rt.store.write() as tx:
            comp = lock(rt, due.competition_id)
            reg = queries.find_registration(due.registration_id)
            if comp is None or reg is None or reg.state != OFFERED or reg.offer_expire_time > tx.now:
                continue
            # A group's offer lapses as one (its members share the expiry time).
            for member in offered_together(reg):
                member.state = OFFER_EXPIRED
                member.offer_expire_time = None
                member.update_time = tx.now
                queries.save_registration(member)
                comp.offered -= 1
                emit_registration(tx, member, "offer_expired")
            promote(tx, comp)
            comp.update_time = tx.now
            queries.save_competition(comp)
            expired += 1
    return expired


def queue_reminders(rt: Runtime) -> int:
    """Scheduler task: one reminder per confirmed registration, once. The competition's
    reminder_time is cleared in the same transaction that writes the outbox rows, and the
    outbox's unique (registration, kind) key holds even if that ever ran twice."""
    s = settings_of(rt)
    queued = 0
    for comp_id in queries.reminders_due(rt.now(), s.batch):
        with rt.store.write() as tx:
            comp = lock(rt, comp_id)
            if comp is None or comp.reminder_time is None or comp.reminder_time > tx.now:
                continue
            if comp.state in SEATING and tx.now < comp.start_time:
                confirmed = queries.registrants_in(comp.id, (CONFIRMED,))
                queued += notify_many(tx, comp, confirmed, REMINDER)
            comp.reminder_time = None
            queries.save_competition(comp)
    return queued
