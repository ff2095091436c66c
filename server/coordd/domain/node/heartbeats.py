"""Heartbeats: what a beat means (the rules), and the rare beats that write at once.

A beat costs no database write: the runtime adapter (adapters/heartbeats.py) keeps
last-seen in memory and flushes it in batches through `record_last_seen`, which moves each
node's indexed `deadline_time` (last seen + the project's window: later than that, the node
is late). A beat that changes something (a status, a replica state) updates the tracker
at once and is queued: the tracker's writer applies the queued changes in batches, one
transaction each, through `apply_beats` (a unary Heartbeat waits for its batch to commit).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from coordd.core.errors import FailedPrecondition, PermissionDenied, Violations
from coordd.core.principal import Principal
from coordd.domain.node.beat_batch import BeatChange, apply_changes
from coordd.runtime import Runtime
from coordd.store.node import health, queries
from coordd.store.node.models import DECOMMISSIONED, DOWN, PENDING, REPLICA_STATES, UNKNOWN, UP

log = structlog.get_logger("coordd.node")

MAX_REPORTS = 1000
MAX_METRICS = 64
METRIC_KEY_RE = re.compile(r"^[A-Za-z0-9._/-]{1,64}$")

# The freshest last-seen of these nodes known anywhere (this process's memory, Redis).
LastSeen = Callable[[list[str]], dict[str, datetime]]


@dataclass(frozen=True)
class SharedDeadlines:
    """Deadlines every replica moves at each beat flush (Redis), ahead of the database's,
    which then lag by up to `slack_s`: `late(now, limit)` gives the nodes whose deadline
    passed (node -> the deadline read), `settle(entries)` forgets those dealt with unless
    a beat has moved them since."""

    late: Callable[[datetime, int], dict[str, float]]
    settle: Callable[[dict[str, float]], None]
    slack_s: float


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


# -- the rules of a beat -------------------------------------------------------------------


def check_can_beat(info: NodeInfo) -> None:
    if info.status == DECOMMISSIONED:
        raise FailedPrecondition("this node is decommissioned", reason="NODE_DECOMMISSIONED")


def counts_beats(status: str) -> bool:
    """A node not (or no longer) UP counts consecutive beats on its way to UP."""
    return status in (UNKNOWN, PENDING, DOWN)


def status_after_beats(info: NodeInfo, streak: int) -> str | None:
    """UP after `successes_before_up` consecutive beats, PENDING before; None: unchanged."""
    target = UP if streak >= info.successes else PENDING
    return target if target != info.status else None


def resets_streak(before: str, after: str) -> bool:
    """Consecutive beats count from the last time the node stopped being heard."""
    return after != before and after not in (UP, PENDING)


def changed_reports(
    known: dict[str, str], reports: Iterable[tuple[str, str, str]]
) -> dict[str, tuple[str, str]]:
    """The replica reports whose state differs from the last one stored."""
    return {w: (s, m) for w, s, m in reports if known.get(w) != s}


def check_reports(reports: list[tuple[str, str, str]]) -> None:
    v = Violations()
    if len(reports) > MAX_REPORTS:
        v.add("workloads", f"at most {MAX_REPORTS} reports a beat")
    for index, (_, state, message) in enumerate(reports):
        if state not in REPLICA_STATES:
            v.add(f"workloads[{index}].state", "unknown replica state")
        if len(message) > 500:
            v.add(f"workloads[{index}].message", "at most 500 characters")
    v.raise_if_any()


def check_metrics(metrics: dict[str, float]) -> None:
    """At most MAX_METRICS gauges a beat, short plain keys, finite values: a node cannot
    make the daemon keep unbounded state in memory."""
    v = Violations()
    if len(metrics) > MAX_METRICS:
        v.add("metrics", f"at most {MAX_METRICS} keys")
        v.raise_if_any()
    for key, value in metrics.items():
        if not METRIC_KEY_RE.match(key):
            v.add(f"metrics[{key[:64]}]", "keys: letters, digits, . _ / -, at most 64 characters")
        elif not math.isfinite(value):
            v.add(f"metrics[{key}]", "must be a finite number")
    v.raise_if_any()


def check_metric_values(metrics: dict[str, float]) -> None:
    """`check_metrics` for gauges whose names were checked on an earlier beat."""
    if not all(math.isfinite(value) for value in metrics.values()):
        check_metrics(metrics)  # names the offending keys


def check_reported_workloads(
    rt: Runtime, info: NodeInfo, reports: list[tuple[str, str, str]], assigned: set[str]
) -> None:
    """A report about a workload that does not exist in the node's project is a client
    error (INVALID_ARGUMENT). One that exists but is not (or no longer) assigned here is
    accepted and ignored: the node may not have seen the change yet. Looked up only for
    the reports that are not about a cached assignment."""
    others = [w for w, _, _ in reports if w not in assigned]
    if not others:
        return
    known = health.workload_ids_in_project(info.project_id, others)
    v = Violations()
    for index, (workload_id, _, _) in enumerate(reports):
        if workload_id not in assigned and workload_id not in known:
            v.add(
                f"workloads[{index}].workload", f"no workload workloads/{workload_id} in this node's project"
            )
    v.raise_if_any()


# -- reads and writes ----------------------------------------------------------------------


def node_for_key(rt: Runtime, who: Principal) -> NodeInfo:
    """Resolves the node behind a node API key (cached by the caller)."""
    node = queries.node_of_key(who.api_key_id) if who.api_key_id else None
    if node is None:
        raise PermissionDenied(
            "heartbeats need the node API key returned by RegisterNode", reason="NODE_KEY_REQUIRED"
        )
    if node.status == DECOMMISSIONED:
        raise FailedPrecondition("this node is decommissioned", reason="NODE_DECOMMISSIONED")
    return NodeInfo(
        node.node_id,
        node.project_id,
        node.status,
        node.heartbeat_interval_s,
        node.window_s,
        node.successes_before_up,
    )


def apply_beat(rt: Runtime, change: BeatChange) -> str:
    """Writes a status change (PENDING, UP) or replica reports; returns the stored status."""
    with rt.store.write() as tx:
        status = apply_changes(tx, [change])[change.node_id]
    if status == DECOMMISSIONED:
        raise FailedPrecondition("this node is decommissioned", reason="NODE_DECOMMISSIONED")
    return status


def apply_beats(rt: Runtime, changes: list[BeatChange]) -> dict[str, str]:
    """Worker thread: the beat-driven changes queued since the last batch, in one
    transaction (the tracker's writer: a recovering fleet costs one transaction per batch,
    not one per node; domain/node/beat_batch.py). Returns each node's stored status
    (DECOMMISSIONED: none was written). When the batch fails, each node's changes are
    retried on their own so one bad change does not hold back the others; a node whose
    changes still fail is left out of the result."""
    try:
        with rt.store.write() as tx:
            return apply_changes(tx, changes)
    except Exception as exc:
        if len({c.node_id for c in changes}) == 1:
            raise
        log.warning("batched beat changes failed; applying one by one", error=str(exc), changes=len(changes))
    by_node: dict[str, list[BeatChange]] = {}
    for change in changes:
        by_node.setdefault(change.node_id, []).append(change)
    out: dict[str, str] = {}
    for node_id, node_changes in by_node.items():
        try:
            with rt.store.write() as tx:
                out[node_id] = apply_changes(tx, node_changes)[node_id]
        except Exception as exc:
            log.warning("beat change failed", node=node_id, error=str(exc))
    return out


def load_assignments(node_id: str) -> list[AssignedView]:
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
        for a in health.assignments_with_workloads(node_id)
    ]


def record_last_seen(
    rt: Runtime, batch: dict[str, tuple[datetime, float]], *, slack_s: float = 0.0
) -> dict[str, str]:
    """Worker thread: last-seen and the nodes' deadlines (`batch`: node -> (seen, window);
    `slack_s` later when SharedDeadlines detect on time) in one transaction. Returns the
    stored statuses, which correct any event the caller missed."""
    rows = [
        # Only a node that can go DOWN (UP or PENDING) has a deadline to move (the store keeps NULL).
        (node_id, seen, seen + timedelta(seconds=window_s + slack_s) if window_s else None)
        for node_id, (seen, window_s) in sorted(batch.items())
    ]
    with rt.store.write():
        health.store_last_seen_many(rows)
        return health.statuses_of(sorted(batch))
