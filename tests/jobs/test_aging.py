"""Aging reads only what changes: each run updates the queued jobs whose wait crossed a
priority-level boundary since the previous run (through the queue-time index), not the
whole queue, and a job gains one level per period waited whoever runs the task how often."""

from __future__ import annotations

from coordd.domain import jobs
from coordd.domain.jobs.fairness import aging_windows
from tests.jobs.rows import job_rows

_PERIOD = jobs.DEFAULT_POLICY.priority_aging_s


def test_a_run_right_after_another_changes_nothing_and_reads_no_window(env, clock):
    rt = env.server.rt
    env.submit(priority=0)
    clock.advance(_PERIOD + 1)
    assert jobs.age_priorities(rt) == 1
    clock.advance(1)
    assert jobs.age_priorities(rt) == 0  # no wait crossed a boundary in that second


def test_each_crossed_boundary_raises_the_job_one_level(env, clock):
    rt = env.server.rt
    env.submit(priority=1)
    jobs.age_priorities(rt)  # first run: nothing has waited a whole period yet
    levels = []
    for _ in range(3):
        clock.advance(_PERIOD)
        jobs.age_priorities(rt)
        levels.append(_effective_priority())
    assert levels == [2, 3, 4]


def _effective_priority() -> int:
    [queued] = job_rows(state=jobs.QUEUED)
    return int(queued.priority)


def test_a_job_at_the_top_is_never_read_again(env, clock):
    rt = env.server.rt
    env.submit(priority=8)
    clock.advance(_PERIOD + 1)
    assert jobs.age_priorities(rt) == 1
    clock.advance(_PERIOD * 5)
    assert jobs.age_priorities(rt) == 0
    assert _effective_priority() == 9


def test_the_windows_are_the_queue_times_whose_wait_crossed_a_boundary():
    # Previous run at t=1000, this one at t=1010, period 100: queue times in (1000 - k*100,
    # 1010 - k*100] for k = 1..9, disjoint.
    windows = aging_windows(1000, 1010, 100)
    assert windows[0] == (100, 110) and windows[-1] == (900, 910) and len(windows) == 9
    # A gap longer than a period merges them into one range.
    assert aging_windows(1000, 1250, 100) == [(100, 1150)]
    assert aging_windows(None, 1000, 100) == [(None, 900)]
    assert aging_windows(1000, 1000, 100) == []


def test_the_aging_update_walks_the_queue_time_index(env):
    rt = env.server.rt
    store = rt.store
    p = store.db.param
    where = f"state = 'queued' AND ((queue_time > {p} AND queue_time <= {p}) OR queue_time <= {p})"
    explain = "EXPLAIN" if store.is_postgres else "EXPLAIN QUERY PLAN"
    with store.read():
        if store.is_postgres:  # a fresh table is small: show that the index can serve it
            store.db.execute_sql("SET enable_seqscan = off")
        plan = store.db.execute_sql(
            f"{explain} UPDATE job SET priority = 1 WHERE {where}", [1, 2, 0]
        ).fetchall()
        if store.is_postgres:
            store.db.execute_sql("RESET enable_seqscan")
    assert "job_queued_since" in " ".join(str(r) for r in plan)
