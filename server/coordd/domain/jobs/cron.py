"""Five-field cron expressions (minute hour day-of-month month day-of-week) in a time zone:
`*`, numbers, ranges `a-b`, lists `a,b`, steps `*/n` and `a-b/n`; day-of-week 0-7 (0 and 7
are Sunday). As in Vixie cron, when both day fields are restricted a day matches either.
Times are evaluated on the zone's wall clock: a wall time skipped by a DST change does not
fire; a repeated one fires once (its first occurrence)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


class CronError(ValueError):
    pass


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday .. 6 = Sunday (Python's weekday())
    any_day: bool
    any_weekday: bool
    zone: ZoneInfo

    def _day_matches(self, d: datetime) -> bool:
        dom, dow = d.day in self.days, d.weekday() in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return dow
        if self.any_weekday:
            return dom
        return dom or dow

    def next_after(self, after: datetime) -> datetime:
        """The first matching time strictly after `after` (aware), as aware UTC."""
        local = after.astimezone(self.zone).replace(second=0, microsecond=0, tzinfo=None) + timedelta(
            minutes=1
        )
        horizon = local.year + 5  # every valid expression matches within 5 years (Feb 29: 4)
        while local.year <= horizon:  # a day or an hour at a time where they do not match
            if local.month not in self.months:
                local = (local.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
                continue
            if not self._day_matches(local):
                local = local.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if local.hour not in self.hours:
                local = local.replace(minute=0) + timedelta(hours=1)
                continue
            if local.minute not in self.minutes:
                local += timedelta(minutes=1)
                continue
            aware = local.replace(tzinfo=self.zone)
            # Skipped wall time (spring forward): it does not exist; round trips change it.
            if aware.astimezone(UTC).astimezone(self.zone).replace(tzinfo=None) != local:
                local += timedelta(minutes=1)
                continue
            result = aware.astimezone(UTC)
            if result > after:
                return result
            local += timedelta(minutes=1)
        raise CronError("the expression never matches")


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                start, end = low, high
            elif "-" in base:
                a, b = base.split("-", 1)
                start, end = int(a), int(b)
            else:
                start = end = int(base)
                if step_text:
                    end = high
        except ValueError as exc:
            raise CronError(f"{name}: {part!r} is not a number, range or step") from exc
        if step < 1 or not low <= start <= end <= high:
            raise CronError(f"{name}: {part!r} outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse(expression: str, time_zone: str = "UTC") -> Cron:
    parts = expression.split()
    if len(parts) != 5:
        raise CronError("five fields: minute hour day-of-month month day-of-week")
    try:
        zone = ZoneInfo(time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {time_zone!r}") from exc
    minutes, hours, days, months, dows = (
        _field(p, name, low, high) for p, (name, low, high) in zip(parts, _FIELDS, strict=True)
    )
    weekdays = frozenset((d - 1) % 7 for d in dows)  # cron 0/7 = Sunday -> 6, 1 = Monday -> 0
    cron = Cron(minutes, hours, days, months, weekdays, parts[2] == "*", parts[4] == "*", zone)
    cron.next_after(datetime(2000, 1, 1, tzinfo=UTC))  # never-matching (e.g. 31 2 *) is an error
    return cron
