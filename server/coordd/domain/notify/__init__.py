"""Notifications: owner-scoped channels (channels.py: webhook, Slack, SMTP), the
transactional outbox (outbox.py) and its sending (delivery.py: fair claims, outcomes,
retries with backoff, a circuit breaker per channel), used by node alerts and competition
notices alike.

Any domain queues a notification with `enqueue(tx, owner_ids, event_type, dedup_key, data)`
inside the transaction that makes the change (`owners_with_channels` first, when most
recipients have no channel); the `notify-deliver` scheduler task (scheduler/notify.py)
sends concurrently in its own bounded pool through the adapters (notify/).
"""

from coordd.domain.notify.channels import (
    MAX_CHANNELS_PER_OWNER,
    MAX_TESTS_PER_MINUTE,
    create_channel,
    delete_channel,
    get_channel,
    list_channels,
    list_deliveries,
    test_channel,
)
from coordd.domain.notify.delivery import (
    CIRCUIT_FAILURES,
    CLOSED,
    HALF_OPEN,
    MAX_IN_FLIGHT,
    OPEN,
    Claim,
    circuit_state,
    claim_due,
    record,
    release,
    send,
)
from coordd.domain.notify.outbox import (
    BACKOFF_MAX_S,
    MAX_ATTEMPTS,
    TEST_EVENT,
    backoff_s,
    channels_told,
    deliver_due,
    enqueue,
    enqueue_to_channels,
    owned_live_channel,
    owners_with_channels,
)
from coordd.store.notify.models import DELIVERED, FAILED, KINDS, PENDING, Channel, Delivery

__all__ = [
    "BACKOFF_MAX_S",
    "CIRCUIT_FAILURES",
    "CLOSED",
    "DELIVERED",
    "FAILED",
    "HALF_OPEN",
    "KINDS",
    "MAX_ATTEMPTS",
    "MAX_CHANNELS_PER_OWNER",
    "MAX_IN_FLIGHT",
    "MAX_TESTS_PER_MINUTE",
    "OPEN",
    "PENDING",
    "TEST_EVENT",
    "Channel",
    "Claim",
    "Delivery",
    "backoff_s",
    "channels_told",
    "circuit_state",
    "claim_due",
    "create_channel",
    "delete_channel",
    "deliver_due",
    "enqueue",
    "enqueue_to_channels",
    "get_channel",
    "list_channels",
    "list_deliveries",
    "owned_live_channel",
    "owners_with_channels",
    "record",
    "release",
    "send",
    "test_channel",
]
