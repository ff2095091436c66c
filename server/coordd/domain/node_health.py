"""Heartbeats and up/down detection.

A beat costs no database write: last-seen lives in memory and is flushed in batches, to
Redis every second when configured (where every replica's detector reads it) and to the
database every second without Redis, every five with it; each database flush moves the
nodes' indexed `deadline_time`. Only a beat that changes something (a status, a replica
state) writes at once.

Detection selects nodes whose deadline has passed through that index, re-checks the
freshest last-seen (this process's memory, Redis) before believing it, and applies two
guards: a failover grace after a restart or leader change (a restart alone never makes a
node DOWN), and the mass-outage guard (most of a project going DOWN at once is treated
as our outage, not theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import peewee
import structlog

from coordd.core.errors import FailedPrecondition, PermissionDenied, Violations
from coordd.core.events import Event
from coordd.core.principal import Principal
from coordd.domain import node_state
from coordd.runtime import Runtime
from coordd.store.node_models import (
    DECOMMISSIONED,
    DOWN,
    MAINTENANCE,
    PENDING,
    REPLICA_STATES,
    UNKNOWN,
    UP,
    Assignment,
    Incident,
    MaintenanceWindow,
    Node,
    Project,
    Transition,
    Workload,
)

log = structlog.get_logger("coordd.node")

FLUSH_INTERVAL_S = 1.0
DB_FLUSH_WITH_REDIS_S = 5.0
# Cached assignments are re-read at least this often even without an event.
ASSIGNMENT_TTL_S = 5.0
# A detector that has not run for this long lost (or never had) leadership: grace again.
LEADER_GAP_S = 10.0

SCHEDULED = "scheduled"
ACTIVE = "active"
ENDED = "ended"


def _micros(t: datetime) -> int:
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: int) -> datetime:
    seconds, micros = divmod(int(value), 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


@dataclass
class NodeInfo:
    """What a beat needs about its node, cached per process."""

    node_id: str
    project_id: str
    status: str
    interval_s: float
    window_s: float
    successes: int


@dataclass(frozen=True)
class AssignedView:
    workload_id: str
    assignment_id: str
    spec: str
    cpu_millis: int
    memory_mb: int
    disk_gb: int
    gpu_count: int
    gpu_model: str


@dataclass
class BeatChange:
    """What a beat changed that must be written now."""

    node_id: str
    time: datetime
    status: str | None
    reports: dict[str, tuple[str, str]] = field(default_factory=dict)


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
        self.beats = 0
        self.flushes = 0
        self.redis: Any = None
        self.redis_key = f"{rt.settings.redis_prefix}:node:last_seen"
        if rt.settings.redis_url:
            import redis

            self.redis = redis.Redis.from_url(
                rt.settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
        rt.bus.add_listener(self._on_events)
        self._loop_task: asyncio.Task[None] | None = None

    # -- events (hints: the flush re-reads statuses anyway) --

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            if event.type == node_state.STATUS_CHANGED:
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
        # Consecutive beats count from the last time the node stopped being heard.
        if status != info.status and status not in (UP, PENDING):
            self.streak[info.node_id] = 0
        info.status = status

    # -- beats --

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
        reports: Iterable[tuple[str, str, str]],
        metrics: dict[str, float],
    ) -> BeatChange | None:
        """Records a beat in memory; returns what must be written now, if anything."""
        if info.status == DECOMMISSIONED:
            raise FailedPrecondition("this node is decommissioned", reason="NODE_DECOMMISSIONED")
        node_id = info.node_id
        self.last_seen[node_id] = now
        self.dirty[node_id] = now
        self.beats += 1
        if metrics:
            self.metrics[node_id] = dict(metrics)
        status: str | None = None
        if info.status in (UNKNOWN, PENDING, DOWN):
            streak = self.streak.get(node_id, 0) + 1
            self.streak[node_id] = streak
            target = UP if streak >= info.successes else PENDING
            if target != info.status:
                status = target
        known = self.reported.get(node_id, {})
        changed = {w: (s, m) for w, s, m in reports if known.get(w) != s}
        if status is None and not changed:
            return None
        return BeatChange(node_id, now, status, changed)

    def applied(self, change: BeatChange, status: str) -> None:
        known = self.reported.setdefault(change.node_id, {})
        for workload_id, (state, _) in change.reports.items():
            known[workload_id] = state
        info = self.info.get(change.node_id)
        if info is not None:
            self._set_status(info, status)

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
            self.redis.hset(self.redis_key, mapping={n: _micros(t) for n, (t, _) in batch.items()})
            return True
        except Exception as exc:  # Redis is a cache here: the database is the record
            log.warning("redis last-seen write failed; flushing to the database instead", error=str(exc))
            return False

    def write_db(self, batch: dict[str, tuple[datetime, float]]) -> dict[str, str]:
        """Worker thread: last-seen and the nodes' deadlines in one transaction. Returns
        the stored statuses, which correct any event this process missed."""
        with self.rt.store.write():
            for node_id, (seen, window_s) in sorted(batch.items()):
                deadline = _micros(seen + timedelta(seconds=window_s)) if window_s else None
                values: dict[Any, Any] = {Node.last_seen_time: seen}
                if deadline is not None:
                    # Only a node that can go DOWN (UP or PENDING) has a deadline to move.
                    values[Node.deadline_time] = peewee.Case(
                        None, ((Node.deadline_time.is_null(), None),), deadline
                    )
                Node.update(values).where(Node.id == node_id).execute()
            rows = Node.select(Node.id, Node.status).where(Node.id.in_(sorted(batch)))
            statuses = {row.id: row.status for row in rows}
        self.flushes += 1
        return statuses

    async def flush(self, *, database: bool = True) -> int:
        """Hands the beats since the last flush to Redis (when configured) and, when
        `database`, everything not yet stored to the database. Returns the rows written."""
        batch = self.take_dirty()
        if batch and self.redis is not None and not await self.rt.run(self.write_redis, batch):
            database = True
        self.pending.update(batch)
        if not database or not self.pending:
            return 0
        pending, self.pending = self.pending, {}
        try:
            statuses = await self.rt.run(self.write_db, pending)
        except BaseException:
            # Not lost: merged back under anything newer that arrived meanwhile.
            self.pending = {**pending, **self.pending}
            raise
        self._last_db_flush = time.monotonic()
        for node_id, status in statuses.items():
            info = self.info.get(node_id)
            if info is not None:
                self._set_status(info, status)
        return len(pending)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._flush_loop(), name="node-flush")

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


_trackers: weakref.WeakKeyDictionary[Runtime, Tracker] = weakref.WeakKeyDictionary()


def tracker_for(rt: Runtime) -> Tracker:
    tracker = _trackers.get(rt)
    if tracker is None:
        tracker = _trackers[rt] = Tracker(rt)
    return tracker


# -- beats: the rare writes ------------------------------------------------------------


def node_for_key(rt: Runtime, who: Principal) -> NodeInfo:
    """Resolves the node behind a node API key (cached by the caller)."""
    node = (
        Node.select(Node, Project).join(Project).where(Node.api_key == who.api_key_id).first()
        if who.api_key_id
        else None
    )
    if node is None:
        raise PermissionDenied(
            "heartbeats need the node API key returned by RegisterNode", reason="NODE_KEY_REQUIRED"
        )
    if node.status == DECOMMISSIONED:
        raise FailedPrecondition("this node is decommissioned", reason="NODE_DECOMMISSIONED")
    p = node.project
    return NodeInfo(node.id, p.id, node.status, p.heartbeat_interval_s, p.window_s, p.successes_before_up)


def check_reports(reports: list[tuple[str, str, str]]) -> None:
    v = Violations()
    for index, (_, state, message) in enumerate(reports):
        if state not in REPLICA_STATES:
            v.add(f"workloads[{index}].state", "unknown replica state")
        if len(message) > 500:
            v.add(f"workloads[{index}].message", "at most 500 characters")
    v.raise_if_any()


def apply_beat(rt: Runtime, change: BeatChange) -> str:
    """Writes a status change (PENDING, UP) or replica reports; returns the stored status."""
    with rt.store.write() as tx:
        node = Node.select(Node, Project).join(Project).where(Node.id == change.node_id).first()
        if node is None or node.status == DECOMMISSIONED:
            raise FailedPrecondition("this node is decommissioned", reason="NODE_DECOMMISSIONED")
        project = node.project
        if change.status is not None and node.status in (UNKNOWN, PENDING, DOWN):
            if change.status == UP:
                node_state.node_up(tx, node, project, f"{project.successes_before_up} consecutive heartbeats")
            else:
                node_state.set_node_status(tx, node, project, PENDING, "heartbeat received")
            node.last_seen_time = change.time
            node.save()
        affected: set[str] = set()
        for workload_id, (state, message) in change.reports.items():
            updated = (
                Assignment.update(state=state, message=message[:500], update_time=tx.now)
                .where(
                    (Assignment.workload == workload_id)
                    & (Assignment.node == node.id)
                    & ((Assignment.state != state) | (Assignment.message != message[:500]))
                )
                .execute()
            )
            if updated:
                affected.add(workload_id)
        if affected:
            node_state.refresh_workloads(
                tx, affected, f"replica on nodes/{node.id} reported", inhibited=node.status != UP
            )
        return node.status


def load_assignments(node_id: str) -> list[AssignedView]:
    rows = (
        Assignment.select(Assignment, Workload)
        .join(Workload)
        .where(Assignment.node == node_id)
        .order_by(Assignment.id)
    )
    return [
        AssignedView(
            a.workload_id,
            a.id,
            a.workload.spec,
            a.workload.cpu_millis,
            a.workload.memory_mb,
            a.workload.disk_gb,
            a.workload.gpu_count,
            a.workload.gpu_model,
        )
        for a in rows
    ]


# -- detection -------------------------------------------------------------------------


@dataclass
class _Detector:
    active_since: datetime
    last_run: float


_detectors: weakref.WeakKeyDictionary[Runtime, _Detector] = weakref.WeakKeyDictionary()


def _detector(rt: Runtime) -> _Detector:
    """When this process started detecting: the daemon's start, or the moment it became
    leader again after a gap. Every node gets one full window from then (failover grace)."""
    now_mono = time.monotonic()
    state = _detectors.get(rt)
    if state is None:
        state = _detectors[rt] = _Detector(rt.start_time, now_mono)
    elif now_mono - state.last_run > LEADER_GAP_S:
        state.active_since = rt.now()
        log.info(
            "node detection resumed; failover grace for every node", since=state.active_since.isoformat()
        )
    state.last_run = now_mono
    return state


def detect_down(rt: Runtime, batch: int = 1000) -> int:
    """Scheduler task: marks DOWN the nodes whose deadline passed. Returns how many."""
    tracker = tracker_for(rt)
    state = _detector(rt)
    marked = 0
    with rt.store.write() as tx:
        query = Node.select().where(Node.deadline_time <= tx.now).order_by(Node.deadline_time).limit(batch)
        if rt.store.is_postgres:
            query = query.for_update("FOR UPDATE SKIP LOCKED")
        due = list(query)
        if not due:
            return 0
        fresh = tracker.latest_seen([n.id for n in due])
        projects = {
            p.id: p for p in Project.select().where(Project.id.in_(sorted({n.project_id for n in due})))
        }
        silent: dict[str, list[Node]] = defaultdict(list)
        for node in due:
            project = projects[node.project_id]
            window = timedelta(seconds=project.window_s)
            seen_times = [t for t in (node.last_seen_time, fresh.get(node.id)) if t is not None]
            seen = max(seen_times) if seen_times else None
            if seen is not None and seen + window > tx.now:
                # A beat the database has not seen yet (another replica, an unflushed batch).
                node.last_seen_time, node.deadline_time = seen, seen + window
                node.save(only=[Node.last_seen_time, Node.deadline_time])
                continue
            grace_until = state.active_since + window
            if tx.now < grace_until:
                node.deadline_time = grace_until
                node.save(only=[Node.deadline_time])
                continue
            silent[project.id].append(node)
        for project_id, nodes in silent.items():
            marked += _mark_down(tx, projects[project_id], nodes)
    return marked


def _mark_down(tx: Any, project: Project, nodes: list[Node]) -> int:
    window_s = project.window_s
    watched = Node.select().where((Node.project == project.id) & Node.status.in_([UP, PENDING, DOWN])).count()
    recent = (
        Transition.select()
        .where(
            (Transition.project_id == project.id)
            & (Transition.kind == "node")
            & (Transition.to_status == DOWN)
            & (Transition.time > tx.now - timedelta(seconds=window_s))
        )
        .count()
    )
    open_mass = Incident.get_or_none((Incident.subject_id == project.id) & Incident.end_time.is_null())
    share = (recent + len(nodes)) / max(watched, 1)
    mass = open_mass is not None or (
        watched >= project.mass_outage_min_nodes and share > project.mass_outage_share
    )
    if mass and open_mass is None:
        cause = (
            f"mass outage: {recent + len(nodes)} of {watched} nodes went silent within {window_s:g}s; "
            "treated as a coordinator-side or network outage"
        )
        log.warning(
            "MASS OUTAGE: no per-node incidents, no uptime debit",
            project=project.id,
            down=recent + len(nodes),
            watched=watched,
            window_s=window_s,
        )
        owners = {n.owner_id for n in Node.select(Node.owner).where(Node.project == project.id)}
        node_state.open_incident(
            tx,
            "project",
            project.id,
            project.id,
            cause,
            inhibited=False,
            recipients={project.owner_id, *owners},
            event_type="project.mass_outage",
            data={"subject": f"projects/{project.id}", "project": f"projects/{project.id}", "nodes": watched},
        )
    for node in nodes:
        reason = f"no heartbeat for {window_s:g}s"
        if mass:
            reason += " during a mass outage (not counted)"
        node_state.node_down(tx, node, project, reason, suppressed=mass)
    return len(nodes)


# -- maintenance -----------------------------------------------------------------------


def _covered(window: MaintenanceWindow) -> list[Node]:
    query = Node.select().where(Node.status != DECOMMISSIONED)
    if window.node_id:
        query = query.where(Node.id == window.node_id)
    else:
        query = query.where(Node.project == window.project_id)
    return list(query.order_by(Node.id))


def _other_window_active(node: Node, window: MaintenanceWindow) -> bool:
    return (
        MaintenanceWindow.select()
        .where(
            (MaintenanceWindow.id != window.id)
            & (MaintenanceWindow.state == ACTIVE)
            & (
                (MaintenanceWindow.node == node.id)
                | ((MaintenanceWindow.project == node.project_id) & MaintenanceWindow.node.is_null())
            )
        )
        .exists()
    )


def run_maintenance(rt: Runtime, batch: int = 100) -> int:
    """Scheduler task: starts and ends due maintenance windows."""
    tracker = tracker_for(rt)
    done = 0
    with rt.store.write() as tx:
        due = list(
            MaintenanceWindow.select()
            .where(MaintenanceWindow.next_action_time <= tx.now)
            .order_by(MaintenanceWindow.next_action_time)
            .limit(batch)
        )
        for window in due:
            project = Project.get_by_id(window.project_id)
            nodes = _covered(window)
            if window.state == SCHEDULED:
                window.state, window.next_action_time = ACTIVE, window.end_time
                for node in nodes:
                    if node.status == MAINTENANCE:
                        continue
                    # An outage that runs into planned maintenance ends there: no debit after.
                    node_state.close_incident(
                        tx, node.id, "maintenance", recipients=set(), event_type="", data={}, notify=False
                    )
                    node_state.set_node_status(
                        tx,
                        node,
                        project,
                        MAINTENANCE,
                        f"maintenance window {window.id} started: {window.reason}",
                    )
            else:
                window.state, window.next_action_time = ENDED, None
                fresh = tracker.latest_seen([n.id for n in nodes])
                for node in nodes:
                    if node.status != MAINTENANCE or _other_window_active(node, window):
                        continue
                    seen_times = [t for t in (node.last_seen_time, fresh.get(node.id)) if t is not None]
                    seen = max(seen_times) if seen_times else None
                    if seen is None:
                        node_state.set_node_status(
                            tx, node, project, UNKNOWN, "maintenance ended; never heard from"
                        )
                    elif seen + timedelta(seconds=project.window_s) > tx.now:
                        node.last_seen_time = seen
                        node_state.node_up(tx, node, project, "maintenance ended; heartbeats current")
                    else:
                        node_state.node_down(
                            tx,
                            node,
                            project,
                            "still down when the maintenance window ended",
                            suppressed=False,
                        )
            window.save()
            tx.emit(
                "node.maintenance." + window.state,
                f"maintenanceWindows/{window.id}",
                {"project": f"projects/{project.id}"},
            )
            done += 1
    return done
