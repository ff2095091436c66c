"""The rows WatchQueue streams read: a participant as a stream shows it, and a circuit's whole
queue in one statement (see domain/ceremony/snapshots.py, the read model built on them).

A circuit's queue is read on every change of it, for every participant on it (10,000 rows at a
time with a big ceremony), so `queue_views` skips peewee's per-field row conversion: it runs the
statement on the cursor, converts the two or four timestamps of a row itself, and shares one
string per distinct ceremony id, circuit id, status and step among the rows of a read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from coordd.store.ceremony.models import Ceremony, Circuit, Participant


class ParticipantView(NamedTuple):
    """A participant as WatchQueue shows it, read once per queue change for everyone. A tuple:
    built, compared and hashed in C, and no per-instance dict."""

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
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _view(row: tuple[Any, ...]) -> ParticipantView:
    return ParticipantView(*row[:12])


def circuit_with_ceremony(circuit_id: str) -> Circuit | None:
    """The circuit with its `.ceremony` read in the same statement."""
    return Circuit.select(Circuit, Ceremony).join(Ceremony).where(Circuit.id == circuit_id).first()


def participant_view(participant_id: str) -> ParticipantView | None:
    row = Participant.select(*_VIEW_FIELDS).where(Participant.id == participant_id).tuples().first()
    return _view(row) if row else None


def queue_views(circuit_id: str) -> list[ParticipantView]:
    """Everyone on the circuit, in queue order: the same rows as `participant_view` gives."""
    query = Participant.select(*_VIEW_FIELDS).where(Participant.circuit == circuit_id)
    sql, params = query.order_by(Participant.queue_seq).sql()
    rows = Participant._meta.database.execute_sql(sql, params).fetchall()
    shared: dict[Any, Any] = {}
    share = shared.setdefault
    epoch, micros, new = _EPOCH, timedelta, tuple.__new__
    out = []
    for pid, cer, user, status, step, circuit, completed, timeouts, due, start, created, updated in rows:
        out.append(
            new(
                ParticipantView,
                (
                    pid,
                    share(cer, cer),
                    user,
                    share(status, status),
                    share(step, step),
                    share(circuit, circuit),
                    completed,
                    timeouts,
                    None if due is None else epoch + micros(microseconds=due),
                    None if start is None else epoch + micros(microseconds=start),
                    epoch + micros(microseconds=created),
                    epoch + micros(microseconds=updated),
                ),
            )
        )
    return out
