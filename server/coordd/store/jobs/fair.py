"""The statements of fair share: where new jobs' virtual times start (one round trip, two
index lookups, no lock, so one submitter's concurrent submissions do not queue behind each
other), and the aging of waiting jobs' priorities (index `job_queued_since`, migration 210)."""

from __future__ import annotations

from datetime import datetime

import peewee

from coordd.store.jobs.models import Job
from coordd.store.models import TimestampField

_to_us = TimestampField().db_value
# A datetime as the integer microseconds the job table stores.
to_us = _to_us


def _db() -> peewee.Database:
    return Job._meta.database  # the store's database, inside the caller's transaction


def age_priorities(
    now: datetime, aging_us: int, max_priority: int, windows: list[tuple[int | None, int]]
) -> int:
    """Queued jobs gain a priority level per `aging_us` waited since they were queued (from
    their submitted priority, at most `max_priority`); how many changed. Only the jobs whose
    queue time (integer microseconds) lies in one of `windows` ((after, up to]; after None:
    unbounded) are read, through `job_queued_since`: the caller passes the queue times whose
    age crossed a level boundary since its previous run, so the work is the rows that change."""
    if not windows:
        return 0
    p = _db().param
    aged = f"(base_priority + ({p} - queue_time) / {p})"
    ranges: list[str] = []
    range_params: list[object] = []
    for after, up_to in windows:
        if after is None:
            ranges.append(f"queue_time <= {p}")
            range_params.append(up_to)
        else:
            ranges.append(f"(queue_time > {p} AND queue_time <= {p})")
            range_params.extend((after, up_to))
    now_us = _to_us(now)
    cursor = _db().execute_sql(
        f"UPDATE job SET priority = CASE WHEN {aged} > {p} THEN {p} ELSE {aged} END"
        f" WHERE state = 'queued' AND ({' OR '.join(ranges)}) AND priority < {p} AND priority < {aged}",
        [
            *(now_us, aging_us, max_priority, max_priority, now_us, aging_us),
            *range_params,
            max_priority,
            now_us,
            aging_us,
        ],
    )
    return cursor.rowcount


def _floor_parts(submitter: str, priorities: list[int]) -> tuple[list[str], list[object]]:
    p = _db().param
    heads = [
        f"(SELECT fair_seq FROM job WHERE state = 'queued' AND priority = {p} ORDER BY fair_seq, id LIMIT 1)"
        for _ in priorities
    ]
    tail = (
        f"(SELECT fair_seq FROM job WHERE state = 'queued' AND submitter = {p}"
        " ORDER BY submitter DESC, fair_seq DESC LIMIT 1)"
    )
    return [*heads, tail], [*priorities, submitter]


def floor_for(submitter: str, priorities: list[int]) -> int:
    """max(the fair_seq at the head of the queue at each of `priorities`, the largest among
    the submitter's queued jobs) in one round trip; 0 when nothing is queued. Two index
    lookups: `job_claim_fair` for the heads, `job_queued_submitter` for the submitter (ordered
    like the index, not MAX: the planner then walks it even before the table's first ANALYZE,
    when it would otherwise scan job_claim_fair and filter by submitter). No lock: concurrent
    submissions of one submitter may share a value; ties go to the older job."""
    parts, params = _floor_parts(submitter, priorities)
    row = _db().execute_sql(f"SELECT {', '.join(parts)}", params).fetchone()
    return max((int(v) for v in row if v is not None), default=0)


def floor_sql(submitter: str, priority: int) -> tuple[str, list[object]]:
    """`floor_for(submitter, [priority])` as an SQL expression, for a submission's INSERT to
    compute the value itself (one round trip fewer): the same two index lookups."""
    parts, params = _floor_parts(submitter, [priority])
    greatest = "GREATEST" if not isinstance(getattr(_db(), "obj", _db()), peewee.SqliteDatabase) else "MAX"
    return f"{greatest}({', '.join(f'COALESCE({x}, 0)' for x in parts)})", params
