"""Notifications: owner-scoped webhook channels (channels.py) and the transactional outbox
(outbox.py), used by node alerts and competition notices alike.

Any domain queues a notification with `enqueue(tx, owner_ids, event_type, dedup_key, data)`
inside the transaction that makes the change (`owners_with_channels` first, when most
recipients have no channel); the `notify-deliver` scheduler task (scheduler/notify.py) signs
and POSTs it with retries through the webhook adapter (notify/webhook.py).
"""

from coordd.domain.notify.channels import (
    create_channel,
    delete_channel,
    get_channel,
    list_channels,
    list_deliveries,
    test_channel,
)
from coordd.domain.notify.outbox import (
    BACKOFF_MAX_S,
    MAX_ATTEMPTS,
    TEST_EVENT,
    backoff_s,
    deliver_due,
    enqueue,
    owners_with_channels,
)
from coordd.store.notify.models import DELIVERED, FAILED, PENDING, Channel, Delivery

__all__ = [
    "BACKOFF_MAX_S",
    "DELIVERED",
    "FAILED",
    "MAX_ATTEMPTS",
    "PENDING",
    "TEST_EVENT",
    "Channel",
    "Delivery",
    "backoff_s",
    "create_channel",
    "delete_channel",
    "deliver_due",
    "enqueue",
    "get_channel",
    "list_channels",
    "list_deliveries",
    "owners_with_channels",
    "test_channel",
]
