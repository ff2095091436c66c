"""Turn length arithmetic, kept pure so both policies are unit-tested with exact units.

FIXED: every turn lasts `fixed`. DYNAMIC: the circuit's average contribution time times
(1 + threshold percent / 100), never shorter than `floor`; without an average yet (the
first contributor) the floor is the turn, so every turn has a deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

FIXED = "FIXED"
DYNAMIC = "DYNAMIC"


@dataclass(frozen=True)
class TimeoutRule:
    policy: str
    fixed: timedelta = timedelta()
    threshold_percent: int = 0
    floor: timedelta = timedelta()


def average(total_s: float, count: int) -> timedelta | None:
    """The running average of `count` samples summing to `total_s` seconds; None without samples."""
    if count <= 0:
        return None
    return timedelta(seconds=total_s / count)


def turn_timeout(rule: TimeoutRule, average_contribution: timedelta | None) -> timedelta:
    if rule.policy == FIXED:
        return rule.fixed
    if rule.policy != DYNAMIC:
        raise ValueError(f"unknown timeout policy {rule.policy!r}")
    if average_contribution is None:
        return rule.floor
    # Integer microseconds, so 1.5 x 1 µs rounds the same way everywhere.
    scaled = timedelta(
        microseconds=round(
            average_contribution / timedelta(microseconds=1) * (100 + rule.threshold_percent) / 100
        )
    )
    return max(rule.floor, scaled)


def estimated_wait(
    ahead: int, per_turn: timedelta | None, current_elapsed: timedelta | None
) -> timedelta | None:
    """Wait for someone with `ahead` people before them (the current contributor excluded):
    the rest of the current turn plus one full turn each. None without statistics."""
    if per_turn is None:
        return None
    rest = per_turn - current_elapsed if current_elapsed is not None else timedelta()
    return max(rest, timedelta()) + per_turn * ahead
