"""The states a competition and a registration go through, and the notification kinds.

The values are the store's (what the state columns hold); the groups below are rules."""

from __future__ import annotations

from coordd.store.competition.models import (
    CANCELLATION,
    CANCELLED,
    CONFIRMATION,
    CONFIRMED,
    DRAFT,
    ENDED,
    FAILED,
    OFFER,
    OFFER_EXPIRED,
    OFFERED,
    OPEN,
    REG_CANCELLED,
    REGISTRATION_CLOSED,
    REGISTRATION_STATES,
    REMINDER,
    RESULTS,
    RESULTS_PUBLISHED,
    RUNNING,
    SETTLED,
    STATES,
    WAITLISTED,
)

__all__ = [
    "ACTIVE",
    "CANCELLATION",
    "CANCELLED",
    "CONFIRMATION",
    "CONFIRMED",
    "DRAFT",
    "ENDED",
    "FAILED",
    "OFFER",
    "OFFERED",
    "OFFER_EXPIRED",
    "OPEN",
    "REGISTRATION_CLOSED",
    "REGISTRATION_STATES",
    "REG_CANCELLED",
    "REMINDER",
    "RESULTS",
    "RESULTS_PUBLISHED",
    "RUNNING",
    "SEATING",
    "SETTLED",
    "STATES",
    "TERMINAL",
    "WAITLISTED",
]

TERMINAL = frozenset({SETTLED, CANCELLED, FAILED})
# Seats still change hands (cancellations, promotions) until the competition starts.
SEATING = frozenset({DRAFT, OPEN, REGISTRATION_CLOSED})
# Registrations that hold (or wait for) a seat.
ACTIVE = frozenset({CONFIRMED, WAITLISTED, OFFERED})
