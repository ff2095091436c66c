"""The wall clock. Tests pass their own clock callable wherever a `clock` parameter is taken."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros_of(value: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (how times are stored,
    store/fields.py, and how the worker stream carries them)."""
    delta = value - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
