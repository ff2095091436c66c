"""Turn timeout arithmetic for both policies, with explicit units (no server)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from google.protobuf import duration_pb2

from coordd.api.ceremony_convert import seconds as _seconds
from coordd.domain.ceremony.timeouts import (
    DYNAMIC,
    FIXED,
    TimeoutRule,
    average,
    estimated_wait,
    turn_timeout,
)


def test_fixed_is_the_configured_length_whatever_the_average():
    rule = TimeoutRule(FIXED, fixed=timedelta(minutes=5))
    assert turn_timeout(rule, None) == timedelta(seconds=300)
    assert turn_timeout(rule, timedelta(hours=2)) == timedelta(seconds=300)


def test_dynamic_is_average_times_one_plus_threshold_percent():
    rule = TimeoutRule(DYNAMIC, threshold_percent=50, floor=timedelta(seconds=10))
    assert turn_timeout(rule, timedelta(seconds=90)) == timedelta(seconds=135)
    # Percent, not a fraction: 100 % doubles.
    doubled = TimeoutRule(DYNAMIC, threshold_percent=100, floor=timedelta(seconds=1))
    assert turn_timeout(doubled, timedelta(milliseconds=1500)) == timedelta(seconds=3)
    zero = TimeoutRule(DYNAMIC, threshold_percent=0, floor=timedelta(seconds=1))
    assert turn_timeout(zero, timedelta(seconds=42)) == timedelta(seconds=42)


def test_dynamic_floor_applies_below_it_and_to_the_first_contributor():
    rule = TimeoutRule(DYNAMIC, threshold_percent=20, floor=timedelta(minutes=2))
    assert turn_timeout(rule, None) == timedelta(minutes=2), "no average yet: the floor is the turn"
    assert turn_timeout(rule, timedelta(seconds=10)) == timedelta(minutes=2)
    assert turn_timeout(rule, timedelta(minutes=10)) == timedelta(minutes=12)


def test_dynamic_keeps_microsecond_precision():
    rule = TimeoutRule(DYNAMIC, threshold_percent=10, floor=timedelta(0))
    assert turn_timeout(rule, timedelta(microseconds=1_000_001)) == timedelta(microseconds=1_100_001)


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError):
        turn_timeout(TimeoutRule("SOMETIMES"), None)


def test_average_from_total_seconds_and_count():
    assert average(0.0, 0) is None
    assert average(90.0, 3) == timedelta(seconds=30)


def test_estimated_wait_rest_of_turn_plus_full_turns():
    per_turn = timedelta(seconds=60)
    assert estimated_wait(2, None, None) is None
    assert estimated_wait(0, per_turn, timedelta(seconds=20)) == timedelta(seconds=40)
    assert estimated_wait(2, per_turn, timedelta(seconds=20)) == timedelta(seconds=160)
    # An overrunning turn counts as nearly over, never negative.
    assert estimated_wait(1, per_turn, timedelta(seconds=90)) == timedelta(seconds=60)
    # Nobody holds the turn: only full turns for those ahead.
    assert estimated_wait(1, per_turn, None) == timedelta(seconds=60)


def test_wire_durations_become_seconds():
    assert _seconds(duration_pb2.Duration(seconds=1, nanos=500_000_000)) == 1.5
    assert _seconds(duration_pb2.Duration(nanos=1000)) == pytest.approx(1e-6)
    assert _seconds(duration_pb2.Duration()) == 0.0
