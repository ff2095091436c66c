"""PostgreSQL transactions send BEGIN, and writes nobody needs an answer to, along with the next
statement (store/pg.py), with exactly the meaning of sending them one by one: same order, same
rollback, an error still fails the transaction. Every message the driver sends is recorded."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse

import peewee
import psycopg2
import pytest
from psycopg2.extras import LoggingConnection

from coordd.store.pg import PostgresDatabase


class _Sent(list[str]):
    def write(self, text: str) -> None:  # LoggingConnection writes each query it sends
        self.append(text.strip())


class RecordingDatabase(PostgresDatabase):
    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        super().__init__(
            parsed.path.lstrip("/"),
            user=parsed.username,
            host=parsed.hostname,
            port=parsed.port,
            max_connections=2,
            connection_factory=LoggingConnection,
        )
        self.sent = _Sent()
        self.url = url

    def _initialize_connection(self, conn: LoggingConnection) -> None:
        conn.initialize(self.sent)


@pytest.fixture
def db(pg_session_database: str) -> Iterator[RecordingDatabase]:
    database = RecordingDatabase(pg_session_database)
    database.execute_sql("CREATE TABLE IF NOT EXISTS round_trip_probe (k text PRIMARY KEY, v text)")
    database.execute_sql("DELETE FROM round_trip_probe")
    database.sent.clear()
    yield database
    database.execute_sql("DROP TABLE round_trip_probe")
    database.close_all()


def _rows(db: RecordingDatabase) -> dict[str, str]:
    """What another connection sees: committed rows only."""
    other = psycopg2.connect(db.url)
    try:
        with other.cursor() as cur:
            cur.execute("SELECT k, v FROM round_trip_probe ORDER BY k")
            return dict(cur.fetchall())
    finally:
        other.close()


def test_begin_goes_with_the_first_statement_and_commit_alone(db):
    with db.atomic():
        assert db.execute_sql("SELECT 41 + %s", (1,)).fetchone() == (42,)
    assert db.sent == ["BEGIN;\nSELECT 41 + 1", "COMMIT"]


def test_a_transaction_that_ran_nothing_sends_nothing(db):
    with db.atomic():
        pass
    with pytest.raises(RuntimeError), db.atomic():
        raise RuntimeError("before any statement")
    assert db.sent == []


def test_deferred_writes_go_with_the_next_statement_in_their_order(db):
    with db.atomic():
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("a", "1"))
        db.defer("UPDATE round_trip_probe SET v = %s WHERE k = %s", ("2", "a"))
        assert db.sent == []
        assert db.execute_sql("SELECT v FROM round_trip_probe WHERE k = %s", ("a",)).fetchone() == ("2",)
    assert len(db.sent) == 2  # the writes with the SELECT, then COMMIT
    assert _rows(db) == {"a": "2"}


def test_deferred_writes_last_in_a_transaction_go_with_its_commit(db):
    with db.atomic():
        db.execute_sql("SELECT 1")
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("b", "x"))
    assert db.sent[-1] == "INSERT INTO round_trip_probe VALUES ('b', 'x');\nCOMMIT"
    assert _rows(db) == {"b": "x"}


def test_a_rolled_back_transaction_keeps_none_of_its_deferred_writes(db):
    with pytest.raises(RuntimeError), db.atomic():
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("c", "1"))
        raise RuntimeError("changed my mind")
    with pytest.raises(RuntimeError), db.atomic():
        db.execute_sql("SELECT 1")
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("d", "1"))
        raise RuntimeError("changed my mind")
    assert _rows(db) == {}


def test_a_failing_deferred_write_fails_the_next_statement_and_commits_nothing(db):
    db.execute_sql("INSERT INTO round_trip_probe VALUES ('e', 'first')")
    with pytest.raises(peewee.IntegrityError), db.atomic():
        db.execute_sql("UPDATE round_trip_probe SET v = 'changed' WHERE k = 'e'")
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("e", "duplicate"))
        db.execute_sql("SELECT 1")
    assert _rows(db) == {"e": "first"}
    # The connection is usable again afterwards.
    with db.atomic():
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("f", "ok"))
    assert _rows(db) == {"e": "first", "f": "ok"}


def test_percent_signs_in_deferred_values_are_stored_as_they_are(db):
    with db.atomic():
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("g", "100% %s %%"))
        db.execute_sql("INSERT INTO round_trip_probe VALUES (%s, %s)", ("h", "50%"))
        # Like execute_sql, a text is always interpolated: a literal percent is written %%.
        db.defer("INSERT INTO round_trip_probe VALUES ('i', '10%%')")
    assert _rows(db) == {"g": "100% %s %%", "h": "50%", "i": "10%"}
    with db.atomic():  # a pending write before a statement without parameters
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("j", "5% off"))
        assert db.execute_sql("SELECT count(*) FROM round_trip_probe").fetchone() == (4,)
    assert _rows(db)["j"] == "5% off"


def test_a_raw_cursor_sees_the_pending_writes_sent_first(db):
    with db.atomic():
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("j", "1"))
        cursor = db.cursor()
        cursor.execute("SELECT count(*) FROM round_trip_probe")
        assert cursor.fetchone() == (1,)
    assert _rows(db) == {"j": "1"}


def test_a_rolled_back_savepoint_undoes_the_deferred_writes_made_inside_it(db):
    with db.atomic():
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("k", "kept"))
        with pytest.raises(RuntimeError), db.atomic():
            db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("l", "undone"))
            raise RuntimeError("undo the savepoint")
    assert _rows(db) == {"k": "kept"}


def test_defer_outside_a_transaction_writes_at_once(db):
    db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("m", "now"))
    assert _rows(db) == {"m": "now"}


def test_savepoints_go_with_the_next_statement(db):
    with db.atomic():
        with db.atomic():  # a savepoint
            db.execute_sql("INSERT INTO round_trip_probe VALUES (%s, %s)", ("m", "1"))
        db.execute_sql("INSERT INTO round_trip_probe VALUES (%s, %s)", ("n", "1"))
    sid = db.sent[0].split("\n")[1].removeprefix("SAVEPOINT ").rstrip(";")
    assert db.sent == [
        f"BEGIN;\nSAVEPOINT {sid};\nINSERT INTO round_trip_probe VALUES ('m', '1')",
        f"RELEASE SAVEPOINT {sid};\nINSERT INTO round_trip_probe VALUES ('n', '1')",
        "COMMIT",
    ]
    assert _rows(db) == {"m": "1", "n": "1"}


def test_a_savepoint_that_ran_nothing_sends_nothing(db):
    with db.atomic():
        with db.atomic():
            pass
        with pytest.raises(RuntimeError), db.atomic():
            raise RuntimeError("before any statement")
        db.execute_sql("SELECT 1")
    assert db.sent == ["BEGIN;\nSELECT 1", "COMMIT"]


def test_a_savepoint_rolled_back_before_anything_was_sent_drops_its_writes_unsent(db):
    with db.atomic():
        with pytest.raises(RuntimeError), db.atomic():
            db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("o", "undone"))
            raise RuntimeError("undo the savepoint")
        db.execute_sql("INSERT INTO round_trip_probe VALUES (%s, %s)", ("p", "kept"))
    assert not any("'o'" in text for text in db.sent)
    assert _rows(db) == {"p": "kept"}


def test_a_failing_statement_in_a_savepoint_rolls_back_only_the_savepoint(db):
    db.execute_sql("INSERT INTO round_trip_probe VALUES ('q', 'first')")
    with db.atomic():
        db.execute_sql("UPDATE round_trip_probe SET v = 'outer' WHERE k = 'q'")
        with pytest.raises(peewee.IntegrityError), db.atomic():
            db.execute_sql("INSERT INTO round_trip_probe VALUES (%s, %s)", ("r", "inner"))
            db.execute_sql("INSERT INTO round_trip_probe VALUES (%s, %s)", ("q", "duplicate"))
        db.execute_sql("INSERT INTO round_trip_probe VALUES (%s, %s)", ("s", "after"))
    assert _rows(db) == {"q": "outer", "s": "after"}


def test_a_deferred_write_inside_a_savepoint_fails_the_savepoint_not_what_follows(db):
    db.execute_sql("INSERT INTO round_trip_probe VALUES ('t', 'first')")
    with db.atomic():
        with pytest.raises(peewee.IntegrityError), db.atomic():
            db.execute_sql("SELECT 1")
            db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("t", "duplicate"))
        db.execute_sql("INSERT INTO round_trip_probe VALUES (%s, %s)", ("u", "after"))
    assert _rows(db) == {"t": "first", "u": "after"}


def test_a_deferred_write_before_a_savepoint_fails_before_it(db):
    db.execute_sql("INSERT INTO round_trip_probe VALUES ('v', 'first')")
    entered = False
    with pytest.raises(peewee.IntegrityError), db.atomic():
        db.execute_sql("SELECT 1")
        db.defer("INSERT INTO round_trip_probe VALUES (%s, %s)", ("v", "duplicate"))
        with db.atomic():
            entered = True
    assert not entered  # raised by the savepoint's own SAVEPOINT, as if sent at once
    assert _rows(db) == {"v": "first"}
