"""The wall clock. Tests pass their own clock callable wherever a `clock` parameter is taken."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
