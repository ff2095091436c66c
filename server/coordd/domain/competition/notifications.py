"""What registrants are told (confirmation, offer, reminder, results, cancellation), once
per registration and kind, queued to their webhook channels through the shared outbox.

The only module of the competition domain that uses the notify domain: `notify.enqueue` and
`notify.owners_with_channels`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog

from coordd.domain import notify as outbox
from coordd.domain.competition.common import name, registration_name
from coordd.store.competition import bulk, queries
from coordd.store.competition.models import CONFIRMATION, Competition, CompetitionNotification, Registration
from coordd.store.db import Tx

log = structlog.get_logger("coordd.competition")


def payload_of(comp: Competition, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": kind,
        "competition": name(comp.id),
        "title": comp.title,
        "state": comp.state,
        "start_time": comp.start_time.isoformat(),
        **(extra or {}),
    }


def notify(
    tx: Tx, comp: Competition, reg: Registration, kind: str, extra: dict[str, Any] | None = None
) -> None:
    notify_many(tx, comp, [(reg.id, reg.user_id)], kind, extra)


def notify_many(
    tx: Tx,
    comp: Competition,
    targets: Iterable[tuple[str, str]],
    kind: str,
    extra: dict[str, Any] | None = None,
    known_new: bool = False,
) -> int:
    """Records each (registration, kind) once and queues it to the registrant's webhook
    channels through the shared outbox, in the caller's transaction. The unique key makes a
    retried or repeated step (a scheduler restart, a replayed call) notify nobody twice."""
    wanted = dict(targets)
    if not wanted:
        return 0
    ids = [] if known_new else list(wanted)  # a registration created in this transaction has none
    done = queries.already_notified(ids, kind)
    todo = [(reg_id, user_id) for reg_id, user_id in wanted.items() if reg_id not in done]
    with_channels = users_with_channels([user_id for _, user_id in todo])
    rows = []
    for reg_id, user_id in todo:
        payload = _notification_payload(comp, reg_id, user_id, kind, extra)
        queued = 0
        if user_id in with_channels:
            queued = outbox.enqueue(
                tx, {user_id}, f"competition.{kind}", f"{payload['registration']}:{kind}", payload
            )
        if len(todo) == 1:
            record_notification(tx, comp, reg_id, user_id, kind, extra, queued, payload)
            return 1
        log.info("competition notification", kind=kind, registration=payload["registration"], queued=queued)
        rows.append(
            {
                "registration": reg_id,
                "user": user_id,
                "competition": comp.id,
                "kind": kind,
                "payload": payload,
                "deliveries_queued": queued,
                "create_time": tx.now,
            }
        )
    queries.insert_notifications(rows)
    return len(rows)


def _notification_payload(
    comp: Competition, reg_id: str, user_id: str, kind: str, extra: dict[str, Any] | None
) -> dict[str, Any]:
    resource = registration_name(comp.id, reg_id)
    return payload_of(comp, kind, {"registration": resource, "user": f"users/{user_id}", **(extra or {})})


def record_notification(
    tx: Tx,
    comp: Competition,
    reg_id: str,
    user_id: str,
    kind: str,
    extra: dict[str, Any] | None,
    queued: int,
    payload: dict[str, Any] | None = None,
) -> None:
    """One notification record, as a fixed statement (the registration hot path)."""
    payload = payload or _notification_payload(comp, reg_id, user_id, kind, extra)
    log.info("competition notification", kind=kind, registration=payload["registration"], queued=queued)
    queries.insert_notification(reg_id, user_id, comp.id, kind, payload, queued, tx.now)


def confirm_new(tx: Tx, comp: Competition, seated: list[Registration], with_channels: set[str]) -> None:
    """Confirmations of registrations created in this transaction: the records of registrants
    without a webhook channel in one statement, the others queued to the outbox as well."""
    if not seated:
        return
    rows = []
    queued = []
    for reg in seated:
        if reg.user_id in with_channels:
            queued.append((reg.id, reg.user_id))
        else:
            payload = _notification_payload(comp, reg.id, reg.user_id, CONFIRMATION, None)
            rows.append((reg.id, reg.user_id, comp.id, CONFIRMATION, payload, 0))
    if rows:
        bulk.insert_notifications(rows, tx.now)
        log.info("competition notifications", kind=CONFIRMATION, competition=name(comp.id), count=len(rows))
    notify_many(tx, comp, queued, CONFIRMATION, known_new=True)


def users_with_channels(user_ids: list[str]) -> set[str]:
    """Which of these users have a live webhook channel: most registrants have none, and
    asking once here is much cheaper than a full outbox enqueue per registrant."""
    return outbox.owners_with_channels(user_ids)


def notifications_of(comp_id: str, kind: str = "") -> list[CompetitionNotification]:
    """The notification records of a competition (optionally of one kind), oldest first."""
    return queries.notifications_of(comp_id, kind)
