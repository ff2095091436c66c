"""A PostgreSQL connection the server ended (a restart, an idle-in-transaction timeout, an
operator's pg_terminate_backend) fails the call with UNAVAILABLE: never INTERNAL. The next
call on that thread gets a new connection."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg2
import pytest

from coordd.core.errors import Unavailable
from coordd.store.group_commit import GroupCommit
from tests.support.server import ServerHandle

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture
def one_thread(settings_factory, clock, backend) -> Iterator[ServerHandle]:
    """A daemon with one database thread: the call after the failure runs where it failed. No
    scheduler: its tasks share that thread, and one running between the failure and the next
    call would meet the ended connection first (and reconnect it)."""
    handle = ServerHandle(settings_factory(db_threads=1, scheduler_enabled=False), clock)
    try:
        yield handle
    finally:
        handle.stop()


def _terminate(url: str, pid: int) -> None:
    other = psycopg2.connect(url)
    try:
        other.autocommit = True
        with other.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        other.close()


def test_a_connection_ended_inside_a_transaction_is_unavailable_and_the_next_call_reconnects(one_thread):
    rt = one_thread.rt
    db = rt.store.db

    def ended_mid_transaction() -> None:
        with rt.store.write():
            pid = db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            _terminate(rt.settings.database_url, pid)
            db.execute_sql("SELECT 1")

    with pytest.raises(Unavailable) as info:
        one_thread.call(rt.run(ended_mid_transaction))
    assert info.value.reason == "DATABASE_UNAVAILABLE"
    assert one_thread.call(rt.run(lambda: db.execute_sql("SELECT 1").fetchone()[0])) == 1


def test_a_connection_ended_between_calls_is_unavailable_once_then_replaced(one_thread):
    rt = one_thread.rt
    db = rt.store.db
    pid = one_thread.call(rt.run(lambda: db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]))
    _terminate(rt.settings.database_url, pid)
    with pytest.raises(Unavailable):
        one_thread.call(rt.run(lambda: db.execute_sql("SELECT 1").fetchone()[0]))
    assert one_thread.call(rt.run(lambda: db.execute_sql("SELECT pg_backend_pid()").fetchone()[0])) != pid


def test_a_batch_whose_connection_the_server_ended_fails_every_caller_with_unavailable(one_thread):
    """Registrations and job submissions are written in batches (store/group_commit.py): the
    connection's end fails each caller of the batch with UNAVAILABLE, not the driver's error."""
    store = one_thread.rt.store

    def work(tx, key, items):
        pid = store.db.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        _terminate(one_thread.rt.settings.database_url, pid)
        store.db.execute_sql("SELECT 1")
        return list(items)

    grouped: GroupCommit[str, str, str] = GroupCommit(batch_work=work, max_batch=8)
    outcomes = grouped.submit_many(store, "k", ["a", "b"])
    assert [type(o) for o in outcomes] == [Unavailable, Unavailable]
    assert store.db.execute_sql("SELECT 1").fetchone()[0] == 1  # this thread reconnected
