"""Write conflicts on PostgreSQL (deadlocks, serialization failures, unique-violation races) are
retried when nothing was committed yet, and otherwise reported as ABORTED: never as the database
being down, never as INTERNAL. SQLite serializes its writers, so it cannot have them."""

from __future__ import annotations

import asyncio
import threading

import pytest

from coordd.core.errors import Aborted

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture
def probe(server):
    db = server.rt.store.db
    with server.rt.store.write():
        db.execute_sql("CREATE TABLE IF NOT EXISTS conflict_probe (k text PRIMARY KEY, v integer NOT NULL)")
        db.execute_sql("DELETE FROM conflict_probe")
        db.execute_sql("INSERT INTO conflict_probe VALUES ('a', 0), ('b', 0)")
    yield db
    with server.rt.store.write():
        db.execute_sql("DROP TABLE conflict_probe")


def _run_all(server, *calls):
    async def gather():
        return await asyncio.gather(*(server.rt.run(fn) for fn in calls), return_exceptions=True)

    return server.call(gather())


def test_a_deadlock_is_retried_and_both_writers_succeed(server, probe):
    rt = server.rt
    barrier = threading.Barrier(2)
    attempts: list[str] = []

    def locker(first: str, second: str):
        def run() -> str:
            attempts.append(first)
            with rt.store.write():
                probe.execute_sql("SELECT v FROM conflict_probe WHERE k = %s FOR UPDATE", (first,))
                if len(attempts) <= 2:
                    barrier.wait(timeout=10)
                probe.execute_sql("UPDATE conflict_probe SET v = v + 1 WHERE k = %s", (second,))
            return first

        return run

    results = _run_all(server, locker("a", "b"), locker("b", "a"))
    assert sorted(results) == ["a", "b"]
    assert len(attempts) >= 3  # PostgreSQL chose a victim and it ran again (under load, possibly twice)
    with rt.store.read():
        values = dict(probe.execute_sql("SELECT k, v FROM conflict_probe").fetchall())
    assert values == {"a": 1, "b": 1}


def test_a_unique_violation_race_is_retried_and_sees_the_winner(server, probe):
    rt = server.rt
    attempts: list[int] = []

    def insert_if_missing() -> str:
        attempts.append(1)
        with rt.store.write():
            exists = probe.execute_sql("SELECT 1 FROM conflict_probe WHERE k = 'c'").fetchone()
            if exists:
                return "found"
            if len(attempts) == 1:
                # Another replica inserts the same key between our check and our insert.
                racer = _Racer(rt)
                racer.start()
                racer.join(10)
            probe.execute_sql("INSERT INTO conflict_probe VALUES ('c', 1)")
            return "inserted"

    assert server.call(rt.run(insert_if_missing)) == "found"
    assert len(attempts) == 2


class _Racer(threading.Thread):
    """Commits the racing insert on its own connection."""

    def __init__(self, rt) -> None:
        super().__init__()
        self.rt = rt

    def run(self) -> None:
        with self.rt.store.write():
            self.rt.store.db.execute_sql("INSERT INTO conflict_probe VALUES ('c', 2)")
        self.rt.store.close_thread_connection()


def test_a_conflict_after_a_commit_is_aborted_not_repeated(server, probe):
    rt = server.rt
    attempts: list[int] = []

    def two_transactions() -> None:
        attempts.append(1)
        with rt.store.write():
            probe.execute_sql("UPDATE conflict_probe SET v = v + 1 WHERE k = 'a'")
        with rt.store.write():
            probe.execute_sql("INSERT INTO conflict_probe VALUES ('a', 9)")

    (result,) = _run_all(server, two_transactions)
    assert isinstance(result, Aborted)
    assert result.reason == "CONCURRENT_CONFLICT"
    assert result.metadata == {"conflict": "unique violation"}
    assert len(attempts) == 1  # the first transaction's effect is not applied twice
    with rt.store.read():
        assert probe.execute_sql("SELECT v FROM conflict_probe WHERE k = 'a'").fetchone()[0] == 1


def test_a_used_idempotency_key_is_told_apart_from_other_unique_violations(server, probe):
    """A keyed batch's deferred record meeting a key used before fails its COMMIT; the run again
    must look for keys (idempotency), not register one by one as for a row race."""
    from datetime import UTC, datetime, timedelta

    import peewee

    from coordd.store import idempotency_queries as queries

    now = datetime.now(UTC)
    row = ("users/u1", "used", "/Register", "digest", b"sealed", now, now + timedelta(hours=1))
    with server.rt.store.write():
        queries.insert_done([row])
    with pytest.raises(peewee.IntegrityError) as record, server.rt.store.write():
        queries.insert_done([row])  # deferred: the COMMIT reports it
    with pytest.raises(peewee.IntegrityError) as other, server.rt.store.write():
        probe.execute_sql("INSERT INTO conflict_probe VALUES ('a', 1)")
    assert queries.is_record_conflict(record.value)
    assert not queries.is_record_conflict(other.value)
