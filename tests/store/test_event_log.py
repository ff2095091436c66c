"""A write's events are stored under the ids it publishes. On PostgreSQL the ids come from the
event log's sequence a block at a time, so the events' INSERT needs no answer and goes with the
COMMIT (store/event_log.py); the ids stay unique across processes, and a block is neither used
for long nor kept after a failed write."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import peewee
import psycopg2
import pytest

from coordd.core.events import Event
from coordd.store import event_log
from tests.store.test_round_trips import RecordingDatabase
from tests.support.server import ServerHandle


@pytest.fixture
def handle(settings_factory, clock) -> Iterator[ServerHandle]:
    server = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    try:
        yield server
    finally:
        server.stop()


def _rows(store, ids: list[int]) -> dict[int, tuple[str, str]]:
    p = store.db.param
    marks = ", ".join([p] * len(ids))
    found = store.db.execute_sql(f"SELECT id, type, subject FROM event_log WHERE id IN ({marks})", ids)
    return {row[0]: (row[1], row[2]) for row in found.fetchall()}


def test_a_writes_events_are_stored_under_the_ids_it_publishes(handle):
    store = handle.rt.store
    published: list[Event] = []
    store.on_commit(published.extend)
    with store.write() as tx:
        for n in range(3):
            tx.emit("probe.made", f"probes/{n}", {"n": n})
    with store.write() as tx:
        tx.emit("probe.made", "probes/3", {"n": 3})
        tx.emit("probe.made", "probes/4", {"n": 4})

    ids = [e.id for e in published]
    assert [e.subject for e in published] == [f"probes/{n}" for n in range(5)]
    assert ids == sorted(set(ids))  # unique, in emission order
    assert _rows(store, ids) == {e.id: ("probe.made", e.subject) for e in published}


def test_a_rolled_back_write_stores_and_publishes_none_of_its_events(handle):
    store = handle.rt.store
    published: list[Event] = []
    store.on_commit(published.extend)
    with pytest.raises(RuntimeError), store.write() as tx:
        tx.emit("probe.made", "probes/lost", {})
        raise RuntimeError("the change failed")
    assert published == []
    count = store.db.execute_sql("SELECT count(*) FROM event_log WHERE subject = 'probes/lost'")
    assert count.fetchone()[0] == 0


@pytest.fixture
def recording(pg_session_database: str) -> Iterator[RecordingDatabase]:
    db = RecordingDatabase(pg_session_database)
    try:
        yield db
    finally:
        db.close_all()


def _store_in_transaction(db: peewee.Database, ids: event_log.EventIds, subjects: list[str]) -> list[Event]:
    with db.atomic():
        db.execute_sql("SELECT 1")
        return event_log.store(db, ids, datetime.now(UTC), [("probe.made", s, {}) for s in subjects])


def test_on_postgresql_the_events_go_with_the_commit_and_a_block_serves_many_writes(recording):
    ids = event_log.EventIds()
    first = _store_in_transaction(recording, ids, ["probes/a", "probes/b"])
    statement, reserve, commit = recording.sent
    assert statement == "BEGIN;\nSELECT 1"
    assert "nextval" in reserve and f"generate_series(1, {event_log.BLOCK})" in reserve
    assert commit.startswith("INSERT INTO event_log (id,") and commit.endswith("COMMIT")
    assert "RETURNING" not in commit

    recording.sent.clear()
    second = _store_in_transaction(recording, ids, ["probes/c"])
    statement, commit = recording.sent  # no reservation this time
    assert commit.startswith("INSERT INTO event_log (id,") and commit.endswith("COMMIT")
    assert second[0].id > first[1].id > first[0].id


def test_two_processes_blocks_never_share_an_id(pg_session_database):
    """Two allocators (as two processes have) writing at once: no duplicate key, no id twice."""
    dbs = [RecordingDatabase(pg_session_database) for _ in range(2)]
    allocators = [event_log.EventIds() for _ in range(2)]
    got: list[list[int]] = [[], []]
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for n in range(event_log.BLOCK // 2 + 40):  # past one block each
                got[i] += [
                    e.id for e in _store_in_transaction(dbs[i], allocators[i], [f"probes/{i}-{n}"] * 3)
                ]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for db in dbs:
            db.close_all()
    assert errors == []
    every = got[0] + got[1]
    assert len(every) == len(set(every)) == 2 * 3 * (event_log.BLOCK // 2 + 40)


def test_a_block_older_than_its_age_limit_is_replaced(pg_session_database):
    now = [0.0]
    ids = event_log.EventIds(clock=lambda: now[0])
    db = RecordingDatabase(pg_session_database)
    try:
        with db.atomic():
            [first] = ids.take(db, 1)
        elsewhere = db.execute_sql("SELECT nextval(pg_get_serial_sequence('event_log', 'id'))").fetchone()[0]
        with db.atomic():
            [still_in_block] = ids.take(db, 1)
        now[0] += event_log.MAX_AGE_S + 0.01
        with db.atomic():
            [fresh] = ids.take(db, 1)
    finally:
        db.close_all()
    assert still_in_block == first + 1 < elsewhere  # from the block in hand
    assert fresh > elsewhere  # a new block, taken after the other process's value


def _rewind_sequence(url: str, to: int) -> None:
    """What a database crash can do to a sequence whose last values never reached the disk."""
    other = psycopg2.connect(url)
    try:
        other.autocommit = True
        with other.cursor() as cur:
            cur.execute("SELECT setval(pg_get_serial_sequence('event_log', 'id'), %s)", (to,))
            cur.execute(
                "INSERT INTO event_log (type, subject, data, create_time) VALUES ('other', 'x', '{}', 0)"
            )
    finally:
        other.close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_after_a_failed_write_the_next_one_takes_a_fresh_block(handle):
    store = handle.rt.store
    published: list[Event] = []
    store.on_commit(published.extend)
    with store.write() as tx:
        tx.emit("probe.made", "probes/1", {})
    _rewind_sequence(store.settings.database_url, published[0].id)  # the next value is handed out again

    with pytest.raises(peewee.IntegrityError), store.write() as tx:
        tx.emit("probe.made", "probes/2", {})  # the block's next id: taken meanwhile
    with store.write() as tx:
        tx.emit("probe.made", "probes/3", {})

    assert [e.subject for e in published] == ["probes/1", "probes/3"]
    assert published[1].id > published[0].id + 1
    assert _rows(store, [published[1].id]) == {published[1].id: ("probe.made", "probes/3")}
