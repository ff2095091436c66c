"""Upgrading an install from before migrations 110-113 (pending jobs, caps, fair share,
schedules): the new columns are added with the values the old rows mean, the claim index is
replaced by the fair one, and queued jobs keep their place."""

from __future__ import annotations

import pytest

from coordd.store.db import Store
from coordd.store.jobs.models import Job
from coordd.store.migrations import migrate
from tests.support.migrations import install_store

_NEW_COLUMNS = (
    "schedule_time",
    "unique_key",
    "parents",
    "parents_left",
    "has_children",
    "fair_seq",
    "base_priority",
)


def _indexes(store: Store) -> dict[str, str]:
    if store.is_postgres:
        rows = store.db.execute_sql("SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'job%%'")
    else:
        rows = store.db.execute_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name LIKE 'job%'"
        )
    return {name: (sql or "") for name, sql in rows.fetchall()}


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_an_install_from_before_110_upgrades_with_its_queue_in_order(tmp_path, engine):
    with install_store(tmp_path, engine) as store:
        migrate(store, up_to=100)
        db = store.db
        for job_id, priority in (("j1", 4), ("j2", 4), ("j3", 7)):
            Job.insert(
                id=job_id,
                submitter="u",
                kind="inference",
                model_ref="m",
                input_digest="d",
                max_attempts=3,
                attempt_limit=3,
                heartbeat_ms=60_000,
                lease_ms=60_000,
                state="queued",
                priority=priority,
                run_after=0,
                queue_time=0,
                create_time=0,
            ).execute()
        for column in _NEW_COLUMNS:  # as the table was before migration 110
            db.execute_sql(f"ALTER TABLE job DROP COLUMN {column}")
        assert "job_claim_order" in _indexes(store)

        assert {110, 111, 112, 113} <= set(migrate(store))

        assert set(_NEW_COLUMNS) <= {c.name for c in db.get_columns("job")}
        rows = db.execute_sql(
            "SELECT id, priority, base_priority, fair_seq, parents, parents_left, has_children FROM job"
            " ORDER BY priority DESC, fair_seq, id"
        ).fetchall()
        assert [(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows] == [
            ("j3", 7, 7, 0, "[]", 0, False),
            ("j1", 4, 4, 0, "[]", 0, False),
            ("j2", 4, 4, 0, "[]", 0, False),
        ]
        indexes = _indexes(store)
        assert "job_claim_order" not in indexes
        assert "fair_seq" in indexes["job_claim_fair"]
        for name in (
            "job_pending_due",
            "job_queued_submitter",
            "job_schedule_due",
            "job_dependency_child",
        ):
            assert name in indexes, name
        assert migrate(store) == []  # idempotent
