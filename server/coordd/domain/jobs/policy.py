"""The deployment's knobs (fee, retries, backoff, retention) and the arithmetic they drive."""

from __future__ import annotations

import math
import random
import weakref
from dataclasses import dataclass

from coordd.runtime import Runtime


@dataclass(frozen=True)
class JobPolicy:
    """Deployment knobs of the job domain."""

    # Platform fee taken from each payment, in basis points (500 = 5%).
    fee_bps: int = 500
    default_max_attempts: int = 3
    default_heartbeat_ms: int = 60_000
    # Retry delay: min(max, base * 2**(attempt-1)), then "equal jitter" (half fixed, half random).
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    # Inline input/output data of finished jobs is deleted after this long.
    payload_retention_s: float = 7 * 24 * 3600
    # A queued job gains one priority level per this long waited (0: no aging).
    priority_aging_s: float = 300.0
    # How many times one job may be snoozed (SnoozeJob beyond it: FAILED_PRECONDITION).
    max_snoozes: int = 100
    # Rows handled per scheduler transaction.
    task_batch: int = 200


DEFAULT_POLICY = JobPolicy()
_policies: weakref.WeakKeyDictionary[Runtime, JobPolicy] = weakref.WeakKeyDictionary()


def set_policy(rt: Runtime, policy: JobPolicy) -> None:
    _policies[rt] = policy


def policy_of(rt: Runtime) -> JobPolicy:
    return _policies.get(rt, DEFAULT_POLICY)


def platform_fee(budget: int, policy: JobPolicy) -> int:
    """The platform's share of a payment, rounded down: a budget of 1 at 5% pays no fee."""
    return budget * policy.fee_bps // 10_000


def backoff_s(attempt: int, policy: JobPolicy, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: half the delay fixed, half random."""
    delay = min(policy.backoff_max_s, policy.backoff_base_s * math.pow(2, max(attempt - 1, 0)))
    return delay / 2 + (rng or random).uniform(0, delay / 2)
