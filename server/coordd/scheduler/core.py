"""The built-in scheduler: named tasks on intervals, run only by the elected leader.

Tasks are plain functions of the Runtime that run in the DB thread pool (or coroutine
functions, awaited on the loop, that do their own off-loop work). Each selects only what
is due and is idempotent, so a crash mid-run loses nothing; one failing task never stops
the others. A task's optional `stop` is awaited when its loop stops (leadership lost,
shutdown), before the database closes.

Leadership on PostgreSQL is a lease in the database (store/scheduler_lease.py): the holder
renews it every third of `scheduler_lease_s`; when it expires (by the database's clock)
another replica takes it with the next epoch. The holder keeps its own deadline on the
monotonic clock, from the moment it *sent* the last successful renewal (the database's
expiry is later than that), and runs no task once the deadline has passed, even before it
learns that someone else leads. Every write a task commits is fenced by its epoch, so a
leader that was paused or cut off mid-task cannot commit after a takeover. On SQLite the
process holding the data-dir file lock is the only possible leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from coordd import metrics
from coordd.runtime import Runtime
from coordd.store import scheduler_lease
from coordd.store.db import Store
from coordd.store.scheduler_lease import FENCE, Fence, LeadershipLost

log = structlog.get_logger("coordd.scheduler")

# A follower looks at least this often (a dead holder's lease is taken at once, see
# store/scheduler_lease.py); the holder renews every third of the lease.
FOLLOWER_POLL_S = 1.0
# A task's runs are recorded (scheduler_task_run, GetStatus) at most this often (and at
# least once a leadership lease, so a record younger than a lease shows a live leader),
# unless it fails differently: the counts then include the runs since.
RECORD_EVERY_S = 5.0
# The holder stops acting this fraction of a lease after sending its last good renewal:
# the database's expiry is a full lease after it *received* the renewal.
DEADLINE_FRACTION = 0.9


@dataclass(frozen=True)
class Task:
    name: str
    interval: float
    fn: Callable[[Runtime], Any]
    stop: Callable[[Runtime], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Leadership:
    holder: str
    epoch: int


class Elector:
    """SQLite: the process holding the data-dir file lock is the only possible leader."""

    fenced = False

    def __init__(self, instance_id: str | None = None) -> None:
        self.instance_id = instance_id
        self._held: Leadership | None = None

    def holder(self, rt: Runtime) -> str:
        return self.instance_id or rt.instance_id

    async def acquire(self, rt: Runtime) -> Leadership | None:
        """Claims or renews leadership; the leadership held now, or None."""
        self._held = Leadership(self.holder(rt), 0)
        return self._held

    def held(self) -> Leadership | None:
        """The leadership last confirmed (its deadline may have passed meanwhile)."""
        return self._held

    def valid(self, leadership: Leadership) -> bool:
        """Whether `leadership` may still act (its holder's deadline is ahead)."""
        return True

    def retry_in(self, period: float) -> float:
        """How long to wait before the next attempt (at most `period`)."""
        return period

    async def release(self, rt: Runtime) -> None:
        return None


class PostgresElector(Elector):
    """The lease in scheduler_leader, claimed and renewed on a dedicated connection from a
    thread of its own: a renewal stuck on a hung connection neither holds a pool thread nor
    delays the deadline, and the next attempt waits behind it instead of piling up."""

    fenced = True

    def __init__(self, instance_id: str | None = None) -> None:
        super().__init__(instance_id)
        self._conn: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coordd-lease")
        # (leadership, monotonic deadline), replaced as one value: read from other threads.
        self._state: tuple[Leadership | None, float] = (None, 0.0)
        # A follower tries again right after the current lease runs out, not a period later.
        self._retry_at: float | None = None

    def held(self) -> Leadership | None:
        return self._state[0]

    def valid(self, leadership: Leadership) -> bool:
        held, deadline = self._state
        return held == leadership and time.monotonic() < deadline

    async def acquire(self, rt: Runtime) -> Leadership | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._elect, rt)

    def _connect(self, rt: Runtime) -> Any:
        if self._conn is None:
            import psycopg2

            lease_ms = int(rt.settings.scheduler_lease_s * 1000)
            # Neither connecting (connect_timeout, from the store's settings) nor a statement may
            # block the elector thread for ever.
            params = {"connect_timeout": 5, **rt.store.db.connect_params}
            self._conn = psycopg2.connect(
                dbname=rt.store.db.database,
                **params,
                application_name=scheduler_lease.APPLICATION_NAME,
                options=f"-c statement_timeout={max(lease_ms // 2, 50)}",
                keepalives=1,
                keepalives_idle=max(int(rt.settings.scheduler_lease_s / 3), 1),
                keepalives_interval=1,
                keepalives_count=3,
                tcp_user_timeout=max(lease_ms // 2, 100),
            )
            self._conn.autocommit = True
        return self._conn

    def _elect(self, rt: Runtime) -> Leadership | None:
        import psycopg2

        lease_s = rt.settings.scheduler_lease_s
        lease_us = max(int(lease_s * 1_000_000), 1)
        holder = self.holder(rt)
        current = self._state[0]
        sent = time.monotonic()
        try:
            conn = self._connect(rt)
            if current is not None and scheduler_lease.renew(conn, holder, current.epoch, lease_us):
                leadership: Leadership | None = current
            else:
                if current is not None:
                    # Lost: a new session, without the advisory lock this leadership took for
                    # older versions (see scheduler_lease.claim).
                    self._close()
                    conn = self._connect(rt)
                claimed = scheduler_lease.claim(conn, holder, lease_us)
                leadership = Leadership(holder, claimed.epoch) if claimed.epoch is not None else None
                self._retry_at = None if leadership else time.monotonic() + claimed.remaining_s + 0.01
        except psycopg2.Error as exc:
            log.warning("scheduler lease statement failed", error=str(exc).strip())
            self._close()
            # Not confirmed, not refused: the deadline already set decides.
            return current if current is not None and self.valid(current) else None
        self._state = (leadership, sent + lease_s * DEADLINE_FRACTION if leadership else 0.0)
        return leadership

    def retry_in(self, period: float) -> float:
        retry_at, self._retry_at = self._retry_at, None
        if retry_at is None:
            return period
        return min(max(retry_at - time.monotonic(), 0.0), period)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _release(self, rt: Runtime) -> None:
        held = self._state[0]
        self._state = (None, 0.0)
        if held is not None and self._conn is not None:
            with contextlib.suppress(Exception):
                scheduler_lease.release(self._conn, held.holder, held.epoch)
        self._close()

    async def release(self, rt: Runtime) -> None:
        self._state = (None, 0.0)  # stop acting now, whatever the database says
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(loop.run_in_executor(self._executor, self._release, rt), 5)
        self._executor.shutdown(wait=False, cancel_futures=True)


# Stores whose transactions check the fence (the hook is added once per store).
_FENCED: weakref.WeakSet[Store] = weakref.WeakSet()


class Scheduler:
    def __init__(self, rt: Runtime, tasks: list[Task], elector: Elector) -> None:
        self.rt = rt
        self.tasks = tasks
        self.elector = elector
        self._leadership: Leadership | None = None
        self._main: asyncio.Task[None] | None = None
        self._stopping = False
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {t.name: asyncio.Event() for t in tasks}
        self._period = max(rt.settings.scheduler_lease_s / 3, 0.05)
        # Runs not yet recorded per task: (runs, failures, when last recorded, last error).
        self._unrecorded: dict[str, tuple[int, int, float, str]] = {}
        if elector.fenced and rt.store not in _FENCED:
            rt.store.before_commit(scheduler_lease.fence)
            _FENCED.add(rt.store)

    @property
    def is_leader(self) -> bool:
        leadership = self._leadership
        return leadership is not None and self.elector.valid(leadership)

    @property
    def leadership(self) -> Leadership | None:
        return self._leadership

    async def start(self) -> None:
        self._main = asyncio.create_task(self._lead(), name="scheduler")

    def kick(self, name: str) -> None:
        """Runs a task now instead of at its next interval (e.g. a deadline became due)."""
        event = self._wake.get(name)
        if event is not None:
            event.set()

    async def _lead(self) -> None:
        while not self._stopping:
            try:
                # Bounded: a renewal stuck on a hung connection must not stop the checks below.
                await asyncio.wait_for(self.elector.acquire(self.rt), self._period)
            except TimeoutError:
                log.info("scheduler lease renewal is slow", instance=self.elector.holder(self.rt))
            except Exception as exc:  # never let the election loop die
                log.error("leader election failed", error=str(exc))
            await self._follow(self.elector.held())
            metrics.IS_LEADER.set(1 if self.is_leader else 0)
            if self._leadership is not None and not self.elector.fenced:
                with contextlib.suppress(Exception):
                    await self.rt.run(self._heartbeat)
            period = self._period if self._leadership else min(self._period, FOLLOWER_POLL_S)
            await asyncio.sleep(self.elector.retry_in(period))

    async def _follow(self, held: Leadership | None) -> None:
        """Starts or stops the task loops when the leadership held changes."""
        if held == self._leadership:
            return
        if self._leadership is not None:
            log.warning(
                "scheduler leadership lost", instance=self._leadership.holder, epoch=self._leadership.epoch
            )
            await self._stop_loops()
        self._leadership = held
        if held is not None:
            log.info("scheduler leadership acquired", instance=held.holder, epoch=held.epoch)
            self._start_loops(held)

    def _heartbeat(self) -> None:
        with self.rt.store.write() as tx:
            scheduler_lease.note_leader(self.elector.holder(self.rt), tx.now)

    def _start_loops(self, leadership: Leadership) -> None:
        for task in self.tasks:
            self._loops[task.name] = asyncio.create_task(
                self._loop(task, leadership), name=f"task:{task.name}"
            )

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

    async def _loop(self, task: Task, leadership: Leadership) -> None:
        wake = self._wake[task.name]
        if self.elector.fenced:
            # This loop's context (copied into the DB threads by Runtime.run): every write
            # the task commits checks the epoch.
            FENCE.set(
                Fence(
                    leadership.holder,
                    leadership.epoch,
                    lambda: self.elector.valid(leadership),
                    max(int(self.rt.settings.scheduler_lease_s * 1000), 100),
                )
            )
        # Ends once _stop_loops has dropped it, even if asyncio.wait_for (Python 3.11) swallowed
        # the cancellation because the wake event fired at that moment.
        while self._loops.get(task.name) is asyncio.current_task():
            wait = task.interval
            if self.elector.valid(leadership):
                wake.clear()
                await self.run_once(task, leadership)
            else:
                # Past the deadline: act no more; run again once renewed, or end when replaced.
                wait = min(task.interval, self._period)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)

    async def run_once(self, task: Task, leadership: Leadership | None = None) -> None:
        leadership = leadership or Leadership(self.elector.holder(self.rt), 0)
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
        except LeadershipLost as exc:
            # Refused by the fence: nothing of this run committed, and the next renewal (or
            # the deadline) ends this leadership.
            log.warning("task write refused: leadership ended", task=task.name, reason=str(exc))
            return
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:2000]
            metrics.TASK_FAILURES.labels(task.name).inc()
            log.error("task failed", task=task.name, exc_info=exc)
        elapsed = time.perf_counter() - started
        metrics.TASK_DURATION.labels(task.name).observe(elapsed)
        runs, failures, recorded_at, last_error = self._unrecorded.get(task.name, (0, 0, 0.0, ""))
        runs, failures = runs + 1, failures + (1 if error else 0)
        now = time.monotonic()
        # Each run is a write transaction of its own to record: a dozen a second that queue
        # on SQLite's writer behind the heartbeat flush. A task's first run, a change of its
        # error and otherwise one record per RECORD_EVERY_S (with the runs counted since).
        every = min(RECORD_EVERY_S, self.rt.settings.scheduler_lease_s)
        if error == last_error and recorded_at and now - recorded_at < every:
            self._unrecorded[task.name] = (runs, failures, recorded_at, last_error)
            return
        self._unrecorded[task.name] = (0, 0, now, error)
        with contextlib.suppress(Exception):
            await self.rt.run(self._record, task, started_wall, elapsed, error, leadership, runs, failures)

    def _record(
        self,
        task: Task,
        started: Any,
        elapsed: float,
        error: str,
        leadership: Leadership,
        runs: int = 1,
        failures: int | None = None,
    ) -> None:
        failures = (1 if error else 0) if failures is None else failures
        with self.rt.store.write():
            scheduler_lease.record_run(
                task.name,
                task.interval,
                started,
                elapsed,
                error,
                leadership.holder,
                leadership.epoch,
                runs=runs,
                failures=failures,
            )

    async def stop(self) -> None:
        # The task loops first, while the leader loop still renews the lease: work in flight
        # (a delivery being POSTed) then records its outcome under a valid fence.
        await self._stop_loops()
        self._stopping = True
        if self._main is not None:
            # Python 3.11's asyncio.wait_for can swallow a cancellation that arrives as the
            # awaited election finishes; the loop then sleeps on. Cancel until it is done.
            while not self._main.done():
                self._main.cancel()
                await asyncio.wait({self._main}, timeout=0.5)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._main.result()
        await self._stop_loops()  # in case the leader loop started them again meanwhile
        await self.elector.release(self.rt)
        self._leadership = None
        metrics.IS_LEADER.set(0)
