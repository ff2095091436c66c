"""The ceremony, participant and contribution states (stored as text), and which of them
hold a circuit's turn. The api uses these names; it never imports the store."""

from __future__ import annotations

from coordd.store.ceremony.models import (
    CLOSED,
    CONTRIBUTED,
    CONTRIBUTING,
    CREATED,
    DONE,
    FINALIZED,
    FINALIZING,
    INVALID,
    OPENED,
    PAUSED,
    READY,
    SCHEDULED,
    TIMEDOUT,
    VALID,
    VERIFYING,
    WAITING,
)

__all__ = [
    "CLOSED",
    "CONTRIBUTED",
    "CONTRIBUTING",
    "CREATED",
    "DONE",
    "FINALIZED",
    "FINALIZING",
    "HOLDING",
    "INVALID",
    "OPENED",
    "PAUSED",
    "READY",
    "SCHEDULED",
    "STEPS",
    "TIMEDOUT",
    "VALID",
    "VERIFYING",
    "WAITING",
]

# The current contributor's steps, in the only order they may be reported.
STEPS = ("", "DOWNLOADING", "COMPUTING", "UPLOADING", "VERIFYING")
# Statuses that hold a circuit's turn.
HOLDING = (READY, CONTRIBUTING, CONTRIBUTED, FINALIZING)
