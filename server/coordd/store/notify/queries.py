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


def count_live_channels(owner_id: str) -> int:
    return Channel.select().where((Channel.owner == owner_id) & Channel.delete_time.is_null()).count()


def count_recent_deliveries(owner_id: str, event_type: str, since: datetime) -> int:
    """Deliveries of this type queued to the owner's channels since `since` (test sends)."""
    return (
        Delivery.select()
        .join(Channel)
        .where(
            (Delivery.event_type == event_type) & (Delivery.create_time > since) & (Channel.owner == owner_id)
        )
        .count()
    )


def live_channels_of(owner_ids: set[str]) -> list[Channel]:
    return list(Channel.select().where(Channel.owner.in_(sorted(owner_ids)) & Channel.delete_time.is_null()))


def live_channels_by_ids(channel_ids: set[str]) -> list[Channel]:
    if not channel_ids:
        return []
    return list(Channel.select().where(Channel.id.in_(sorted(channel_ids)) & Channel.delete_time.is_null()))


def channels_with_keys(dedup_keys: list[str]) -> set[str]:
    """The channels that were queued a delivery with any of these keys."""
    rows = Delivery.select(Delivery.channel).where(Delivery.dedup_key.in_(dedup_keys)).distinct()
    return {row.channel_id for row in rows}


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


def due_deliveries(now: datetime, batch: int, skip_channels: frozenset[str] = frozenset()) -> list[Delivery]:
    """Due deliveries with their channel, oldest first, through the due-time index;
    channels whose circuit is open (or listed in `skip_channels`) are left out."""
    query = (
        Delivery.select(Delivery, Channel)
        .join(Channel)
        .where(
            (Delivery.next_attempt_time <= now)
            & (Channel.circuit_open_until.is_null() | (Channel.circuit_open_until <= now))
        )
    )
    if skip_channels:
        query = query.where(Delivery.channel.not_in(sorted(skip_channels)))
    return list(query.order_by(Delivery.next_attempt_time).limit(batch))


def claim_delivery(delivery: Delivery, until: datetime) -> bool:
    """Moves the delivery's next attempt to `until` unless a concurrent sender claimed it."""
    won = (
        Delivery.update(next_attempt_time=until)
        .where((Delivery.id == delivery.id) & (Delivery.next_attempt_time == delivery.next_attempt_time))
        .execute()
    )
    return bool(won)


def record_attempt(delivery_id: str, claimed_until: datetime | None, values: dict[str, Any]) -> bool:
    """An attempt's outcome, on a delivery still pending and still under this sender's claim
    (`claimed_until`; None: unfenced). False when the claim was lost meanwhile."""
    where = (Delivery.id == delivery_id) & (Delivery.state == PENDING)
    if claimed_until is not None:
        where &= Delivery.next_attempt_time == claimed_until
    return bool(Delivery.update(**values).where(where).execute())


def release_claim(delivery_id: str, claimed_until: datetime, now: datetime) -> None:
    """A claimed delivery that was not attempted is due again at once."""
    Delivery.update(next_attempt_time=now).where(
        (Delivery.id == delivery_id)
        & (Delivery.state == PENDING)
        & (Delivery.next_attempt_time == claimed_until)
    ).execute()


def channel_failed(channel_id: str) -> Channel | None:
    """One more consecutive failure on the channel; the channel as it is now."""
    Channel.update(consecutive_failures=Channel.consecutive_failures + 1).where(
        Channel.id == channel_id
    ).execute()
    return Channel.get_or_none(Channel.id == channel_id)


def open_circuit(channel_id: str, until: datetime) -> None:
    Channel.update(circuit_open_until=until, circuit_trips=Channel.circuit_trips + 1).where(
        Channel.id == channel_id
    ).execute()


def close_circuit(channel_id: str) -> None:
    """A success: the breaker closes and its counts start over."""
    Channel.update(consecutive_failures=0, circuit_trips=0, circuit_open_until=None).where(
        (Channel.id == channel_id)
        & ((Channel.consecutive_failures != 0) | Channel.circuit_open_until.is_null(False))
    ).execute()
