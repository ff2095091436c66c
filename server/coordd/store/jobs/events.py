"""The events of a batch of submissions in one multi-row INSERT (store/db.py stores a
transaction's `Tx.emit` events one statement each; a batch of gathered SubmitJob calls
would pay a round trip per job for them)."""

from __future__ import annotations

from typing import Any

from coordd.core.events import Event
from coordd.store.db import Tx, database_proxy
from coordd.store.fields import JSONField, TimestampField

CHUNK = 500
_json = JSONField().db_value
_stamp = TimestampField().db_value


def insert_events(tx: Tx, events: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Stores the events in the caller's transaction and adds them to its committed events
    (published after the commit, exactly as `Tx.emit`'s are)."""
    db = database_proxy.obj
    row = "(" + ", ".join([db.param] * 4) + ")"
    created = _stamp(tx.now)
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        params: list[Any] = []
        for type_, subject, data in chunk:
            params += (type_, subject, _json(data), created)
        sql = (
            "INSERT INTO event_log (type, subject, data, create_time) VALUES "
            + ", ".join([row] * len(chunk))
            + " RETURNING id"
        )
        ids = sorted(r[0] for r in db.execute_sql(sql, params))
        for event_id, (type_, subject, data) in zip(ids, chunk, strict=True):
            tx.events.append(Event(event_id, type_, subject, data, tx.now))
