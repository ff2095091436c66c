"""Participants: joining (into the first circuit's queue once the ceremony is open), leaving
(a held turn passes on at once), listing, and the current contributor's progress reports.

Statuses: CREATED (joined before opening) -> WAITING -> READY (holds the turn, must start
within the start window) -> CONTRIBUTING -> CONTRIBUTED (being verified) -> WAITING on the
next circuit, or DONE. A missed deadline makes READY/CONTRIBUTING TIMEDOUT (see deadlines).
"""

from __future__ import annotations

from coordd.core.errors import AlreadyExists, FailedPrecondition, Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal, require_owner_or_admin
from coordd.domain.ceremony.eligibility import require_eligible
from coordd.domain.ceremony.emit import participant_event
from coordd.domain.ceremony.lookup import circuits, get_ceremony, lock_circuit, lock_mine, mine, require_state
from coordd.domain.ceremony.names import ceremony_name, participant_name, queue_key
from coordd.domain.ceremony.queue import enter_queue, promote, release, require_turn, start_turn
from coordd.domain.ceremony.states import (
    CONTRIBUTED,
    CREATED,
    DONE,
    FINALIZED,
    FINALIZING,
    OPENED,
    PAUSED,
    READY,
    SCHEDULED,
    STEPS,
)
from coordd.domain.ceremony.uploads import discard_uploads
from coordd.runtime import Runtime
from coordd.store.auth.queries import user_by_id
from coordd.store.ceremony import queries
from coordd.store.ceremony.models import Participant


def join(rt: Runtime, who: Principal, ceremony_id: str) -> Participant:
    try:
        with rt.store.write() as tx:
            c = queries.lock_ceremony(ceremony_id, for_update=rt.store.is_postgres)
            if c is None:
                get_ceremony(ceremony_id)
            assert c is not None
            require_state(c, (SCHEDULED, OPENED, PAUSED), "join")
            require_eligible(c.eligibility or {}, user_by_id(who.user_id) if c.eligibility else None, tx.now)
            ordered = circuits(rt, c.id)
            if c.state != SCHEDULED and not ordered:
                raise FailedPrecondition("this ceremony has no circuits", reason="NO_CIRCUITS")
            p = queries.create_participant(c.id, who.user_id, CREATED, tx.now)
            participant_event(tx, p, "ceremony.participant.joined")
            if c.state != SCHEDULED:
                # Only the first circuit's queue changes: only its row is locked.
                first = lock_circuit(rt, ordered[0].id)
                enter_queue(tx, c, p, first)
                promote(rt, tx, c, first)
                p = queries.participant_by_id(p.id)
    except queries.IntegrityError:
        raise AlreadyExists(
            "you have already joined this ceremony",
            reason="ALREADY_JOINED",
            metadata={"resource": ceremony_name(ceremony_id)},
        ) from None
    return p


def get_participation(who: Principal, ceremony_id: str) -> Participant:
    return mine(ceremony_id, who)


def leave(rt: Runtime, who: Principal, ceremony_id: str) -> Participant:
    """Leaving ends the participation (DONE, marked left); a held turn passes on at once. A
    contribution already being verified is still recorded."""
    with rt.store.write() as tx:
        p, circuit = lock_mine(rt, ceremony_id, who)
        if p.status in (DONE, FINALIZING, FINALIZED):
            raise FailedPrecondition(f"cannot leave while {p.status}", reason="PARTICIPANT_STATUS")
        c = queries.ceremony_by_id(ceremony_id)
        p.left = True
        if p.status == CONTRIBUTED:
            # The contribution under verification is still recorded; then the participant is DONE.
            p.update_time = tx.now
            queries.save(p)
            participant_event(tx, p, "ceremony.participant.leaving")
            return p
        discard_uploads(p.user_id, circuit)
        old_status = p.status
        p.status, p.step, p.circuit = DONE, "", None
        p.due_time = p.turn_start_time = None
        p.update_time = tx.now
        queries.save(p)
        keys = [queue_key(c.id, circuit.id)] if circuit else []
        tx.emit(
            "ceremony.participant.left",
            participant_name(c.id, p.id),
            {"status": DONE, "was": old_status, "watch_keys": keys},
        )
        if circuit is not None:
            release(rt, tx, c, circuit, p.id)
    return p


def list_participants(who: Principal, ceremony_id: str, page: PageRequest, status: str) -> Page[Participant]:
    c = get_ceremony(ceremony_id)
    require_owner_or_admin(who, c.coordinator_id, "ceremony")
    return queries.page_participants(ceremony_id, page, status)


def report_progress(rt: Runtime, who: Principal, ceremony_id: str, step: str) -> Participant:
    if step not in STEPS[1:4]:
        v = Violations()
        v.add("step", "DOWNLOADING, COMPUTING or UPLOADING")
        v.raise_if_any()
    with rt.store.write() as tx:
        p, circuit = lock_mine(rt, ceremony_id, who)
        circuit = require_turn(p, circuit, tx.now)
        if STEPS.index(step) <= STEPS.index(p.step):
            raise FailedPrecondition(
                f"progress only moves forward: {p.step or 'nothing'} -> {step} is not",
                reason="STEP_NOT_FORWARD",
                metadata={"step": p.step},
            )
        c = queries.ceremony_by_id(ceremony_id)
        if p.status == READY:
            start_turn(tx, c, circuit, p)
        p.step, p.update_time = step, tx.now
        queries.save(p)
        participant_event(tx, p, "ceremony.participant.progress", {"step": step})
    return p
