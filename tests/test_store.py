"""Store: migrations, timestamps, write serialization and event recording."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from coordd.store.migrations import MIGRATIONS, applied_versions, migrate
from coordd.store.models import EventLog, User


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
