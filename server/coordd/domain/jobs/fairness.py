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
`JobPolicy.priority_aging_s` (default 300 s) up to 9, so low priorities never starve."""

from __future__ import annotations

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


def age_priorities(rt: Runtime) -> int:
    """The scheduler's part: queued jobs that waited gain priority (see module doc)."""
    policy = policy_of(rt)
    if policy.priority_aging_s <= 0:
        return 0
    with rt.store.write() as tx:
        return fair.age_priorities(tx.now, int(policy.priority_aging_s * 1_000_000), MAX_PRIORITY)
