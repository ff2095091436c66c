"""Scheduler: named tasks, isolation of failures, leader election."""

from __future__ import annotations

import asyncio
import time

import pytest

from coordd.scheduler.core import Elector, PostgresElector, Scheduler, Task
from coordd.store.models import SchedulerLeader, SchedulerTaskRun
from tests.support.server import ServerHandle


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_failing_task_never_stops_the_others(server):
    calls = {"ok": 0}

    def ok(rt):
        calls["ok"] += 1

    def broken(rt):
        raise ValueError("boom")

    scheduler = Scheduler(server.rt, [Task("ok", 0.05, ok), Task("broken", 0.05, broken)], Elector())
    server.call(scheduler.start())
    try:
        assert _wait_for(lambda: calls["ok"] >= 3)
        assert _wait_for(
            lambda: (
                (
                    SchedulerTaskRun.get_or_none(name="broken") or SchedulerTaskRun(failure_count=0)
                ).failure_count
                >= 3
            )
        )
    finally:
        server.call(scheduler.stop())
    broken_row = SchedulerTaskRun.get(name="broken")
    assert broken_row.last_error == "ValueError: boom"
    assert broken_row.run_count == broken_row.failure_count
    assert SchedulerTaskRun.get(name="ok").last_error == ""


def test_kick_runs_a_task_before_its_interval(server):
    calls = []
    scheduler = Scheduler(server.rt, [Task("slow", 3600, lambda rt: calls.append(1))], Elector())
    server.call(scheduler.start())
    try:
        assert _wait_for(lambda: len(calls) == 1)
        server.loop.call_soon_threadsafe(scheduler.kick, "slow")
        assert _wait_for(lambda: len(calls) == 2)
    finally:
        server.call(scheduler.stop())


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_leadership_is_exclusive_and_moves_when_the_leader_dies(settings_factory, clock):
    # The daemon's own scheduler stays off so the two schedulers below compete alone.
    server = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    try:
        _compete(server)
    finally:
        server.stop()


def _compete(server):
    runs = {"a": 0, "b": 0}
    a = Scheduler(
        server.rt, [Task("t", 0.05, lambda rt: runs.__setitem__("a", runs["a"] + 1))], PostgresElector()
    )
    b = Scheduler(
        server.rt, [Task("t", 0.05, lambda rt: runs.__setitem__("b", runs["b"] + 1))], PostgresElector()
    )
    server.call(a.start())
    assert _wait_for(lambda: a.is_leader)
    server.call(b.start())
    time.sleep(1.0)
    assert a.is_leader and not b.is_leader
    assert runs["b"] == 0
    # The leader's connection dies (a crash): PostgreSQL frees the lock and b takes over.
    a_elector = a.elector
    server.call(a.stop())
    assert a_elector._conn is None
    assert _wait_for(lambda: b.is_leader, timeout=5)
    assert _wait_for(lambda: runs["b"] > 0)
    assert _wait_for(lambda: SchedulerLeader.get(name="scheduler").instance_id == server.rt.instance_id)
    server.call(b.stop())


def test_scheduler_stops_cleanly_mid_task(server):
    started = []

    def slow(rt):
        started.append(1)
        time.sleep(0.3)

    scheduler = Scheduler(server.rt, [Task("slow", 0.01, slow)], Elector())
    server.call(scheduler.start())
    assert _wait_for(lambda: started)
    server.call(scheduler.stop())
    count = len(started)
    time.sleep(0.5)
    assert len(started) == count
    assert not scheduler.is_leader
    assert asyncio.iscoroutinefunction(scheduler.stop)


def test_task_runs_are_recorded_in_bulk_with_exact_counts(server, monkeypatch):
    """A run is not a write transaction of its own: the first run is recorded, then at most
    one record per interval carries the runs since; a new error is recorded at once."""
    import coordd.scheduler.core as core

    monkeypatch.setattr(core, "RECORD_EVERY_S", 0.5)
    outcome = {"error": ""}

    def task(rt):
        if outcome["error"]:
            raise ValueError(outcome["error"])

    scheduler = Scheduler(server.rt, [Task("bulk", 60, task)], Elector())
    [bulk] = scheduler.tasks
    for _ in range(5):
        server.call(scheduler.run_once(bulk))
    row = SchedulerTaskRun.get(name="bulk")
    assert (row.run_count, row.failure_count) == (1, 0), "only the first run wrote"
    outcome["error"] = "boom"
    server.call(scheduler.run_once(bulk))
    row = SchedulerTaskRun.get(name="bulk")
    assert (row.run_count, row.failure_count, row.last_error) == (6, 1, "ValueError: boom")
    server.call(scheduler.run_once(bulk))
    time.sleep(0.6)
    server.call(scheduler.run_once(bulk))
    row = SchedulerTaskRun.get(name="bulk")
    assert (row.run_count, row.failure_count) == (8, 3), "every run counted once the interval passed"
