"""What the competition rules take in (`CompetitionInput`) and hand out (the views)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from coordd.store.competition.models import (
    Competition,
    CompetitionEntry,
    CompetitionResult,
    CompetitionTransition,
    Registration,
)

# A submitted entry, as stored (submit_entry returns it).
Entry = CompetitionEntry


@dataclass(frozen=True)
class CompetitionView:
    competition: Competition
    transitions: list[CompetitionTransition]


@dataclass(frozen=True)
class RegistrationView:
    registration: Registration
    # 1-based place on the waitlist while WAITLISTED, else 0.
    position: int
    created: bool = False


@dataclass(frozen=True)
class SignedResults:
    payload: bytes
    signature: bytes
    key_id: str
    public_key: bytes


@dataclass(frozen=True)
class LeaderboardRow:
    result: CompetitionResult
    display_name: str


@dataclass
class CompetitionInput:
    """What an organizer sets; the API fills it from the proto, the domain validates it."""

    title: str = ""
    description: str = ""
    tags: list[str] = field(default_factory=list)
    capacity: int = 0
    open_time: datetime | None = None
    close_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    entry_fee: int = 0
    prize_split: list[int] = field(default_factory=list)
    offer_hold_s: int | None = None
    reminder_lead_s: int | None = None
    # Teams: 0/0 for none; team_deadline None means registration_close_time.
    team_min: int = 0
    team_max: int = 0
    team_deadline: datetime | None = None
