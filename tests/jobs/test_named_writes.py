"""A job's cold state changes write only the columns their transition changes
(coordd.store.jobs.writes): a column changed outside a write's set is refused as a programming
error before anything is written, and a write leaves the other columns as the database has them."""

from __future__ import annotations

import pytest

from coordd.store.jobs import queries, writes
from tests.jobs.rows import job_row


def test_a_heartbeat_write_leaves_every_other_column_as_stored(env):
    job = env.submit(budget=5, priority=3)
    [leased] = env.claim(env.worker_a)
    with env.server.rt.store.write():
        stale = queries.lock_job(job.name.removeprefix("jobs/"))
        assert stale is not None
        # What another change committed meanwhile (a whole-row save would put the old value back).
        type(stale).update(error="set elsewhere").where(type(stale).id == stale.id).execute()
        stale.progress = 0.5
        writes.write_heartbeat(stale)
    stored = job_row(job.name)
    assert stored.progress == 0.5
    assert stored.error == "set elsewhere"
    assert stored.lease_id == leased.lease.lease_id


def test_a_write_refuses_a_column_its_transition_does_not_name_and_writes_nothing(env):
    job = env.submit(budget=5, priority=3)
    env.claim(env.worker_a)
    with env.server.rt.store.write():
        row = queries.lock_job(job.name.removeprefix("jobs/"))
        assert row is not None
        row.progress = 0.25
        row.priority = 9  # not a heartbeat's column
        with pytest.raises(AssertionError, match=r"heartbeat write of jobs/.* does not write priority"):
            writes.write_heartbeat(row)
    stored = job_row(job.name)
    assert (stored.priority, stored.progress) == (3, 0.0)
