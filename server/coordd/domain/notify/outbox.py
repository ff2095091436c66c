"""The outbox: notifications are rows written with the state change that causes them,
delivered later by the scheduler (delivery.py: claims, sending, outcomes, the breaker).

Delivery is at least once: a receiver deduplicates with the delivery id header; the
outbox itself never queues the same (channel, dedup key) twice.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from coordd.core.ids import new_id
from coordd.domain.notify.delivery import (
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    CLAIM_S,
    MAX_ATTEMPTS,
    backoff_s,
    deliver_due,
    secret_context,
)
from coordd.notify import slack
from coordd.store.db import Tx
from coordd.store.notify import queries
from coordd.store.notify.models import SLACK, Channel

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "CLAIM_S",
    "MAX_ATTEMPTS",
    "TEST_EVENT",
    "backoff_s",
    "channels_told",
    "deliver_due",
    "enqueue",
    "enqueue_to_channels",
    "owned_live_channel",
    "owners_with_channels",
    "queue_to",
    "secret_context",
]

TEST_EVENT = "channel.test"


def _body(
    channel: Channel, delivery_id: str, event_type: str, dedup_key: str, now: datetime, data: dict[str, Any]
) -> str:
    if channel.kind == SLACK:
        return slack.payload(event_type, delivery_id, data)
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
    body = _body(channel, delivery_id, event_type, dedup_key, tx.now, data)
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


def enqueue_to_channels(
    tx: Tx, channel_ids: set[str], event_type: str, dedup_key: str, data: dict[str, Any]
) -> int:
    """Queues one delivery to each of these live channels, whatever their event filter
    (an escalation target; the channels that heard of an outage hear of its recovery)."""
    queued = 0
    for channel in queries.live_channels_by_ids(channel_ids):
        if queue_to(tx, channel, event_type, dedup_key, data) is not None:
            queued += 1
    if queued:
        tx.emit("notify.delivery.queued", f"notify/{event_type}", {"dedup_key": dedup_key, "count": queued})
    return queued


def channels_told(dedup_keys: list[str]) -> set[str]:
    """The channels queued any of these keys (e.g. an incident's opening and escalation)."""
    return queries.channels_with_keys(dedup_keys)


def owned_live_channel(owner_id: str, channel_id: str) -> Channel | None:
    channel = queries.live_channel(channel_id)
    return channel if channel is not None and channel.owner_id == owner_id else None


def owners_with_channels(user_ids: list[str]) -> set[str]:
    """Which of these users have a live webhook channel: most users have none, and asking
    once is much cheaper than a full `enqueue` per user."""
    return queries.owners_with_channels(user_ids)
