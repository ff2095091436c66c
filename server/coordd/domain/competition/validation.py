"""What an organizer may set: field checks on create and update, and the time order."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from coordd.core.errors import Violations
from coordd.domain import ledger
from coordd.domain.competition.views import CompetitionInput
from coordd.store.competition.models import Competition

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
MAX_TAGS = 20
MAX_CAPACITY = 1_000_000
# The largest team (a team registers as one group; settings.max_group_size bounds both).
MAX_TEAM = 20

FIELD_NAMES = {
    "open_time": "registration_open_time",
    "close_time": "registration_close_time",
    "start_time": "start_time",
    "end_time": "end_time",
    "team_deadline": "team_formation_deadline",
}


def validate(
    v: Violations, data: CompetitionInput, now: datetime, fields: Iterable[str] | None = None
) -> None:
    """Checks the fields being set (all on create); time order is checked on the result."""
    check = set(fields) if fields is not None else None

    def wanted(name: str) -> bool:
        return check is None or name in check

    if wanted("title"):
        if not data.title.strip():
            v.add("title", "required")
        elif len(data.title) > 200:
            v.add("title", "at most 200 characters")
    if wanted("description") and len(data.description) > 10_000:
        v.add("description", "at most 10000 characters")
    if wanted("tags"):
        if len(data.tags) > MAX_TAGS:
            v.add("tags", f"at most {MAX_TAGS} tags")
        for index, tag in enumerate(data.tags):
            if not TAG_RE.match(tag):
                v.add(f"tags[{index}]", "lower-case letters, digits, '-' or '_', at most 50 characters")
        if len(set(data.tags)) != len(data.tags):
            v.add("tags", "must not repeat")
    if wanted("capacity") and not 1 <= data.capacity <= MAX_CAPACITY:
        v.add("capacity", f"must be between 1 and {MAX_CAPACITY}")
    for name in ("open_time", "close_time", "start_time", "end_time"):
        if wanted(name) and getattr(data, name) is None:
            v.add(FIELD_NAMES[name], "required")
    if wanted("entry_fee"):
        check_fee(v, data.entry_fee)
    if wanted("prize_split"):
        if any(not isinstance(b, int) or b <= 0 for b in data.prize_split):
            v.add("prize_split_bps", "each share must be a positive number of basis points")
        elif sum(data.prize_split) > 10_000:
            v.add("prize_split_bps", "the shares add up to more than 10000 basis points (100 %)")
        if len(data.prize_split) > 100:
            v.add("prize_split_bps", "at most 100 places")
    if wanted("offer_hold_s") and data.offer_hold_s is not None and not 60 <= data.offer_hold_s <= 30 * 86400:
        v.add("offer_hold_duration", "between 1 minute and 30 days")
    if (
        wanted("reminder_lead_s")
        and data.reminder_lead_s is not None
        and not 0 <= data.reminder_lead_s <= 365 * 86400
    ):
        v.add("reminder_lead", "between 0 and 365 days")


def check_fee(v: Violations, fee: int) -> None:
    if not isinstance(fee, int) or isinstance(fee, bool) or fee < 0:
        v.add("entry_fee", "must not be negative")
    elif fee > ledger.MAX_AMOUNT:
        v.add("entry_fee", f"at most {ledger.MAX_AMOUNT}")


def check_times(v: Violations, comp: Competition) -> None:
    if comp.open_time >= comp.close_time:
        v.add("registration_close_time", "must be after registration_open_time")
    if comp.close_time > comp.start_time:
        v.add("start_time", "must not be before registration_close_time")
    if comp.start_time >= comp.end_time:
        v.add("end_time", "must be after start_time")
    if (comp.team_min, comp.team_max) != (0, 0) and not 2 <= comp.team_min <= comp.team_max <= MAX_TEAM:
        v.add(
            "team_min_size", f"teams: 2 <= team_min_size <= team_max_size <= {MAX_TEAM} (0 and 0: no teams)"
        )
    if comp.team_deadline is not None:
        if comp.team_max == 0:
            v.add("team_formation_deadline", "only for a competition with teams (team_max_size)")
        elif not comp.open_time < comp.team_deadline <= comp.close_time:
            v.add(
                "team_formation_deadline",
                "must be after registration_open_time and not after registration_close_time",
            )
