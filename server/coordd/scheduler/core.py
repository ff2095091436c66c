"""The built-in scheduler: named tasks on intervals, run only by the elected leader.

Tasks are plain functions of the Runtime that run in the DB thread pool (or coroutine
functions, awaited on the loop, that do their own off-loop work). Each selects only what
is due and is idempotent, so a crash mid-run loses nothing; one failing task never stops
the others. A task's optional `stop` is awaited when its loop stops (leadership lost,
shutdown), before the database closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from coordd import metrics
from coordd.domain.status import SCHEDULER
from coordd.runtime import Runtime
from coordd.store.models import SchedulerLeader, SchedulerTaskRun

log = structlog.get_logger("coordd.scheduler")

_ADVISORY_KEY = 0x636F6F726464  # "coordd"


@dataclass(frozen=True)
class Task:
    name: str
    interval: float
    fn: Callable[[Runtime], Any]
    stop: Callable[[Runtime], Awaitable[None]] | None = None


class Elector:
    """SQLite: the process holding the data-dir file lock is the only possible leader."""

    async def acquire(self, rt: Runtime) -> bool:
        return True

    async def release(self, rt: Runtime) -> None:
        return None


class PostgresElector(Elector):
    """A session-level advisory lock on a dedicated connection: released by PostgreSQL
    when the holder's connection dies, so a crashed leader is replaced within one lease."""

    def __init__(self) -> None:
        self._conn: Any = None

    def _acquire(self, rt: Runtime) -> bool:
        import psycopg2

        try:
            if self._conn is None:
                params = rt.store.db.connect_params
                self._conn = psycopg2.connect(dbname=rt.store.db.database, **params)
                self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (_ADVISORY_KEY,))
                    if not cur.fetchone()[0]:
                        self._conn.close()
                        self._conn = None
                        return False
                return True
            with self._conn.cursor() as cur:
                cur.execute("SELECT 1")
            return True
        except psycopg2.Error as exc:
            log.warning("leader lock connection lost", error=str(exc))
            self._close()
            return False

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    async def acquire(self, rt: Runtime) -> bool:
        return await rt.run(self._acquire, rt)

    async def release(self, rt: Runtime) -> None:
        await rt.run(self._close)


class Scheduler:
    def __init__(self, rt: Runtime, tasks: list[Task], elector: Elector) -> None:
        self.rt = rt
        self.tasks = tasks
        self.elector = elector
        self.is_leader = False
        self._main: asyncio.Task[None] | None = None
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {t.name: asyncio.Event() for t in tasks}

    async def start(self) -> None:
        self._main = asyncio.create_task(self._lead(), name="scheduler")

    def kick(self, name: str) -> None:
        """Runs a task now instead of at its next interval (e.g. a deadline became due)."""
        event = self._wake.get(name)
        if event is not None:
            event.set()

    async def _lead(self) -> None:
        period = max(self.rt.settings.scheduler_lease_s / 3, 0.05)
        while True:
            try:
                leader = await self.elector.acquire(self.rt)
            except Exception as exc:  # never let the election loop die
                log.error("leader election failed", error=str(exc))
                leader = False
            if leader and not self.is_leader:
                log.info("scheduler leadership acquired", instance=self.rt.instance_id)
                self._start_loops()
            elif not leader and self.is_leader:
                log.warning("scheduler leadership lost", instance=self.rt.instance_id)
                await self._stop_loops()
            self.is_leader = leader
            metrics.IS_LEADER.set(1 if leader else 0)
            if leader:
                with contextlib.suppress(Exception):
                    await self.rt.run(self._heartbeat)
            await asyncio.sleep(period)

    def _heartbeat(self) -> None:
        with self.rt.store.write() as tx:
            row = SchedulerLeader.get_or_none(SchedulerLeader.name == SCHEDULER)
            if row is None:
                SchedulerLeader.create(
                    name=SCHEDULER, instance_id=self.rt.instance_id, since_time=tx.now, heartbeat_time=tx.now
                )
                return
            if row.instance_id != self.rt.instance_id:
                row.instance_id = self.rt.instance_id
                row.since_time = tx.now
            row.heartbeat_time = tx.now
            row.save()

    def _start_loops(self) -> None:
        for task in self.tasks:
            self._loops[task.name] = asyncio.create_task(self._loop(task), name=f"task:{task.name}")

    async def _stop_loops(self) -> None:
        loops = list(self._loops.values())
        self._loops.clear()
        for loop in loops:
            loop.cancel()
        for loop in loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        if loops:
            for task in self.tasks:
                if task.stop is not None:
                    try:
                        await task.stop(self.rt)
                    except Exception as exc:
                        log.error("task stop failed", task=task.name, error=str(exc))

    async def _loop(self, task: Task) -> None:
        wake = self._wake[task.name]
        # Ends once _stop_loops has dropped it, even if asyncio.wait_for (Python 3.11) swallowed
        # the cancellation because the wake event fired at that moment.
        while self._loops.get(task.name) is asyncio.current_task():
            wake.clear()
            await self.run_once(task)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), task.interval)

    async def run_once(self, task: Task) -> None:
        started_wall = self.rt.now()
        started = time.perf_counter()
        error = ""
        try:
            if inspect.iscoroutinefunction(task.fn):
                result = await task.fn(self.rt)
            else:
                result = await self.rt.run(task.fn, self.rt)
            if result:
                log.info("task did work", task=task.name, result=result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            metrics.TASK_FAILURES.labels(task.name).inc()
            log.error("task failed", task=task.name, exc_info=exc)
        elapsed = time.perf_counter() - started
        metrics.TASK_DURATION.labels(task.name).observe(elapsed)
        with contextlib.suppress(Exception):
            await self.rt.run(self._record, task, started_wall, elapsed, error)

    def _record(self, task: Task, started: Any, elapsed: float, error: str) -> None:
        with self.rt.store.write():
            row = SchedulerTaskRun.get_or_none(SchedulerTaskRun.name == task.name)
            exists = row is not None
            if row is None:
                row = SchedulerTaskRun(name=task.name, run_count=0, failure_count=0)
            row.interval_s = task.interval
            row.last_start_time = started
            row.last_duration_s = elapsed
            row.last_error = error
            row.run_count += 1
            row.failure_count += 1 if error else 0
            row.save(force_insert=not exists)

    async def stop(self) -> None:
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        await self._stop_loops()
        await self.elector.release(self.rt)
        self.is_leader = False
        metrics.IS_LEADER.set(0)
