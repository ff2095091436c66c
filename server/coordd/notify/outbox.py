"""Channels and the outbox: notifications are rows written with the state change that
causes them, delivered later by the scheduler with retries and backoff.

Delivery is at least once: a receiver deduplicates with the delivery id header; the
outbox itself never queues the same (channel, dedup key) twice.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import structlog

from coordd.core.errors import NotFound, Violations
from coordd.core.ids import new_id
from coordd.core.principal import Principal
from coordd.notify import webhook
from coordd.notify.models import DELIVERED, FAILED, PENDING, Channel, Delivery
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.paging import Page, PageRequest, keyset_page

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


# -- channels --------------------------------------------------------------------------


def _secret_context(channel_id: str) -> str:
    return f"notify_channels/{channel_id}/secret"


def create_channel(
    rt: Runtime, who: Principal, display_name: str, url: str, secret: str, event_types: list[str]
) -> tuple[Channel, str]:
    v = Violations()
    if not display_name:
        v.add("display_name", "required")
    elif len(display_name) > 100:
        v.add("display_name", "at most 100 characters")
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        parsed = urlparse("")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        v.add("url", "must be an http:// or https:// URL")
    elif len(url) > 2000:
        v.add("url", "at most 2000 characters")
    elif not rt.settings.webhook_allow_private_networks:
        refused = webhook.refused_host(parsed.hostname)
        if refused:
            v.add("url", f"{refused} (webhook_allow_private_networks is off)")
    if secret and not 16 <= len(secret) <= 200:
        v.add("secret", "16 to 200 characters")
    for index, kind in enumerate(event_types):
        if not kind or len(kind) > 100 or not all(c.isalnum() or c in "._-" for c in kind):
            v.add(f"event_types[{index}]", "a dotted event type such as node.down")
    v.raise_if_any()
    secret = secret or secrets.token_urlsafe(32)
    channel_id = new_id()
    with rt.store.write() as tx:
        channel = Channel.create(
            id=channel_id,
            owner=who.user_id,
            display_name=display_name,
            url=url,
            secret=rt.sealer.seal(secret, _secret_context(channel_id)),
            event_types=sorted(set(event_types)),
            create_time=tx.now,
        )
        tx.emit("notify.channel.created", f"channels/{channel.id}", {"owner": f"users/{who.user_id}"})
    return channel, secret


def get_channel(who: Principal, channel_id: str) -> Channel:
    channel = Channel.get_or_none((Channel.id == channel_id) & Channel.delete_time.is_null())
    if channel is None or (channel.owner_id != who.user_id and not who.is_admin):
        # Someone else's channel is reported as missing: existence is not leaked.
        raise NotFound(f"channels/{channel_id} not found", metadata={"resource": f"channels/{channel_id}"})
    return channel


def list_channels(who: Principal, page: PageRequest) -> Page[Channel]:
    query = Channel.select().where((Channel.owner == who.user_id) & Channel.delete_time.is_null())
    return keyset_page(query, Channel.id, page, filters={"u": who.user_id})


def delete_channel(rt: Runtime, who: Principal, channel_id: str) -> None:
    with rt.store.write() as tx:
        channel = get_channel(who, channel_id)
        channel.delete_time = tx.now
        channel.save()
        Delivery.update(state=FAILED, next_attempt_time=None, last_error="channel deleted").where(
            (Delivery.channel == channel.id) & (Delivery.state == PENDING)
        ).execute()
        tx.emit("notify.channel.deleted", f"channels/{channel.id}", {})


def test_channel(rt: Runtime, who: Principal, channel_id: str) -> Delivery:
    with rt.store.write() as tx:
        channel = get_channel(who, channel_id)
        # Every test is its own delivery: the key is fresh.
        delivery_id = _insert(tx, channel, TEST_EVENT, f"test:{new_id()}", {"message": "test delivery"})
        tx.emit("notify.delivery.queued", f"channels/{channel.id}", {"type": TEST_EVENT})
    return Delivery.get_by_id(delivery_id)


def list_deliveries(who: Principal, channel_id: str, page: PageRequest) -> Page[Delivery]:
    channel = get_channel(who, channel_id)
    query = Delivery.select().where(Delivery.channel == channel.id)
    return keyset_page(query, Delivery.id, page, filters={"c": channel.id}, descending=True)


# -- outbox ----------------------------------------------------------------------------


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


def _insert(tx: Tx, channel: Channel, event_type: str, dedup_key: str, data: dict[str, Any]) -> str | None:
    delivery_id = new_id()
    inserted = (
        Delivery.insert(
            id=delivery_id,
            channel=channel.id,
            event_type=event_type,
            dedup_key=dedup_key,
            body=_body(delivery_id, event_type, dedup_key, tx.now, data),
            state=PENDING,
            next_attempt_time=tx.now,
            create_time=tx.now,
        )
        .on_conflict_ignore()
        .execute()
    )
    # The insert's return value differs by backend when a row is ignored: look instead.
    del inserted
    return delivery_id if Delivery.select().where(Delivery.id == delivery_id).exists() else None


def enqueue(tx: Tx, owner_ids: set[str], event_type: str, dedup_key: str, data: dict[str, Any]) -> int:
    """Queues one delivery per matching channel of these owners, in the caller's
    transaction. The same (channel, dedup_key) is never queued twice."""
    if not owner_ids:
        return 0
    channels = Channel.select().where(Channel.owner.in_(sorted(owner_ids)) & Channel.delete_time.is_null())
    queued = 0
    for channel in channels:
        if channel.event_types and event_type not in channel.event_types:
            continue
        if _insert(tx, channel, event_type, dedup_key, data) is not None:
            queued += 1
    if queued:
        tx.emit("notify.delivery.queued", f"notify/{event_type}", {"dedup_key": dedup_key, "count": queued})
    return queued


def _claim(rt: Runtime, batch: int) -> list[tuple[Delivery, Channel]]:
    claimed: list[tuple[Delivery, Channel]] = []
    with rt.store.write() as tx:
        due = list(
            Delivery.select(Delivery, Channel)
            .join(Channel)
            .where(Delivery.next_attempt_time <= tx.now)
            .order_by(Delivery.next_attempt_time)
            .limit(batch)
        )
        for delivery in due:
            # Conditional: a concurrent sender that claimed it first wins.
            won = (
                Delivery.update(next_attempt_time=tx.now + timedelta(seconds=CLAIM_S))
                .where(
                    (Delivery.id == delivery.id) & (Delivery.next_attempt_time == delivery.next_attempt_time)
                )
                .execute()
            )
            if won:
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
        Delivery.update(**values).where((Delivery.id == delivery.id) & (Delivery.state == PENDING)).execute()
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
            rt.sealer.open(channel.secret, _secret_context(channel.id)),
            delivery.body,
            delivery.event_type,
            delivery.id,
            rt.settings.webhook_allow_private_networks,
        )
        _record(rt, delivery, outcome)
    return len(claimed)
