"""Leader failover on PostgreSQL beyond a crash: the lease, the holder's deadline, the fence.

Schedulers compete on one Runtime under their own instance ids (tests/scheduler/support.py
says why); each tick they write (holder, epoch) in a fenced transaction, and the ticks'
order proves one leader at a time.
"""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from coordd.scheduler.core import Task
from coordd.store.scheduler_lease import APPLICATION_NAME, LEGACY_LOCK, LeadershipLost
from tests.scheduler.support import (
    LEASE_S,
    TICKS,
    Replica,
    assert_one_leader_at_a_time,
    lease_row,
    lease_server,
    ticks,
)
from tests.scheduler.support import wait_for as _wait_for

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture
def server(settings_factory, clock):
    handle = lease_server(settings_factory, clock)
    try:
        yield handle
    finally:
        handle.stop()


def test_a_leader_that_stops_renewing_is_replaced_once_its_lease_expires_with_the_next_epoch(server):
    a = Replica(server, "a").start()
    assert _wait_for(lambda: a.leading)
    b = Replica(server, "b").start()
    assert _wait_for(lambda: a.calls >= 5)
    assert not b.leading and b.calls == 0
    before = lease_row()
    a.hang()  # its lease connection stays open: only the expiry frees the lease
    assert _wait_for(lambda: b.leading)
    after = lease_row()
    assert (after.instance_id, after.epoch) == ("b", before.epoch + 1)
    # Taken only once a's lease had run out, by the database's clock.
    assert after.since_time >= before.expire_time
    assert _wait_for(lambda: b.calls >= 3)
    b.stop()
    rows = ticks(server)
    assert {holder for _, holder, _ in rows} == {"a", "b"}
    assert_one_leader_at_a_time(rows)


def test_a_crashed_leader_is_replaced_without_waiting_for_its_lease_to_expire(settings_factory, clock):
    # A long lease: the takeover below can only come from the crash, not from the expiry.
    server = lease_server(settings_factory, clock, lease_s=60)
    try:
        a = Replica(server, "a").start()
        assert _wait_for(lambda: a.leading)
        b = Replica(server, "b").start()
        assert _wait_for(lambda: a.calls >= 5)
        before = lease_row()
        a.crash()  # its lease connection closes, as when the process dies
        assert _wait_for(lambda: b.leading, timeout=20)
        after = lease_row()
        assert (after.instance_id, after.epoch) == ("b", before.epoch + 1)
        assert after.since_time < before.expire_time
        assert _wait_for(lambda: b.calls >= 3)
        b.stop()
        assert_one_leader_at_a_time(ticks(server))
    finally:
        server.stop()


def test_a_paused_leader_stops_acting_at_its_deadline_and_does_not_resume_after_the_takeover(server):
    a = Replica(server, "a").start()
    assert _wait_for(lambda: a.leading)
    b = Replica(server, "b").start()
    assert _wait_for(lambda: a.calls >= 3)
    gate = a.pause_renewals()
    # Without a renewal a stops acting at its own deadline, before anyone could take over.
    assert _wait_for(lambda: not a.leading)
    assert _wait_for(lambda: b.leading)
    calls_at_takeover = a.calls
    assert _wait_for(lambda: b.calls >= 5)
    assert a.calls == calls_at_takeover
    # Resumed: its renewal is refused (the epoch moved on); it follows and runs nothing.
    gate.set()
    assert _wait_for(lambda: a.scheduler.leadership is None)
    settled = b.calls
    assert _wait_for(lambda: b.calls >= settled + 5)
    assert a.calls == calls_at_takeover and not a.leading and b.leading
    rows = ticks(server)
    assert lease_row().instance_id == "b"
    assert_one_leader_at_a_time(rows)
    a.stop()
    b.stop()


def test_an_in_flight_write_of_a_superseded_leader_is_refused_by_the_fence(server):
    entered, proceed, outcome = threading.Event(), threading.Event(), {}

    def slow_write(rt) -> None:
        if outcome:
            return
        try:
            with rt.store.write():
                rt.store.db.execute_sql(f"INSERT INTO {TICKS} (holder, epoch, note) VALUES ('a', 0, 'stale')")
                entered.set()
                proceed.wait(30)
            outcome["result"] = "committed"
        except LeadershipLost as exc:
            outcome["result"] = f"refused: {exc}"
            raise

    a = Replica(server, "a", Task("slow-write", 0.05, slow_write)).start()
    assert _wait_for(lambda: a.leading)
    assert entered.wait(30)
    gate = a.pause_renewals()
    # The lease moves on while the write is open and a still believes it leads (its deadline
    # is ahead: a takeover after a partition, or a clock that ran slow). The database decides.
    db = server.rt.store.db
    b = psycopg2.connect(dbname=db.database, **db.connect_params, application_name=APPLICATION_NAME)
    b.autocommit = True
    with b.cursor() as cur:
        cur.execute(
            "UPDATE scheduler_leader SET instance_id = 'b', epoch = epoch + 1, "
            "holder_pid = pg_backend_pid(), expire_time = expire_time + 60000000 WHERE name = 'scheduler'"
        )
    assert a.scheduler.elector.valid(a.scheduler.leadership)
    proceed.set()
    assert _wait_for(lambda: "result" in outcome)
    assert outcome["result"].startswith("refused") and "taken over" in outcome["result"]
    assert not [row for row in server.rt.store.db.execute_sql(f"SELECT id FROM {TICKS} WHERE note = 'stale'")]
    # The next renewal tells a it lost; it stops.
    gate.set()
    assert _wait_for(lambda: a.scheduler.leadership is None)
    a.stop()
    b.close()


def test_a_paused_leaders_in_flight_write_is_refused_after_its_deadline(server):
    entered, proceed, outcome = threading.Event(), threading.Event(), {}

    def slow_write(rt) -> None:
        if outcome:
            return
        try:
            with rt.store.write():
                rt.store.db.execute_sql(f"INSERT INTO {TICKS} (holder, epoch, note) VALUES ('a', 0, 'stale')")
                entered.set()
                proceed.wait(30)
            outcome["result"] = "committed"
        except LeadershipLost:
            outcome["result"] = "refused"
            raise

    a = Replica(server, "a", Task("slow-write", 3600, slow_write)).start()
    assert _wait_for(lambda: a.leading)
    b = Replica(server, "b").start()
    assert entered.wait(30)
    gate = a.pause_renewals()
    assert _wait_for(lambda: b.leading)
    proceed.set()
    assert _wait_for(lambda: "result" in outcome)
    assert outcome["result"] == "refused"
    gate.set()
    rows = ticks(server)
    assert not [row for row in rows if row[2] == 0]
    assert_one_leader_at_a_time(rows)
    a.stop()
    b.stop()


def test_exactly_one_of_three_replicas_leads_through_crashes_pauses_and_stops(server):
    replicas = {name: Replica(server, name).start() for name in "abc"}

    def leader() -> Replica | None:
        leading = [r for r in replicas.values() if r.leading]
        assert len(leading) <= 1, [r.name for r in leading]
        return leading[0] if leading else None

    def next_leader(previous: Replica | None) -> Replica:
        assert _wait_for(lambda: leader() not in (None, previous))
        found = leader()
        assert found is not None
        calls = found.calls
        assert _wait_for(lambda: found.calls >= calls + 3)
        return found

    first = next_leader(None)
    gate = first.pause_renewals()
    second = next_leader(first)
    gate.set()
    second.crash()
    third = next_leader(second)
    assert third is not second
    third.stop()  # a graceful stop releases the lease at once
    fourth = next_leader(third)
    assert fourth.name not in (second.name, third.name)
    for replica in replicas.values():
        if replica not in (second,):
            replica.stop()
    rows = ticks(server)
    assert len({epoch for _, _, epoch in rows}) >= 4
    assert_one_leader_at_a_time(rows)


def test_no_replica_leads_while_one_of_the_previous_version_holds_its_advisory_lock(server):
    """A rolling upgrade: versions before the lease lead by a session advisory lock."""
    db = server.rt.store.db
    previous = psycopg2.connect(dbname=db.database, **db.connect_params)
    previous.autocommit = True

    def try_lock() -> bool:
        with previous.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LEGACY_LOCK,))
            return bool(cur.fetchone()[0])

    try:
        assert try_lock()
        a = Replica(server, "a").start()
        time.sleep(LEASE_S * 2)  # several attempts to claim
        assert not a.leading and a.calls == 0
        with previous.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (LEGACY_LOCK,))
        assert _wait_for(lambda: a.leading)
        # Leading, it holds the old lock too: the previous version stays a follower.
        assert not try_lock()
        a.stop()
        assert _wait_for(try_lock)
    finally:
        previous.close()
