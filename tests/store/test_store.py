"""Store: migrations, timestamps, write serialization and event recording."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from coordd.store.auth.models import User
from coordd.store.db import Store
from coordd.store.jobs.models import Job, JobAttempt
from coordd.store.migrations import MIGRATIONS, applied_versions, migrate
from coordd.store.models import EventLog
from tests.support import infra
from tests.support.server import make_settings


def test_migrations_are_recorded_and_idempotent(server):
    assert applied_versions(server.rt.store) == {m.version for m in MIGRATIONS}
    assert migrate(server.rt.store) == []


def test_timestamps_round_trip_as_aware_utc(server):
    when = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    with server.rt.store.write():
        User.create(
            email="t@example.com",
            email_key="t@example.com",
            display_name="t",
            password_hash="x",
            roles="participant",
            create_time=when,
        )
    loaded = User.get(User.email_key == "t@example.com")
    assert loaded.create_time == when and loaded.create_time.tzinfo is not None
    assert User.select().where(User.create_time > datetime(2029, 1, 1, tzinfo=UTC)).count() == 1


def test_concurrent_writers_never_see_database_is_locked(server):
    errors: list[Exception] = []

    def write(n: int) -> None:
        try:
            for i in range(20):
                with server.rt.store.write() as tx:
                    tx.emit("test.write", f"things/{n}-{i}", {"n": n})
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert EventLog.select().where(EventLog.type == "test.write").count() == 160


def test_a_rolled_back_transaction_stores_no_event(server):
    try:
        with server.rt.store.write() as tx:
            tx.emit("test.rollback", "things/1", {})
            raise RuntimeError("abort")
    except RuntimeError:
        pass
    assert EventLog.select().where(EventLog.type == "test.rollback").count() == 0


def test_a_nested_write_joins_the_outer_transaction(server):
    try:
        with server.rt.store.write() as outer:
            with server.rt.store.write() as inner:
                assert inner is outer
                inner.emit("test.nested", "things/1", {})
            raise RuntimeError("roll back both")
    except RuntimeError:
        pass
    assert EventLog.select().where(EventLog.type == "test.nested").count() == 0
    with server.rt.store.write() as tx:
        with server.rt.store.write() as inner:
            inner.emit("test.nested", "things/2", {})
        assert tx.pending_events
    assert EventLog.select().where(EventLog.type == "test.nested").count() == 1


def test_migrations_apply_in_version_order_with_unique_versions():
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_migration_12_makes_job_indexes_partial_and_keeps_only_unsuccessful_attempts(tmp_path, engine):
    """An install from before migration 12: full due-time indexes and an attempt row per attempt."""
    if engine == "postgresql":
        infra.require("postgresql")
        database = infra.fresh_pg_database()
    else:
        from contextlib import nullcontext

        database = nullcontext("")
    with database as url:
        store = Store(make_settings(str(tmp_path / "data"), url))
        try:
            assert migrate(store, up_to=11)[-1] == 11
            db = store.db
            for column in ("lease_expire_time", "finish_time", "purge_time"):
                db.execute_sql(f"CREATE INDEX job_{column} ON job ({column})")
            db.execute_sql("CREATE INDEX job_attempt_job_id ON job_attempt (job_id)")
            Job.insert(
                id="j1",
                submitter="u",
                kind="inference",
                model_ref="m",
                input_digest="d",
                max_attempts=3,
                attempt_limit=3,
                heartbeat_ms=60_000,
                lease_ms=60_000,
                state="succeeded",
                attempt=3,
                run_after=0,
                queue_time=0,
                create_time=0,
            ).execute()
            for attempt, outcome in ((1, "failed"), (2, "lease_expired"), (3, "succeeded")):
                JobAttempt.insert(
                    job="j1", attempt=attempt, provider="p", lease_id="l", start_time=0, outcome=outcome
                ).execute()
            for column in ("attestation_key_id", "attestation_sig"):  # added by migration 12
                db.execute_sql(f"ALTER TABLE job DROP COLUMN {column}")

            assert 12 in migrate(store)
            assert {"attestation_key_id", "attestation_sig"} <= {c.name for c in db.get_columns("job")}

            if store.is_postgres:
                rows = db.execute_sql(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE 'job%%'"
                )
            else:
                rows = db.execute_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name LIKE 'job%'"
                )
            indexes = {name: (sql or "") for name, sql in rows.fetchall()}
            assert not {
                "job_lease_expire_time",
                "job_finish_time",
                "job_purge_time",
                "job_attempt_job_id",
            } & set(indexes)
            for name in ("job_lease_due", "job_finished", "job_purge_due", "job_start_due", "job_close_due"):
                assert "IS NOT NULL" in indexes[name].upper(), name
            outcomes = db.execute_sql("SELECT attempt, outcome FROM job_attempt ORDER BY attempt").fetchall()
            assert [tuple(r) for r in outcomes] == [(1, "failed"), (2, "lease_expired")]
        finally:
            store.db.close()
