"""The heartbeat tracker: per-process last-seen in memory, flushed in batches by a loop.

A beat costs no database write: last-seen lives in memory and is flushed in batches, to
Redis every second when configured (where every replica's detector reads it) and to the
database every second without Redis, every five with it; each database flush moves the
nodes' indexed `deadline_time` (domain/node/heartbeats.py: `record_last_seen`).

With Redis, each flush there also moves the node's deadline in a sorted set
(`<prefix>:node:deadline`, scores only ever move forward): that set is what finds a silent
node within its window. The database's deadlines, written five times less often, are then
a backstop DB_SLACK_S later (if Redis is lost, detection is that much later, never wrong):
written as last seen + window they fell due between two database flushes for every node
with a window under five seconds, and detection spent its batches moving deadlines of nodes
that were beating. The rules (what a beat means, what is late, what is DOWN) are the
domain's; this module keeps the state, the loop and the Redis client.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import weakref
from datetime import UTC, datetime
from typing import Any

import structlog

from coordd import metrics
from coordd.core.errors import Unavailable
from coordd.core.events import Event
from coordd.domain import node
from coordd.domain.node import heartbeats as rules
from coordd.domain.node.heartbeats import AssignedView, BeatChange, NodeInfo
from coordd.runtime import Runtime

log = structlog.get_logger("coordd.node")

FLUSH_INTERVAL_S = 1.0
# Beat-driven changes (PENDING, UP, replica reports) queue here and are written in batches
# of at most CHANGE_BATCH_MAX nodes, CHANGE_BATCH_S apart: between two batches the database
# writer (SQLite's lock is not fair) is free for the last-seen flush and detection.
CHANGE_BATCH_S = 0.15
CHANGE_BATCH_MAX = 200
# The event loop's lag is sampled this often; detection reads the worst of the last samples.
LAG_SAMPLE_S = 0.25
LAG_SAMPLES = 20
# Lateness of UP nodes' beats counts as the daemon's backlog only as the median of at least
# this many beats (one node back from a real silence is not the daemon being behind).
LATENESS_MIN_BEATS = 20
DB_FLUSH_WITH_REDIS_S = 5.0
# With Redis, how much later than the window the database's deadlines fall (the next
# database flush moves them before that while the node beats).
DB_SLACK_S = DB_FLUSH_WITH_REDIS_S + FLUSH_INTERVAL_S
# Drops deadline entries the detector settled, unless a beat moved one forward meanwhile.
_SETTLE_LUA = """
for i = 1, #ARGV, 2 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 0
"""
# Cached assignments are re-read at least this often even without an event.
ASSIGNMENT_TTL_S = 5.0


def _micros(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: int) -> datetime:
    seconds, micros = divmod(int(value), 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


class Tracker:
    """Per-process heartbeat state. Mutated only on the event loop; flushes hand a
    snapshot to a worker thread."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.last_seen: dict[str, datetime] = {}
        self.dirty: dict[str, datetime] = {}
        # Taken from `dirty`, not yet in the database (with Redis, flushed there less often).
        self.pending: dict[str, tuple[datetime, float]] = {}
        self._last_db_flush = time.monotonic()
        self.info: dict[str, NodeInfo] = {}
        self.key_node: dict[str, str] = {}
        self.streak: dict[str, int] = {}
        self.reported: dict[str, dict[str, str]] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self.assignments: dict[str, tuple[float, list[AssignedView]]] = {}
        # Beat-driven changes not yet written (node -> merged change), those being written,
        # and the unary calls waiting for their change to commit.
        self.queued: dict[str, list[BeatChange]] = {}
        self.writing: set[str] = set()
        self.waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._queued_event = asyncio.Event()
        self._writer_lock = asyncio.Lock()
        self.change_batches = 0
        self.lag_samples: list[float] = [0.0]
        # How late (past their interval) UP nodes' beats were read since the last sample.
        self.lateness: list[float] = []
        self.beats = 0
        self._beats_counted = 0
        self.flushes = 0
        self.redis: Any = None
        self.redis_key = f"{rt.settings.redis_prefix}:node:last_seen"
        self.deadline_key = f"{rt.settings.redis_prefix}:node:deadline"
        self._settle: Any = None
        # Whether the last flush reached Redis (the database's deadlines may lag by DB_SLACK_S).
        self._in_redis = False
        if rt.settings.redis_url:
            import redis

            self.redis = redis.Redis.from_url(
                rt.settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
            self._settle = self.redis.register_script(_SETTLE_LUA)
        rt.bus.add_listener(self._on_events)
        self._loop_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None

    # -- events (hints: the flush re-reads statuses anyway) --

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            if event.type == node.STATUS_CHANGED:
                node_id = event.subject.partition("/")[2]
                info = self.info.get(node_id)
                if info is not None:
                    self._set_status(info, str(event.data.get("to", info.status)))
            elif event.type == "node.assignments_changed":
                self.assignments.pop(event.subject.partition("/")[2], None)
            elif event.type == "node.project.updated":
                project_id = str(event.data.get("project", ""))
                for node_id in [n for n, i in self.info.items() if i.project_id == project_id]:
                    self.info.pop(node_id, None)
            elif event.type == "node.decommissioned":
                node_id = event.subject.partition("/")[2]
                self.key_node.pop(str(event.data.get("api_key", "")), None)
                # A decommissioned node never beats again: forget it, memory stays bounded.
                tables: tuple[dict[str, Any], ...] = (
                    self.info,
                    self.last_seen,
                    self.streak,
                    self.reported,
                    self.metrics,
                    self.assignments,
                )
                for table in tables:
                    table.pop(node_id, None)

    def _set_status(self, info: NodeInfo, status: str) -> None:
        if rules.resets_streak(info.status, status):
            self.streak[info.node_id] = 0
        info.status = status

    # -- beats --

    def known_metric_keys(self, node_id: str, metrics: dict[str, float]) -> bool:
        """The same metric names as the node's last beat (already checked then)."""
        last = self.metrics.get(node_id)
        return last is not None and last.keys() == metrics.keys()

    def cached_node(self, api_key_id: str) -> NodeInfo | None:
        node_id = self.key_node.get(api_key_id)
        return self.info.get(node_id) if node_id else None

    def remember(self, api_key_id: str, info: NodeInfo) -> None:
        self.key_node[api_key_id] = info.node_id
        self.info[info.node_id] = info

    def beat(
        self,
        info: NodeInfo,
        now: datetime,
        reports: list[tuple[str, str, str]],
        metrics: dict[str, float],
    ) -> BeatChange | None:
        """Records a beat in memory; returns what must be written now, if anything.
        `metrics` is kept as given (the caller's own dict)."""
        rules.check_can_beat(info)
        node_id = info.node_id
        previous = self.last_seen.get(node_id)
        if previous is not None and info.status == rules.UP:
            self.lateness.append((now - previous).total_seconds() - info.interval_s)
        self.last_seen[node_id] = now
        self.dirty[node_id] = now
        self.beats += 1
        if metrics:
            self.metrics[node_id] = metrics
        status: str | None = None
        if rules.counts_beats(info.status):
            streak = self.streak.get(node_id, 0) + 1
            self.streak[node_id] = streak
            status = rules.status_after_beats(info, streak)
        changed = rules.changed_reports(self.reported.get(node_id, {}), reports) if reports else {}
        if status is None and not changed:
            return None
        return BeatChange(node_id, now, status, changed)

    def applied(self, change: BeatChange, status: str) -> None:
        known = self.reported.setdefault(change.node_id, {})
        for workload_id, (state, _) in change.reports.items():
            known[workload_id] = state
        info = self.info.get(change.node_id)
        # A newer change queued meanwhile knows better than this batch's stored status.
        if info is not None and change.node_id not in self.queued:
            self._set_status(info, status)

    # -- beat-driven changes, written in batches --

    def queue(self, info: NodeInfo, change: BeatChange) -> None:
        """The change takes effect in memory at once (status, reports) and is queued for
        the writer. A node's changes are written in order (PENDING, then UP: both
        transitions are stored); replica reports merge into the change before them."""
        changes = self.queued.setdefault(change.node_id, [])
        last = changes[-1] if changes else None
        if last is not None and change.status in (None, last.status):
            merged = {**last.reports, **change.reports}
            changes[-1] = BeatChange(change.node_id, change.time, last.status, merged)
        else:
            changes.append(change)
        if change.status is not None:
            self._set_status(info, change.status)
        known = self.reported.setdefault(change.node_id, {})
        for workload_id, (state, _) in change.reports.items():
            known[workload_id] = state
        self._queued_event.set()

    async def committed(self, info: NodeInfo) -> str:
        """Waits until the node's queued change (if any) is written; returns the stored
        status. Raises what the batch's write raised."""
        node_id = info.node_id
        while node_id in self.queued or node_id in self.writing:
            if node_id in self.queued:
                waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                self.waiters.setdefault(node_id, []).append(waiter)
                self._queued_event.set()
                return await waiter
            async with self._writer_lock:  # the batch being written: wait for it
                pass
        return self.info.get(node_id, info).status

    async def write_changes(self) -> int:
        """Writes up to CHANGE_BATCH_MAX nodes' queued changes in one transaction (worker
        thread). Returns how many nodes."""
        async with self._writer_lock:
            if not self.queued:
                return 0
            # The nodes a unary call waits for first, then the oldest queued.
            order = [n for n in self.waiters if n in self.queued]
            order += [n for n in self.queued if n not in self.waiters]
            batch = {n: self.queued.pop(n) for n in order[:CHANGE_BATCH_MAX]}
            self.writing = set(batch)
            waiters = {n: self.waiters.pop(n) for n in list(self.waiters) if n in batch}
            changes = [change for node_changes in batch.values() for change in node_changes]
            try:
                statuses = await self.rt.run(rules.apply_beats, self.rt, changes)
            except BaseException as exc:
                # Not lost: put back before anything newer, retried by the next batch.
                for node_id, node_changes in batch.items():
                    self.queued[node_id] = [*node_changes, *self.queued.get(node_id, [])]
                stopped = Unavailable("the daemon is stopping; retry shortly")
                error = exc if isinstance(exc, Exception) else stopped
                for futures in waiters.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(error)
                raise
            finally:
                self.writing = set()
            self.change_batches += 1
            for node_id, node_changes in batch.items():
                status = statuses.get(node_id)
                if status is not None:
                    for change in node_changes:
                        self.applied(change, status)
                for future in waiters.get(node_id, []):
                    if not future.done():
                        if status is None:
                            future.set_exception(Unavailable("the heartbeat could not be stored; retry"))
                        else:
                            future.set_result(status)
            return len(batch)

    async def _writer_loop(self) -> None:
        stopping = self.rt.stopping
        while not stopping.is_set():
            if not self.queued:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued_event.wait(), FLUSH_INTERVAL_S)
                self._queued_event.clear()
                continue
            if not self.waiters:
                # Let the batch fill (a recovering fleet's changes go in one transaction)
                # and leave the writer to the flush and detection in between.
                await asyncio.sleep(CHANGE_BATCH_S)
            try:
                await self.write_changes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("beat changes write failed; will retry", error=str(exc))
                await asyncio.sleep(CHANGE_BATCH_S)

    # -- the daemon's own backlog --

    async def _lag_loop(self) -> None:
        """Samples the daemon's backlog: how late the event loop wakes a timer, or (when
        the loop keeps time but gRPC hands beats over late) the median lateness of the UP
        nodes' beats read since the last sample. A loaded daemon reads beats that late, and
        detection must not blame the nodes for it."""
        loop = asyncio.get_running_loop()
        stopping = self.rt.stopping
        while not stopping.is_set():
            scheduled = loop.time() + LAG_SAMPLE_S
            await asyncio.sleep(LAG_SAMPLE_S)
            lag = max(0.0, loop.time() - scheduled)
            lateness, self.lateness = self.lateness, []
            if len(lateness) >= LATENESS_MIN_BEATS:
                lag = max(lag, statistics.median_low(lateness))
            self.lag_samples = [*self.lag_samples[-(LAG_SAMPLES - 1) :], lag]
            metrics.HEARTBEAT_BACKLOG.set(self.backlog_s())
            self._count_beats()

    def _count_beats(self) -> None:
        """Adds the beats since the last call to coordd_heartbeats_total (a counter's lock
        per beat would cost more than the beat's own bookkeeping)."""
        if self.beats > self._beats_counted:
            metrics.HEARTBEATS.inc(self.beats - self._beats_counted)
            self._beats_counted = self.beats

    def backlog_s(self) -> float:
        """The worst backlog sampled in the last ~5 s (any thread may read it)."""
        return max(self.lag_samples)

    def cached_assignments(self, node_id: str) -> list[AssignedView] | None:
        hit = self.assignments.get(node_id)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def cache_assignments(self, node_id: str, views: list[AssignedView]) -> None:
        self.assignments[node_id] = (time.monotonic() + ASSIGNMENT_TTL_S, views)

    # -- flushing --

    def take_dirty(self) -> dict[str, tuple[datetime, float]]:
        batch = {n: (t, self.info[n].window_s if n in self.info else 0.0) for n, t in self.dirty.items()}
        self.dirty = {}
        return batch

    def write_redis(self, batch: dict[str, tuple[datetime, float]]) -> bool:
        """Worker thread: last-seen to Redis, where every replica's detector reads it."""
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self.redis_key, mapping={n: _micros(t) for n, (t, _) in batch.items()})
            deadlines = {n: _micros(t) + int(w * 1_000_000) for n, (t, w) in batch.items() if w}
            if deadlines:
                pipe.zadd(self.deadline_key, deadlines, gt=True)
            pipe.execute()
            return True
        except Exception as exc:  # Redis is a cache here: the database is the record
            log.warning("redis last-seen write failed; flushing to the database instead", error=str(exc))
            return False

    def write_db(self, batch: dict[str, tuple[datetime, float]], slack_s: float = 0.0) -> dict[str, str]:
        """Worker thread: last-seen and the nodes' deadlines (`slack_s` later than the
        window) in one transaction. Returns the stored statuses, which correct any event
        this process missed."""
        statuses = rules.record_last_seen(self.rt, batch, slack_s=slack_s)
        self.flushes += 1
        return statuses

    async def flush(self, *, database: bool = True) -> int:
        """Hands the beats since the last flush to Redis (when configured) and, when
        `database`, everything not yet stored to the database (queued status changes
        first). Returns the last-seen rows written."""
        while database and self.queued:
            await self.write_changes()
        batch = self.take_dirty()
        if batch and self.redis is not None:
            self._in_redis = await self.rt.run(self.write_redis, batch)
            database = database or not self._in_redis
        self.pending.update(batch)
        if not database or not self.pending:
            return 0
        pending, self.pending = self.pending, {}
        # Each earlier batch in `pending` reached Redis (else it had been flushed here then).
        slack = DB_SLACK_S if self._in_redis else 0.0
        try:
            statuses = await self.rt.run(self.write_db, pending, slack)
        except BaseException:
            # Not lost: merged back under anything newer that arrived meanwhile.
            self.pending = {**pending, **self.pending}
            raise
        self._last_db_flush = time.monotonic()
        for node_id, status in statuses.items():
            info = self.info.get(node_id)
            # A change still queued or being written is newer than what the flush read.
            if info is not None and node_id not in self.queued and node_id not in self.writing:
                self._set_status(info, status)
        return len(pending)

    def start(self) -> None:
        if self._loop_task is None:
            loop = asyncio.get_running_loop()
            self._loop_task = loop.create_task(self._flush_loop(), name="node-flush")
            self._writer_task = loop.create_task(self._writer_loop(), name="node-beat-changes")
            self._lag_task = loop.create_task(self._lag_loop(), name="node-loop-lag")

    async def _flush_loop(self) -> None:
        stopping = self.rt.stopping
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), FLUSH_INTERVAL_S)
            # With Redis, detectors read last-seen there: the database is written less often.
            database = (
                stopping.is_set()
                or self.redis is None
                or time.monotonic() - self._last_db_flush >= DB_FLUSH_WITH_REDIS_S
            )
            try:
                await self.flush(database=database)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat flush failed; will retry", error=str(exc))

    def latest_seen(self, node_ids: list[str]) -> dict[str, datetime]:
        """Freshest last-seen known to this process or, with Redis, to any replica."""
        out = {n: self.last_seen[n] for n in node_ids if n in self.last_seen}
        if self.redis is not None and node_ids:
            try:
                values = self.redis.hmget(self.redis_key, node_ids)
            except Exception as exc:
                log.warning("redis last-seen read failed", error=str(exc))
                values = [None] * len(node_ids)
            for node_id, raw in zip(node_ids, values, strict=True):
                if raw is not None:
                    seen = _from_micros(int(raw))
                    if node_id not in out or seen > out[node_id]:
                        out[node_id] = seen
        return out

    # -- deadlines in Redis (the detector's; domain/node/heartbeats.py: SharedDeadlines) --

    def late_nodes(self, now: datetime, limit: int) -> dict[str, float]:
        """Nodes whose deadline in Redis passed by `now`: node -> that deadline (micros)."""
        try:
            rows = self.redis.zrangebyscore(
                self.deadline_key, "-inf", _micros(now), start=0, num=limit, withscores=True
            )
        except Exception as exc:  # the database's deadlines are the backstop
            log.warning("redis deadline read failed", error=str(exc))
            return {}
        return {member.decode(): score for member, score in rows}

    def settle_late(self, entries: dict[str, float]) -> None:
        """Forgets deadlines the detector dealt with, unless a beat moved one meanwhile."""
        if not entries:
            return
        args = [part for node_id, score in entries.items() for part in (node_id, repr(score))]
        try:
            self._settle(keys=[self.deadline_key], args=args)
        except Exception as exc:  # read again next tick: at worst looked at twice
            log.warning("redis deadline settle failed", error=str(exc))

    def shared_deadlines(self) -> rules.SharedDeadlines | None:
        if self.redis is None:
            return None
        return rules.SharedDeadlines(self.late_nodes, self.settle_late, DB_SLACK_S)


_trackers: weakref.WeakKeyDictionary[Runtime, Tracker] = weakref.WeakKeyDictionary()


def tracker_for(rt: Runtime) -> Tracker:
    tracker = _trackers.get(rt)
    if tracker is None:
        tracker = _trackers[rt] = Tracker(rt)
    return tracker


# -- the scheduler's detection tasks, with this process's freshest last-seen ------------------


def detect_down(rt: Runtime) -> int:
    tracker = tracker_for(rt)
    return node.detect_down(
        rt, tracker.latest_seen, backlog_s=tracker.backlog_s(), shared=tracker.shared_deadlines()
    )


def run_maintenance(rt: Runtime) -> int:
    return node.run_maintenance(rt, tracker_for(rt).latest_seen)
