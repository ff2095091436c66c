"""Competition knobs, kept on the runtime."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from coordd.runtime import Runtime


@dataclass(frozen=True)
class CompetitionSettings:
    """Competition knobs. Defaults serve production; a test or an operator replaces them
    with `configure(rt, ...)` (they are not in config.py, which the platform owns)."""

    default_offer_hold_s: int = 12 * 3600
    default_reminder_lead_s: int = 24 * 3600
    max_entry_bytes: int = 1024 * 1024
    # Scheduler errors on one competition before it goes to FAILED.
    max_errors: int = 5
    # A competition whose advance failed is retried after this long.
    error_retry_s: float = 30.0
    # Immediate transitions made in one tick for one competition.
    max_chain: int = 10
    # Competitions (or offers, reminders) handled per scheduler tick.
    batch: int = 100
    # Members of one group registration (a team registers as a group too).
    max_group_size: int = 20
    # Check-in opens this long before start_time (and closes at end_time).
    checkin_open_s: int = 24 * 3600


DEFAULT_SETTINGS = CompetitionSettings()


def settings_of(rt: Runtime) -> CompetitionSettings:
    return getattr(rt, "competition_settings", None) or DEFAULT_SETTINGS


def configure(rt: Runtime, **changes: Any) -> CompetitionSettings:
    """Replaces some competition settings on this runtime (tests, embedding)."""
    new = replace(settings_of(rt), **changes)
    rt.competition_settings = new  # type: ignore[attr-defined]
    return new
