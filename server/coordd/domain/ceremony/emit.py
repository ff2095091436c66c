"""The events ceremony changes emit. Each names, in `watch_keys`, the keys of the streams it
concerns (a circuit's queue key, a ceremony's participants), which is what they wait on."""

from __future__ import annotations

from typing import Any

from coordd.domain.ceremony.names import ceremony_name, participant_name, queue_key
from coordd.store.ceremony import queries
from coordd.store.ceremony.models import Ceremony, Participant
from coordd.store.db import Tx


def ceremony_event(tx: Tx, c: Ceremony, type_: str, data: dict[str, Any] | None = None) -> None:
    keys = [queue_key(c.id, k) for k in queries.circuit_ids(c.id)]
    tx.emit(type_, ceremony_name(c.id), {**(data or {}), "state": c.state, "watch_keys": keys})


def participant_event(tx: Tx, p: Participant, type_: str, data: dict[str, Any] | None = None) -> None:
    keys = [queue_key(p.ceremony_id, p.circuit_id)] if p.circuit_id else []
    keys.append(ceremony_name(p.ceremony_id) + "/participants")
    tx.emit(
        type_,
        participant_name(p.ceremony_id, p.id),
        {**(data or {}), "status": p.status, "watch_keys": keys},
    )
