"""The lifecycle: an explicit, persisted state machine.

DRAFT -(published, open_time)-> OPEN -(close_time)-> REGISTRATION_CLOSED -(start_time)->
RUNNING -(end_time)-> ENDED -(results)-> RESULTS_PUBLISHED -> SETTLED; CANCELLED or FAILED
from anywhere before the results. Every transition is a row with its time and reason
(`transition`). Time-based transitions are made by the scheduler (`advance_due`), which
selects competitions through the indexed `due_time` column and runs chains of immediate
transitions in one tick, up to a bound.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog

from coordd.domain import ledger
from coordd.domain.competition.common import emit_competition, emit_registration, lock, name, payer_of
from coordd.domain.competition.notifications import notify_many
from coordd.domain.competition.settings import settings_of
from coordd.domain.competition.states import (
    ACTIVE,
    CANCELLATION,
    CANCELLED,
    DRAFT,
    ENDED,
    FAILED,
    OFFER_EXPIRED,
    OFFERED,
    OPEN,
    REGISTRATION_CLOSED,
    RESULTS_PUBLISHED,
    RUNNING,
    SETTLED,
    TERMINAL,
)
from coordd.runtime import Runtime
from coordd.store.competition import queries
from coordd.store.competition.models import Competition, Registration
from coordd.store.db import Tx

log = structlog.get_logger("coordd.competition")


def transition(tx: Tx, comp: Competition, to_state: str, reason: str) -> None:
    """The only place a competition changes state: stored with time and reason."""
    queries.insert_transition(comp.id, comp.state, to_state, reason[:500], tx.now)
    if to_state in (CANCELLED, FAILED):
        comp.previous_state = comp.state
    log.info(
        "competition transition", competition=comp.id, from_state=comp.state, to_state=to_state, why=reason
    )
    emit_competition(tx, comp, "state_changed", {"from": comp.state, "to": to_state, "reason": reason})
    comp.state = to_state
    comp.update_time = tx.now


def _next_step(comp: Competition, now: datetime) -> tuple[str, str] | None:
    """The time-based (or immediate) transition due now, if any."""
    state = comp.state
    if state == DRAFT and comp.publish_time is not None and now >= comp.open_time:
        return OPEN, "registration opened"
    if state == OPEN and now >= comp.close_time:
        return REGISTRATION_CLOSED, "registration deadline reached"
    if state == REGISTRATION_CLOSED and now >= comp.start_time:
        return RUNNING, "start time reached"
    if state == RUNNING and now >= comp.end_time:
        return ENDED, "end time reached"
    if state == RESULTS_PUBLISHED:
        return SETTLED, "prizes paid and fees settled"
    return None


def due_time(comp: Competition) -> datetime | None:
    """When the scheduler must look at the competition next; None: nothing is due."""
    state = comp.state
    if state == DRAFT:
        return comp.open_time if comp.publish_time is not None else None
    return {
        OPEN: comp.close_time,
        REGISTRATION_CLOSED: comp.start_time,
        RUNNING: comp.end_time,
        RESULTS_PUBLISHED: comp.update_time,
    }.get(state)


def run_chain(tx: Tx, comp: Competition, bound: int) -> int:
    """Makes every transition due now, at most `bound` of them; the caller saves."""
    steps = 0
    while steps < bound:
        step = _next_step(comp, tx.now)
        if step is None:
            break
        transition(tx, comp, *step)
        if comp.state == RUNNING:
            _end_offers(tx, comp)
        steps += 1
    comp.due_time = due_time(comp)
    return steps


def _end_offers(tx: Tx, comp: Competition) -> None:
    """At the start no seat changes hands any more: open offers lapse."""
    for reg in queries.registrations_in_state(comp.id, OFFERED):
        reg.state = OFFER_EXPIRED
        reg.offer_expire_time = None
        reg.update_time = tx.now
        queries.save_registration(reg)
        comp.offered -= 1
        emit_registration(tx, reg, "offer_expired")


def advance_due(rt: Runtime) -> int:
    """Scheduler task: advances every competition whose due_time has come."""
    s = settings_of(rt)
    moved = 0
    for comp_id in queries.due_competitions(rt.now(), s.batch):
        try:
            moved += _advance_one(rt, comp_id)
        except Exception as exc:
            log.warning("competition advance failed", competition=comp_id, error=str(exc))
            _record_error(rt, comp_id, f"{type(exc).__name__}: {exc}")
    return moved


def _advance_one(rt: Runtime, comp_id: str) -> int:
    with rt.store.write() as tx:
        comp = lock(rt, comp_id)
        if comp is None or comp.due_time is None or comp.due_time > tx.now:
            return 0
        steps = run_chain(tx, comp, settings_of(rt).max_chain)
        queries.save_competition(comp)
        return steps


def _record_error(rt: Runtime, comp_id: str, message: str) -> None:
    """Appends to the error list; after `max_errors` the competition goes to FAILED."""
    s = settings_of(rt)
    with rt.store.write() as tx:
        comp = lock(rt, comp_id)
        if comp is None or comp.state in TERMINAL:
            return
        comp.errors = [*comp.errors, {"message": message[:1000], "time": tx.now.isoformat()}]
        if len(comp.errors) >= s.max_errors:
            close_out(tx, comp, FAILED, f"failed after {len(comp.errors)} errors; last: {message[:300]}")
        else:
            comp.due_time = tx.now + timedelta(seconds=s.error_retry_s)
        comp.update_time = tx.now
        queries.save_competition(comp)


def close_out(tx: Tx, comp: Competition, to_state: str, reason: str) -> None:
    """CANCELLED or FAILED: refund every held fee and tell every active registrant."""
    transition(tx, comp, to_state, reason)
    comp.due_time = None
    comp.reminder_time = None
    held = queries.fees_held_in(comp.id)
    if held:
        ledger.post(
            tx,
            "competition.refund",
            name(comp.id),
            [m for r in held for m in _refund_movements(r)],
            memo=reason[:500],
        )
        queries.clear_fees([r.id for r in held], tx.now)
    active = queries.registrants_in(comp.id, ACTIVE)
    notify_many(tx, comp, active, CANCELLATION, {"reason": reason})


def _refund_movements(reg: Registration) -> list[tuple[str, int]]:
    return [
        (ledger.held_account(payer_of(reg)), -reg.fee_held),
        (ledger.available_account(payer_of(reg)), reg.fee_held),
    ]
