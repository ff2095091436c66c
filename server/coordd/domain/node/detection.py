"""Up/down detection: which nodes are late, and when silence makes a node DOWN.

Detection selects nodes whose deadline has passed through that index, re-checks the
freshest last-seen (`latest_seen`: this process's memory, Redis) before believing it, and
applies two guards: a failover grace after a restart or leader change (a restart alone
never makes a node DOWN), and the mass-outage guard (most of a project going DOWN at once
is treated as our outage, not theirs).
"""

from __future__ import annotations

import time
import weakref
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

import coordd.domain.node.alerts as alerts
from coordd.domain.node.heartbeats import LastSeen, SharedDeadlines
from coordd.domain.node.machine import node_down, open_incident
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.node import health, monitoring, queries
from coordd.store.node.models import DOWN, PENDING, UP, Node, Project

log = structlog.get_logger("coordd.node")

# A detector that has not run for this long lost (or never had) leadership: grace again.
LEADER_GAP_S = 10.0
# What agents are told (HeartbeatResponse): the longest wait between reconnect attempts,
# a third of the restart grace (so an agent is back with two thirds to spare), within bounds.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 15.0


def restart_grace_s(window_s: float) -> float:
    """After a restart or failover every node gets one full window from when detection
    resumes before silence can make it DOWN."""
    return window_s


def reconnect_backoff_max_s(window_s: float) -> float:
    return max(RECONNECT_MIN_S, min(RECONNECT_MAX_S, restart_grace_s(window_s) / 3))


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


def freshest(node: Node | health.DueNode, fresh: dict[str, datetime]) -> datetime | None:
    """The latest of the stored last-seen and the one known in memory or Redis."""
    seen_times = [t for t in (node.last_seen_time, fresh.get(node.id)) if t is not None]
    return max(seen_times) if seen_times else None


def backlog_allowance_s(backlog_s: float, window_s: float) -> float:
    """How much later than its window a node may be heard before it is DOWN, when the
    daemon itself is behind by `backlog_s` (its event loop woke that late: it could not
    have read the beat in time). Bounded by one window, so a real silence is still
    detected within window + backlog, at most twice the window."""
    return min(max(backlog_s, 0.0), window_s)


def detect_down(
    rt: Runtime,
    latest_seen: LastSeen,
    batch: int = 1000,
    *,
    backlog_s: float = 0.0,
    shared: SharedDeadlines | None = None,
) -> int:
    """Scheduler task: marks DOWN the nodes whose deadline passed. Returns how many.
    `backlog_s`: how far behind the daemon is (the event loop's recent lag); a node late
    by no more than that is not blamed for it (`backlog_allowance_s`). `shared`: the
    deadlines every replica moves (Redis), read besides the database's, which then lag
    by up to `shared.slack_s`."""
    state = _detector(rt)
    late = shared.late(rt.now(), batch) if shared is not None else {}
    # Most ticks find nothing due: look before queueing for the writer (on SQLite behind
    # the heartbeat flush) with a transaction that would write nothing.
    if not late:
        with rt.store.read():
            if not health.due_brief(rt.now(), 1, skip_locked=False):
                return 0
    slack = timedelta(seconds=shared.slack_s if shared is not None else 0.0)
    with rt.store.write() as tx:
        due = health.due_brief(tx.now, batch, skip_locked=rt.store.is_postgres)
        listed = {n.id for n in due}
        due += health.watched_brief([n for n in late if n not in listed], skip_locked=rt.store.is_postgres)
        marked, kept = _decide(tx, state, due, latest_seen, backlog_s, slack) if due else (0, set())
    if shared is not None and late:
        _settle(rt, shared, late, {n.id for n in due} - kept)
    return marked


def _settle(rt: Runtime, shared: SharedDeadlines, late: dict[str, float], decided: set[str]) -> None:
    """Late entries dealt with leave the shared set: those decided here (DOWN, graced) and
    those of nodes that cannot go DOWN (not UP or PENDING, or gone). A node left out of the
    transaction because another one held its row stays, to be looked at next tick."""
    unseen = [n for n in late if n not in decided]
    with rt.store.read():
        statuses = health.statuses_of(unseen) if unseen else {}
    gone = {n for n in unseen if statuses.get(n) not in (UP, PENDING)}
    shared.settle({n: score for n, score in late.items() if n in decided or n in gone})


def _decide(
    tx: Tx,
    state: _Detector,
    due: list[health.DueNode],
    latest_seen: LastSeen,
    backlog_s: float,
    slack: timedelta,
) -> tuple[int, set[str]]:
    """detect_down's decisions in its transaction. Returns how many nodes went DOWN and the
    nodes that were heard after all or are late by no more than the backlog."""
    marked = 0
    fresh = latest_seen([n.id for n in due])
    projects = queries.projects_by_ids({n.project_id for n in due})
    silent: dict[str, dict[str, datetime | None]] = defaultdict(dict)
    # Heard from after all: their deadlines move in one statement, not a save each.
    moved: list[tuple[str, datetime, datetime | None]] = []
    graced: list[tuple[str, datetime]] = []
    for due_node in due:
        project = projects[due_node.project_id]
        window = timedelta(seconds=project.window_s)
        seen = freshest(due_node, fresh)
        if seen is not None and seen + window > tx.now:
            # A beat the database has not seen yet (another replica, an unflushed batch).
            moved.append((due_node.id, seen, seen + window + slack))
            continue
        allowance = timedelta(seconds=backlog_allowance_s(backlog_s, project.window_s))
        if allowance and seen is not None and seen + window + allowance > tx.now:
            # Late by no more than our own backlog: look again when the allowance ends.
            moved.append((due_node.id, seen, seen + window + allowance))
            continue
        grace_until = state.active_since + timedelta(seconds=restart_grace_s(project.window_s))
        if tx.now < grace_until:
            graced.append((due_node.id, grace_until))
            continue
        silent[project.id][due_node.id] = seen
    if moved:
        health.store_last_seen_many(moved)
    health.save_deadlines(graced)
    for project_id, seen_of in silent.items():
        # Only the nodes going DOWN are read whole.
        nodes = sorted(queries.nodes_by_ids(set(seen_of)).values(), key=lambda n: n.id)
        for node in nodes:
            if seen_of[node.id] is not None:
                node.last_seen_time = seen_of[node.id]
        marked += _mark_down(tx, projects[project_id], nodes)
    return marked, {node_id for node_id, _, _ in moved}


def _mark_down(tx: Tx, project: Project, nodes: list[Node]) -> int:
    window_s = project.window_s
    watched = health.count_nodes_in(project.id, [UP, PENDING, DOWN])
    recent = health.count_node_transitions_to(project.id, DOWN, tx.now - timedelta(seconds=window_s))
    open_mass = health.open_incident_of(project.id)
    share = (recent + len(nodes)) / max(watched, 1)
    mass = open_mass is not None or (
        watched >= project.mass_outage_min_nodes and share >= project.mass_outage_share
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
        owners = queries.node_owner_ids(project.id)
        open_incident(
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
    # Read once for the batch: the project's monitoring policy and silences in force.
    policy = alerts.policy_for(project.id)
    silences = monitoring.active_silences(project.id, tx.now)
    for node in nodes:
        reason = f"no heartbeat for {window_s:g}s"
        if mass:
            reason += " during a mass outage (not counted)"
        # The outage began at the last beat that arrived, not when it was noticed.
        since = node.last_seen_time
        node_down(tx, node, project, reason, suppressed=mass, since=since, policy=policy, silences=silences)
    return len(nodes)
