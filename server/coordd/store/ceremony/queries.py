"""Every statement the ceremony rules run, named for what it does. They run inside the caller's
transaction; `for_update` asks for a row lock (the rules pass it on PostgreSQL only: SQLite
serializes writers). Rows come back as model instances or the named rows below.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any, NamedTuple

import peewee

from coordd.core.paging import Page, PageRequest
from coordd.store.ceremony.models import (
    CREATED,
    FINALIZED,
    FINALIZING,
    VALID,
    VERIFYING,
    WAITING,
    Ceremony,
    CeremonyUpload,
    Circuit,
    Contribution,
    Participant,
)
from coordd.store.paging import keyset_page

# What an insert raises when a unique key is already taken (a prefix, a second join).
IntegrityError = peewee.IntegrityError


# -- any row -------------------------------------------------------------------------------


def save(row: peewee.Model) -> None:
    row.save()


def delete(row: peewee.Model) -> None:
    row.delete_instance()


# -- ceremonies ----------------------------------------------------------------------------


def insert_ceremony(c: Ceremony) -> None:
    """A new ceremony built by the rules (its id is already set); IntegrityError when its
    prefix is taken."""
    c.save(force_insert=True)


def find_ceremony(ceremony_id: str) -> Ceremony | None:
    return Ceremony.get_or_none(Ceremony.id == ceremony_id)


def ceremony_by_id(ceremony_id: str) -> Ceremony:
    """The ceremony of a row already read (it exists: the foreign key says so)."""
    return Ceremony.get_by_id(ceremony_id)


def lock_ceremony(ceremony_id: str, for_update: bool) -> Ceremony | None:
    query = Ceremony.select().where(Ceremony.id == ceremony_id)
    if for_update:
        query = query.for_update()
    return query.first()


def page_ceremonies(page: PageRequest, state: str) -> Page[Ceremony]:
    query = Ceremony.select()
    if state:
        query = query.where(Ceremony.state == state)
    return keyset_page(query, Ceremony.id, page, filters={"state": state})


def due_ceremonies(now: datetime, batch: int) -> list[str]:
    """Ids of ceremonies whose next scheduled state change is due (indexed state_due_time)."""
    return [
        cid
        for (cid,) in Ceremony.select(Ceremony.id)
        .where(Ceremony.state_due_time <= now)
        .order_by(Ceremony.state_due_time)
        .limit(batch)
        .tuples()
    ]


def ceremony_ids_in(states: tuple[str, ...]) -> list[str]:
    return [cid for (cid,) in Ceremony.select(Ceremony.id).where(Ceremony.state.in_(states)).tuples()]


# -- circuits ------------------------------------------------------------------------------


class CircuitRef(NamedTuple):
    id: str
    ceremony_id: str


def circuit_ids(ceremony_id: str) -> list[str]:
    return [k for (k,) in Circuit.select(Circuit.id).where(Circuit.ceremony == ceremony_id).tuples()]


def circuits_of(ceremony_id: str, for_update: bool = False) -> list[Circuit]:
    """A ceremony's circuits in sequence order (the order they are always locked in)."""
    query = Circuit.select().where(Circuit.ceremony == ceremony_id).order_by(Circuit.sequence)
    if for_update:
        query = query.for_update()
    return list(query)


def circuits_of_ceremonies(ceremony_ids: list[str]) -> Iterator[CircuitRef]:
    if not ceremony_ids:
        return
    for row in (
        Circuit.select(Circuit.id, Circuit.ceremony).where(Circuit.ceremony.in_(ceremony_ids)).tuples()
    ):
        yield CircuitRef(*row)


def lock_circuit(circuit_id: str, for_update: bool) -> Circuit | None:
    query = Circuit.select().where(Circuit.id == circuit_id)
    if for_update:
        query = query.for_update()
    return query.first()


def find_circuit(ceremony_id: str, circuit_id: str) -> Circuit | None:
    return Circuit.get_or_none((Circuit.id == circuit_id) & (Circuit.ceremony == ceremony_id))


def circuit_by_id(circuit_id: str) -> Circuit:
    return Circuit.get_by_id(circuit_id)


def last_sequence(ceremony_id: str) -> int:
    return (
        Circuit.select(peewee.fn.MAX(Circuit.sequence)).where(Circuit.ceremony == ceremony_id).scalar() or 0
    )


def create_circuit(**fields: Any) -> Circuit:
    return Circuit.create(**fields)


def next_circuit(ceremony_id: str, after_sequence: int) -> Circuit | None:
    return (
        Circuit.select()
        .where((Circuit.ceremony == ceremony_id) & (Circuit.sequence > after_sequence))
        .order_by(Circuit.sequence)
        .first()
    )


def set_queue_counter(circuit_id: str, counter: int) -> None:
    Circuit.update(queue_counter=counter).where(Circuit.id == circuit_id).execute()


def set_current_participant(circuit_id: str, participant_id: str | None) -> None:
    Circuit.update(current_participant=participant_id).where(Circuit.id == circuit_id).execute()


# -- participants --------------------------------------------------------------------------


class DueParticipant(NamedTuple):
    id: str
    circuit_id: str | None
    status: str


def find_participant(ceremony_id: str, user_id: str) -> Participant | None:
    return Participant.get_or_none((Participant.ceremony == ceremony_id) & (Participant.user == user_id))


def participant_by_key(participant_id: str | None) -> Participant | None:
    return Participant.get_or_none(Participant.id == participant_id)


def participant_by_id(participant_id: str) -> Participant:
    return Participant.get_by_id(participant_id)


def lock_participant(participant_id: str, for_update: bool) -> Participant | None:
    query = Participant.select().where(Participant.id == participant_id)
    if for_update:
        query = query.for_update()
    return query.first()


def create_participant(ceremony_id: str, user_id: str, status: str, now: datetime) -> Participant:
    return Participant.create(
        ceremony=ceremony_id, user=user_id, status=status, create_time=now, update_time=now
    )


def page_participants(ceremony_id: str, page: PageRequest, status: str) -> Page[Participant]:
    query = Participant.select().where(Participant.ceremony == ceremony_id)
    if status:
        query = query.where(Participant.status == status)
    return keyset_page(query, Participant.id, page, filters={"c": ceremony_id, "status": status})


def early_joiners(ceremony_id: str) -> Iterator[Participant]:
    """Who joined before the ceremony opened, in join order."""
    return iter(
        Participant.select()
        .where((Participant.ceremony == ceremony_id) & (Participant.status == CREATED))
        .order_by(Participant.create_time, Participant.id)
    )


def next_in_queue(circuit_id: str) -> Participant | None:
    """The head of the circuit's queue: the WAITING participant with the lowest queue_seq."""
    return (
        Participant.select()
        .where((Participant.circuit == circuit_id) & (Participant.status == WAITING))
        .order_by(Participant.queue_seq)
        .first()
    )


def waiting_counts(circuit_ids: list[str]) -> dict[str, int]:
    rows = (
        Participant.select(Participant.circuit, peewee.fn.COUNT(Participant.id))
        .where(Participant.circuit.in_(circuit_ids) & (Participant.status == WAITING))
        .group_by(Participant.circuit)
        .tuples()
    )
    return {circuit_id: count for circuit_id, count in rows}


def due_participants(now: datetime, batch: int) -> list[DueParticipant]:
    """Participants whose deadline has passed, earliest first (indexed due_time)."""
    rows = (
        Participant.select(Participant.id, Participant.circuit, Participant.status)
        .where(Participant.due_time <= now)
        .order_by(Participant.due_time)
        .limit(batch)
        .tuples()
    )
    return [DueParticipant(*row) for row in rows]


def finish_finalizers(ceremony_id: str, now: datetime) -> None:
    """FINALIZING participants (the coordinator) become FINALIZED, off any circuit."""
    Participant.update(status=FINALIZED, update_time=now, circuit=None).where(
        (Participant.ceremony == ceremony_id) & (Participant.status == FINALIZING)
    ).execute()


def strays(circuit_id: str, holder_id: str, statuses: tuple[str, ...]) -> Iterator[Participant]:
    """Participants on the circuit in one of `statuses` other than the turn's holder."""
    return iter(
        Participant.select().where(
            (Participant.circuit == circuit_id)
            & Participant.status.in_(statuses)
            & (Participant.id != holder_id)
        )
    )


def set_missing_deadlines(circuit_id: str, statuses: tuple[str, ...], now: datetime) -> int:
    """Gives participants in `statuses` without a deadline one due now; returns how many."""
    return (
        Participant.update(due_time=now)
        .where(
            (Participant.circuit == circuit_id)
            & Participant.status.in_(statuses)
            & Participant.due_time.is_null()
        )
        .execute()
    )


# -- contributions -------------------------------------------------------------------------


def insert_contribution(contrib: Contribution) -> None:
    contrib.save(force_insert=True)


def find_contribution(contribution_id: str) -> Contribution | None:
    return Contribution.get_or_none(Contribution.id == contribution_id)


def contribution_by_id(contribution_id: str) -> Contribution:
    return Contribution.get_by_id(contribution_id)


def valid_contribution(circuit_id: str, index: int) -> Contribution | None:
    return (
        Contribution.select()
        .where(
            (Contribution.circuit == circuit_id)
            & (Contribution.index == index)
            & (Contribution.state == VALID)
        )
        .first()
    )


def is_verifying(circuit_id: str) -> bool:
    """Whether a contribution to the circuit is being verified."""
    return (
        Contribution.select()
        .where((Contribution.circuit == circuit_id) & (Contribution.state == VERIFYING))
        .exists()
    )


def recorded_contributions(circuit_id: str) -> list[Contribution]:
    """The circuit's verified contributions (valid or not), in upload order."""
    return list(
        Contribution.select()
        .where((Contribution.circuit == circuit_id) & (Contribution.state != VERIFYING))
        .order_by(Contribution.upload_time, Contribution.id)
    )


# -- uploads -------------------------------------------------------------------------------


def insert_upload(up: CeremonyUpload) -> None:
    up.save(force_insert=True)


def uploads_of(circuit_id: str, user_id: str) -> Iterator[CeremonyUpload]:
    """A user's unfinished uploads to a circuit (any kind)."""
    return iter(
        CeremonyUpload.select().where(
            (CeremonyUpload.circuit == circuit_id) & (CeremonyUpload.user == user_id)
        )
    )


def find_upload(circuit_id: str, user_id: str, kind: str) -> CeremonyUpload | None:
    return CeremonyUpload.get_or_none(
        (CeremonyUpload.circuit == circuit_id)
        & (CeremonyUpload.user == user_id)
        & (CeremonyUpload.kind == kind)
    )


def upload_of(upload_id: str, user_id: str) -> CeremonyUpload | None:
    return CeremonyUpload.get_or_none((CeremonyUpload.id == upload_id) & (CeremonyUpload.user == user_id))


def commit_upload(upload_id: str, committed: int, now: datetime) -> int:
    """Records the durable offset; 0 when the upload no longer exists."""
    return (
        CeremonyUpload.update(committed=committed, update_time=now)
        .where(CeremonyUpload.id == upload_id)
        .execute()
    )
