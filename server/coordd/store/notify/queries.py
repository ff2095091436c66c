"""Queries of the outbox: channels, deliveries, and the sender's claims and outcomes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from coordd.store.db import database_proxy
from coordd.store.notify.models import FAILED, PENDING, Channel, Delivery
from coordd.store.paging import Page, PageRequest, keyset_page

# -- channels ------------------------------------------------------------------------------


def insert_channel(**values: Any) -> Channel:
    return Channel.create(**values)


def live_channel(channel_id: str) -> Channel | None:
    """The channel unless deleted."""
    return Channel.get_or_none((Channel.id == channel_id) & Channel.delete_time.is_null())


def page_channels(owner_id: str, page: PageRequest) -> Page[Channel]:
    query = Channel.select().where((Channel.owner == owner_id) & Channel.delete_time.is_null())
    return keyset_page(query, Channel.id, page, filters={"u": owner_id})


def live_channels_of(owner_ids: set[str]) -> list[Channel]:
    return list(Channel.select().where(Channel.owner.in_(sorted(owner_ids)) & Channel.delete_time.is_null()))


def owners_with_channels(user_ids: list[str]) -> set[str]:
    """Which of these users have a live channel, as one fixed statement per 500 users."""
    if not user_ids:
        return set()
    db = database_proxy.obj
    table, owner, deleted = (
        Channel._meta.table_name,
        Channel.owner.column_name,
        Channel.delete_time.column_name,
    )
    found: set[str] = set()
    for start in range(0, len(user_ids), 500):
        chunk = user_ids[start : start + 500]
        cursor = db.execute_sql(
            f'SELECT DISTINCT {owner} FROM "{table}" WHERE {deleted} IS NULL'
            f" AND {owner} IN ({', '.join([db.param] * len(chunk))})",
            tuple(chunk),
        )
        found.update(r[0] for r in cursor.fetchall())
    return found


# -- deliveries ----------------------------------------------------------------------------


def insert_delivery(
    delivery_id: str, channel_id: str, event_type: str, dedup_key: str, body: str, now: datetime
) -> bool:
    """Queues a delivery due now; False when the channel has one with this key already."""
    inserted = (
        Delivery.insert(
            id=delivery_id,
            channel=channel_id,
            event_type=event_type,
            dedup_key=dedup_key,
            body=body,
            state=PENDING,
            next_attempt_time=now,
            create_time=now,
        )
        .on_conflict_ignore()
        .execute()
    )
    # The insert's return value differs by backend when a row is ignored: look instead.
    del inserted
    return Delivery.select().where(Delivery.id == delivery_id).exists()


def get_delivery(delivery_id: str) -> Delivery:
    return Delivery.get_by_id(delivery_id)


def page_deliveries(channel_id: str, page: PageRequest) -> Page[Delivery]:
    query = Delivery.select().where(Delivery.channel == channel_id)
    return keyset_page(query, Delivery.id, page, filters={"c": channel_id}, descending=True)


def fail_pending(channel_id: str, error: str) -> None:
    """Gives up every pending delivery of the channel."""
    Delivery.update(state=FAILED, next_attempt_time=None, last_error=error).where(
        (Delivery.channel == channel_id) & (Delivery.state == PENDING)
    ).execute()


def due_deliveries(now: datetime, batch: int) -> list[Delivery]:
    """Due deliveries with their channel, oldest first, through the due-time index."""
    return list(
        Delivery.select(Delivery, Channel)
        .join(Channel)
        .where(Delivery.next_attempt_time <= now)
        .order_by(Delivery.next_attempt_time)
        .limit(batch)
    )


def claim_delivery(delivery: Delivery, until: datetime) -> bool:
    """Moves the delivery's next attempt to `until` unless a concurrent sender claimed it."""
    won = (
        Delivery.update(next_attempt_time=until)
        .where((Delivery.id == delivery.id) & (Delivery.next_attempt_time == delivery.next_attempt_time))
        .execute()
    )
    return bool(won)


def record_attempt(delivery_id: str, values: dict[str, Any]) -> None:
    """An attempt's outcome, on a delivery still pending."""
    Delivery.update(**values).where((Delivery.id == delivery_id) & (Delivery.state == PENDING)).execute()
