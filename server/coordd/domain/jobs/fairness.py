"""Fair share across submitters (start-time fair queuing). Within a priority, claims take
jobs in order of `fair_seq`, a virtual time: a submitter's next job gets one more than the
larger of the latest value among their queued jobs and the value at the head of the queue
at that priority (0 when nothing is queued there: values are relative to the queue as it
stands). A submitter who queues 10,000 jobs thus gets 10,000 consecutive values from where
the queue stands; one who arrives later with 10 jobs gets the 10 values just after the
current head, so their jobs alternate with the big backlog instead of waiting behind it.

Bound: with S submitters queuing at one priority, a submitter's k-th job starts after at
most k jobs of each other submitter (k * S jobs in all), whatever their backlogs. Values are
read without locks: one submitter's concurrent submissions may share a value (ties go to
the older job), so the bound holds per submission call (a batch gets consecutive values).

Aging (`age_priorities`) raises a waiting job's priority one level per
`JobPolicy.priority_aging_s` (default 300 s) up to 9, so low priorities never starve. Its
cost follows what changes, not the queue: a level is gained when a job's wait crosses k
periods, so each run reads (index `job_queued_since`) only the jobs queued in the windows
whose wait crossed a boundary since the previous run: at most MAX_PRIORITY updates per job
over its whole wait, none for a job at 9 or one queued less than a period ago."""

from __future__ import annotations

import weakref

from coordd.domain.jobs.policy import policy_of
from coordd.domain.jobs.states import MAX_PRIORITY
from coordd.runtime import Runtime
from coordd.store.jobs import fair
from coordd.store.jobs.models import Job


def assign(submitter_id: str, jobs: list[Job]) -> None:
    """Gives new (or released) jobs of one submitter their fair_seq values, in order."""
    if not jobs:
        return
    start = fair.floor_for(submitter_id, sorted({j.priority for j in jobs}))
    for i, job in enumerate(jobs, start=1):
        job.fair_seq = start + i


def aging_windows(previous_us: int | None, now_us: int, aging_us: int) -> list[tuple[int | None, int]]:
    """The queue times (integer microseconds, (after, up to]) whose age crossed a level
    boundary (k * aging, k = 1..MAX_PRIORITY) between `previous_us` and `now_us`: for each k,
    (previous - k * aging, now - k * aging]. Overlapping ranges are merged; an age beyond
    MAX_PRIORITY levels changes nothing. Without a previous run: every job queued at least
    one period ago (one pass after a start or a leader change)."""
    if previous_us is None:
        return [(None, now_us - aging_us)]
    if now_us <= previous_us:
        return []
    spans = sorted((previous_us - k * aging_us, now_us - k * aging_us) for k in range(1, MAX_PRIORITY + 1))
    merged: list[list[int]] = []
    for after, up_to in spans:
        if merged and after <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], up_to)
        else:
            merged.append([after, up_to])
    return [(a, b) for a, b in merged]


# The queue-time horizon of each runtime's previous aging run (integer microseconds).
_aged_up_to: weakref.WeakKeyDictionary[Runtime, int] = weakref.WeakKeyDictionary()


def age_priorities(rt: Runtime) -> int:
    """The scheduler's part: queued jobs that waited gain priority (see module doc). Reads
    only the jobs whose wait crossed a level boundary since this runtime's previous run."""
    policy = policy_of(rt)
    if policy.priority_aging_s <= 0:
        return 0
    aging_us = int(policy.priority_aging_s * 1_000_000)
    with rt.store.write() as tx:
        now_us = fair.to_us(tx.now)
        windows = aging_windows(_aged_up_to.get(rt), now_us, aging_us)
        changed = fair.age_priorities(tx.now, aging_us, MAX_PRIORITY, windows)
    _aged_up_to[rt] = now_us
    return changed
