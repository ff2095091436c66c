"""Column types every store module uses (no database here, so store/db.py can import them).

Times are stored as integer microseconds since the epoch (TimestampField): the same
on SQLite and PostgreSQL, indexable, and always returned as aware UTC datetimes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import peewee

from coordd.core.clock import micros_of


class TimestampField(peewee.BigIntegerField):
    def db_value(self, value: datetime | None) -> int | None:
        if value is None:
            return None
        if isinstance(value, int):
            return value
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: use an aware UTC datetime")
        return micros_of(value)

    def python_value(self, value: int | None) -> datetime | None:
        if value is None:
            return None
        seconds, micros = divmod(int(value), 1_000_000)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


class JSONField(peewee.TextField):
    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)
