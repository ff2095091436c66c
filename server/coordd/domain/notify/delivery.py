"""Sending the outbox: claims (fair across channels and owners), the send itself (no
database: it runs in the notification pool), the recorded outcome and the circuit breaker.

A delivery is claimed by moving its due time `CLAIM_S` ahead; the outcome is recorded only
under that same claim (a fence), so a sender that lost its claim (a leader that stepped
down, a process that hung) never overwrites the work of the one that took over. A sender
that dies after POSTing but before recording leads to one more attempt with the same
delivery id once the claim expires: receivers deduplicate with the delivery id header.

The circuit breaker: after `CIRCUIT_FAILURES` failed attempts in a row a channel is OPEN
for a cool-down (doubling per consecutive opening, capped): nothing is attempted, so no
attempt is used up; then HALF_OPEN: one delivery at a time probes it; a success closes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from coordd.notify import Outcome, send_to
from coordd.runtime import Runtime
from coordd.store.notify import queries
from coordd.store.notify.models import DELIVERED, FAILED, Channel, Delivery

log = structlog.get_logger("coordd.notify")

MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0
# A claimed delivery is not picked again for this long (a crashed sender's claim expires).
CLAIM_S = 60.0
# Defaults of the settings (config.py notify_*): concurrency of the notification pool
# (scheduler/notify.py) overall, per channel, per owner; the circuit breaker.
MAX_IN_FLIGHT = 16
PER_CHANNEL_IN_FLIGHT = 2
PER_OWNER_IN_FLIGHT = 4
CIRCUIT_FAILURES = 5
CIRCUIT_OPEN_S = 30.0
CIRCUIT_OPEN_MAX_S = 300.0

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


def backoff_s(attempts: int) -> float:
    """2 s, 4 s, 8 s, ... capped: a receiver that is down is not hammered."""
    return min(BACKOFF_BASE_S * 2 ** max(attempts - 1, 0), BACKOFF_MAX_S)


def secret_context(channel_id: str) -> str:
    """What a channel's sealed secret is bound to."""
    return f"notify_channels/{channel_id}/secret"


def circuit_state(channel: Channel, now: datetime, failures: int = CIRCUIT_FAILURES) -> str:
    if channel.circuit_open_until is not None and channel.circuit_open_until > now:
        return OPEN
    if channel.consecutive_failures >= failures:
        return HALF_OPEN
    return CLOSED


def cool_down_s(trips: int, base_s: float = CIRCUIT_OPEN_S, max_s: float = CIRCUIT_OPEN_MAX_S) -> float:
    """How long the circuit stays open after its `trips`-th opening in a row (from 0)."""
    return min(base_s * 2 ** max(trips, 0), max_s)


@dataclass(frozen=True)
class Claim:
    delivery: Delivery
    channel: Channel
    until: datetime


def claim_due(
    rt: Runtime,
    capacity: int,
    busy_channels: dict[str, int] | None = None,
    busy_owners: dict[str, int] | None = None,
    *,
    limited: bool = True,
) -> list[Claim]:
    """Claims up to `capacity` due deliveries, oldest first, but at most
    `notify_per_channel_in_flight` per channel (one while its circuit is half-open) and
    `notify_per_owner_in_flight` per owner, counting what is in flight already (`busy_*`): a flood
    or a hung receiver of one owner leaves room for everyone else."""
    settings = rt.settings
    per_channel, per_owner = settings.notify_per_channel_in_flight, settings.notify_per_owner_in_flight
    channels = dict(busy_channels or {})
    owners = dict(busy_owners or {})
    full: set[str] = {c for c, n in channels.items() if limited and n >= per_channel}
    claims: list[Claim] = []
    with rt.store.write() as tx:
        for _ in range(4):  # each round skips the channels found full in the previous one
            want = capacity - len(claims)
            if want <= 0:
                break
            rows = queries.due_deliveries(tx.now, max(want * 2, 20), frozenset(full))
            for delivery in rows:
                if len(claims) >= capacity:
                    break
                channel = delivery.channel
                probing = circuit_state(channel, tx.now, settings.notify_circuit_failures) == HALF_OPEN
                busy = channels.get(channel.id, 0)
                if (probing and busy >= 1) or (
                    limited and (busy >= per_channel or owners.get(channel.owner_id, 0) >= per_owner)
                ):
                    full.add(channel.id)
                    continue
                until = tx.now + timedelta(seconds=CLAIM_S)
                # Conditional: a concurrent sender that claimed it first wins.
                if queries.claim_delivery(delivery, until):
                    claims.append(Claim(delivery, channel, until))
                    channels[channel.id] = channels.get(channel.id, 0) + 1
                    owners[channel.owner_id] = owners.get(channel.owner_id, 0) + 1
            if len(rows) < max(want * 2, 20):
                break
    return claims


def send(rt: Runtime, claim: Claim) -> Outcome:
    """The attempt itself (blocking network I/O, no database): in the notification pool."""
    channel, delivery = claim.channel, claim.delivery
    if channel.delete_time is not None:
        return Outcome(False, 0, "channel deleted")
    return send_to(
        channel.kind,
        channel.url,
        rt.sealer.open(channel.secret, secret_context(channel.id)),
        delivery.body,
        delivery.event_type,
        delivery.id,
        rt.settings.webhook_allow_private_networks,
    )


def record(rt: Runtime, claim: Claim, outcome: Outcome) -> bool:
    """Stores the attempt's outcome under the claim, and moves the channel's breaker.
    False when the claim was lost (someone else owns the delivery now)."""
    delivery = claim.delivery
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
                "notification delivery gave up", delivery=delivery.id, attempts=attempts, error=outcome.error
            )
        else:
            values["next_attempt_time"] = tx.now + timedelta(seconds=backoff_s(attempts))
        if not queries.record_attempt(delivery.id, claim.until, values):
            log.warning("delivery claim lost before its outcome was recorded", delivery=delivery.id)
            return False
        _move_breaker(rt, tx.now, claim.channel.id, outcome.ok)
        tx.emit(
            "notify.delivery.attempted",
            f"deliveries/{delivery.id}",
            {"ok": outcome.ok, "status_code": outcome.status_code, "attempts": attempts},
        )
    return True


def _move_breaker(rt: Runtime, now: datetime, channel_id: str, ok: bool) -> None:
    if ok:
        queries.close_circuit(channel_id)
        return
    settings = rt.settings
    channel = queries.channel_failed(channel_id)
    if channel is None or channel.consecutive_failures < settings.notify_circuit_failures:
        return
    if channel.circuit_open_until is not None and channel.circuit_open_until > now:
        return  # opened already by a concurrent attempt
    pause = cool_down_s(
        channel.circuit_trips, settings.notify_circuit_open_s, settings.notify_circuit_open_max_s
    )
    queries.open_circuit(channel_id, now + timedelta(seconds=pause))
    log.warning(
        "notification channel circuit opened",
        channel=channel_id,
        failures=channel.consecutive_failures,
        pause_s=pause,
    )


def release(rt: Runtime, claims: list[Claim]) -> None:
    """Claims that were not attempted are due again at once (a clean stop loses nothing)."""
    if not claims:
        return
    with rt.store.write() as tx:
        for claim in claims:
            queries.release_claim(claim.delivery.id, claim.until, tx.now)


def deliver_due(rt: Runtime, batch: int = 50) -> int:
    """One pass in the caller's thread, one delivery after another (tools and tests; the
    daemon's scheduler sends concurrently, scheduler/notify.py). Returns how many were
    attempted."""
    claims = claim_due(rt, batch, limited=False)
    for claim in claims:
        record(rt, claim, send(rt, claim))
    return len(claims)
