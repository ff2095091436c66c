"""The outbox: notifications are rows written with the state change that causes them,
delivered later by the scheduler with retries and backoff.

Delivery is at least once: a receiver deduplicates with the delivery id header; the
outbox itself never queues the same (channel, dedup key) twice.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import structlog

from coordd.core.ids import new_id
from coordd.notify import webhook
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.notify import queries
from coordd.store.notify.models import DELIVERED, FAILED, Channel, Delivery

log = structlog.get_logger("coordd.notify")

MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0
# A claimed delivery is not picked again for this long (a crashed sender's claim expires).
CLAIM_S = 60.0
TEST_EVENT = "channel.test"


def backoff_s(attempts: int) -> float:
    """2 s, 4 s, 8 s, ... capped: a receiver that is down is not hammered."""
    return min(BACKOFF_BASE_S * 2 ** max(attempts - 1, 0), BACKOFF_MAX_S)


def secret_context(channel_id: str) -> str:
    """What a channel's sealed secret is bound to."""
    return f"notify_channels/{channel_id}/secret"


def _body(delivery_id: str, event_type: str, dedup_key: str, now: datetime, data: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": delivery_id,
            "type": event_type,
            "dedup_key": dedup_key,
            "time": now.isoformat(),
            "data": data,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def queue_to(tx: Tx, channel: Channel, event_type: str, dedup_key: str, data: dict[str, Any]) -> str | None:
    """Queues one delivery to the channel; its id, or None when the key was queued before."""
    delivery_id = new_id()
    body = _body(delivery_id, event_type, dedup_key, tx.now, data)
    if queries.insert_delivery(delivery_id, channel.id, event_type, dedup_key, body, tx.now):
        return delivery_id
    return None


def enqueue(tx: Tx, owner_ids: set[str], event_type: str, dedup_key: str, data: dict[str, Any]) -> int:
    """Queues one delivery per matching channel of these owners, in the caller's
    transaction. The same (channel, dedup_key) is never queued twice."""
    if not owner_ids:
        return 0
    queued = 0
    for channel in queries.live_channels_of(owner_ids):
        if channel.event_types and event_type not in channel.event_types:
            continue
        if queue_to(tx, channel, event_type, dedup_key, data) is not None:
            queued += 1
    if queued:
        tx.emit("notify.delivery.queued", f"notify/{event_type}", {"dedup_key": dedup_key, "count": queued})
    return queued


def owners_with_channels(user_ids: list[str]) -> set[str]:
    """Which of these users have a live webhook channel: most users have none, and asking
    once is much cheaper than a full `enqueue` per user."""
    return queries.owners_with_channels(user_ids)


def _claim(rt: Runtime, batch: int) -> list[tuple[Delivery, Channel]]:
    claimed: list[tuple[Delivery, Channel]] = []
    with rt.store.write() as tx:
        for delivery in queries.due_deliveries(tx.now, batch):
            # Conditional: a concurrent sender that claimed it first wins.
            if queries.claim_delivery(delivery, tx.now + timedelta(seconds=CLAIM_S)):
                claimed.append((delivery, delivery.channel))
    return claimed


def _record(rt: Runtime, delivery: Delivery, outcome: webhook.Outcome) -> None:
    with rt.store.write() as tx:
        attempts = delivery.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error[:500],
        }
        if outcome.ok:
            values.update(state=DELIVERED, next_attempt_time=None, delivered_time=tx.now)
        elif attempts >= MAX_ATTEMPTS:
            values.update(state=FAILED, next_attempt_time=None)
            log.warning(
                "webhook delivery gave up", delivery=delivery.id, attempts=attempts, error=outcome.error
            )
        else:
            values["next_attempt_time"] = tx.now + timedelta(seconds=backoff_s(attempts))
        queries.record_attempt(delivery.id, values)
        tx.emit(
            "notify.delivery.attempted",
            f"deliveries/{delivery.id}",
            {"ok": outcome.ok, "status_code": outcome.status_code, "attempts": attempts},
        )


def deliver_due(rt: Runtime, batch: int = 50) -> int:
    """Scheduler task: claims due deliveries, POSTs them outside any transaction, records
    each outcome. Returns how many were attempted."""
    claimed = _claim(rt, batch)
    for delivery, channel in claimed:
        if channel.delete_time is not None:
            continue
        outcome = webhook.post(
            channel.url,
            rt.sealer.open(channel.secret, secret_context(channel.id)),
            delivery.body,
            delivery.event_type,
            delivery.id,
            rt.settings.webhook_allow_private_networks,
        )
        _record(rt, delivery, outcome)
    return len(claimed)
