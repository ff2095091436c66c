"""Leader failover on PostgreSQL beyond a crash: the lease, the holder's deadline, the fence.

Several schedulers compete on one Runtime, each under its own instance id: in-process
coordd Apps would share one peewee connection pool (the models' global database proxy), so
one App's transactions would not be its own. Each scheduler runs a "tick" task that writes
(holder, epoch) in a fenced transaction; the ticks' order proves one leader at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from coordd.scheduler.core import PostgresElector, Scheduler, Task
from coordd.store.models import SchedulerLeader
from coordd.store.scheduler_lease import FENCE, LeadershipLost
from tests.support.server import ServerHandle

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

LEASE_S = 1.5
TICKS = "test_leader_tick"


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def server(settings_factory, clock):
    # The daemon's own scheduler stays off: the schedulers below compete alone.
    handle = ServerHandle(settings_factory(scheduler_enabled=False, scheduler_lease_s=LEASE_S), clock)
    handle.rt.store.db.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {TICKS} (id BIGSERIAL PRIMARY KEY, holder TEXT NOT NULL, "
        "epoch BIGINT NOT NULL, note TEXT NOT NULL DEFAULT '')"
    )
    handle.rt.store.db.execute_sql(f"DELETE FROM {TICKS}")
    try:
        yield handle
    finally:
        handle.stop()


class Replica:
    """A scheduler under its own identity, whose tick task records who ran it under which epoch."""

    def __init__(self, server: ServerHandle, name: str, *extra: Task) -> None:
        self.server = server
        self.name = name
        self.calls = 0
        self.scheduler = Scheduler(server.rt, [Task("tick", 0.05, self._tick), *extra], PostgresElector(name))

    def _tick(self, rt) -> None:
        self.calls += 1
        current = FENCE.get()
        with rt.store.write():
            rt.store.db.execute_sql(
                f"INSERT INTO {TICKS} (holder, epoch) VALUES (%s, %s)", (current.holder, current.epoch)
            )

    def start(self) -> Replica:
        self.server.call(self.scheduler.start())
        return self

    @property
    def leading(self) -> bool:
        return self.scheduler.is_leader

    @property
    def epoch(self) -> int:
        held = self.scheduler.leadership
        return held.epoch if held else 0

    def pause_renewals(self) -> threading.Event:
        """Its renewals queue behind a blocked statement (a paused process, a hung connection)."""
        gate = threading.Event()
        self.scheduler.elector._executor.submit(gate.wait, 60)
        return gate

    def crash(self) -> None:
        """Stops everything without releasing the lease, as a killed process does."""

        async def crash() -> None:
            scheduler = self.scheduler
            scheduler._main.cancel()
            with pytest.raises(asyncio.CancelledError):
                await scheduler._main
            await scheduler._stop_loops()
            elector = scheduler.elector
            await asyncio.get_running_loop().run_in_executor(elector._executor, elector._close)
            elector._executor.shutdown(wait=False)

        self.server.call(crash())

    def stop(self) -> None:
        self.server.call(self.scheduler.stop())


def ticks(server: ServerHandle) -> list[tuple[int, str, int]]:
    return list(server.rt.store.db.execute_sql(f"SELECT id, holder, epoch FROM {TICKS} ORDER BY id"))


def assert_one_leader_at_a_time(rows: list[tuple[int, str, int]]) -> None:
    """In commit order (ids are taken inside the fenced transactions), epochs never go back,
    and each epoch belongs to one holder."""
    epochs = [epoch for _, _, epoch in rows]
    assert epochs == sorted(epochs), "a tick committed under an older epoch after a newer one"
    holders: dict[int, set[str]] = {}
    for _, holder, epoch in rows:
        holders.setdefault(epoch, set()).add(holder)
    assert all(len(h) == 1 for h in holders.values()), holders


def lease_row() -> SchedulerLeader:
    return SchedulerLeader.get(SchedulerLeader.name == "scheduler")


def test_a_crashed_leader_is_replaced_once_its_lease_expires_with_the_next_epoch(server):
    a = Replica(server, "a").start()
    assert _wait_for(lambda: a.leading)
    b = Replica(server, "b").start()
    assert _wait_for(lambda: a.calls >= 5)
    assert not b.leading and b.calls == 0
    before = lease_row()
    a.crash()
    assert _wait_for(lambda: b.leading)
    after = lease_row()
    assert (after.instance_id, after.epoch) == ("b", before.epoch + 1)
    # Taken only once the crashed holder's lease had run out, by the database's clock.
    assert after.since_time >= before.expire_time
    assert _wait_for(lambda: b.calls >= 3)
    b.stop()
    rows = ticks(server)
    assert {holder for _, holder, _ in rows} == {"a", "b"}
    assert_one_leader_at_a_time(rows)


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
    server.rt.store.db.execute_sql(
        "UPDATE scheduler_leader SET instance_id = 'b', epoch = epoch + 1 WHERE name = 'scheduler'"
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
