"""The rows WatchQueue streams read: a participant as a stream shows it, and a circuit's whole
queue in one statement (see domain/ceremony/snapshots.py, the read model built on them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coordd.store.ceremony.models import Ceremony, Circuit, Participant


@dataclass(frozen=True)
class ParticipantView:
    """A participant as WatchQueue shows it, read once per queue change for everyone."""

    id: str
    ceremony_id: str
    user_id: str
    status: str
    step: str
    circuit_id: str | None
    completed_circuits: int
    timeouts_count: int
    due_time: datetime | None
    turn_start_time: datetime | None
    create_time: datetime
    update_time: datetime


_VIEW_FIELDS = (
    Participant.id,
    Participant.ceremony,
    Participant.user,
    Participant.status,
    Participant.step,
    Participant.circuit,
    Participant.completed_circuits,
    Participant.timeouts_count,
    Participant.due_time,
    Participant.turn_start_time,
    Participant.create_time,
    Participant.update_time,
    Participant.queue_seq,
)


def _view(row: tuple[Any, ...]) -> ParticipantView:
    return ParticipantView(*row[:12])


def circuit_with_ceremony(circuit_id: str) -> Circuit | None:
    """The circuit with its `.ceremony` read in the same statement."""
    return Circuit.select(Circuit, Ceremony).join(Ceremony).where(Circuit.id == circuit_id).first()


def participant_view(participant_id: str) -> ParticipantView | None:
    row = Participant.select(*_VIEW_FIELDS).where(Participant.id == participant_id).tuples().first()
    return _view(row) if row else None


def queue_views(circuit_id: str) -> list[ParticipantView]:
    """Everyone on the circuit, in queue order."""
    rows = (
        Participant.select(*_VIEW_FIELDS)
        .where(Participant.circuit == circuit_id)
        .order_by(Participant.queue_seq)
        .tuples()
    )
    return [_view(row) for row in rows]
