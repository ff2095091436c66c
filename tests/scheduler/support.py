"""What the failover tests share: schedulers competing under their own identities on one
Runtime (in-process coordd Apps would share one peewee connection pool through the models'
global database proxy, so one App's transactions would not be its own), each running a
"tick" task that writes (holder, epoch) in a fenced transaction."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from coordd.scheduler.core import PostgresElector, Scheduler, Task
from coordd.store.models import SchedulerLeader
from coordd.store.scheduler_lease import FENCE
from tests.support.server import ServerHandle

LEASE_S = 1.5
TICKS = "test_leader_tick"


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def lease_server(settings_factory, clock, lease_s: float = LEASE_S) -> ServerHandle:
    """A server whose own scheduler stays off (the schedulers of the test compete alone)."""
    handle = ServerHandle(settings_factory(scheduler_enabled=False, scheduler_lease_s=lease_s), clock)
    handle.rt.store.db.execute_sql(
        f"CREATE TABLE IF NOT EXISTS {TICKS} (id BIGSERIAL PRIMARY KEY, holder TEXT NOT NULL, "
        "epoch BIGINT NOT NULL, note TEXT NOT NULL DEFAULT '')"
    )
    handle.rt.store.db.execute_sql(f"DELETE FROM {TICKS}")
    return handle


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
        """Stops everything without releasing the lease, as a killed process does: its lease
        connection closes, and what it believed dies with it."""

        async def crash() -> None:
            scheduler = self.scheduler
            scheduler._main.cancel()
            with pytest.raises(asyncio.CancelledError):
                await scheduler._main
            await scheduler._stop_loops()
            elector = scheduler.elector
            await asyncio.get_running_loop().run_in_executor(elector._executor, elector._close)
            elector._executor.shutdown(wait=False)
            elector._state = (None, 0.0)

        self.server.call(crash())

    def hang(self) -> None:
        """Stops acting and renewing but keeps its lease connection open (a process paused
        for good, or cut off from the database without the server noticing)."""
        self.pause_renewals()

        async def freeze() -> None:
            self.scheduler._main.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.scheduler._main
            await self.scheduler._stop_loops()
            self.scheduler.elector._state = (None, 0.0)

        self.server.call(freeze())

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
