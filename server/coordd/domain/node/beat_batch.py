"""A batch of beat-driven changes in one transaction, each project's work done once.

The tracker's writer (adapters/heartbeats.py) hands over the changes queued since its last
batch: nodes heard from again (UNKNOWN/PENDING/DOWN -> PENDING or UP) and replica reports.
Per node the rules are those of `machine.set_node_status` and `machine.node_up`; what a
node's UP brings for its project (flapping counts, the mass outage's end, placement, the
workloads' states) is read and written once per project per batch instead of once per
node, and the nodes' rows and transitions are written by one statement each: a fleet
coming UP after a restart costs a few statements per batch, not a dozen per node.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from coordd.domain.node.machine import after_up, emit_status_changed, refresh_workloads
from coordd.store.db import Tx
from coordd.store.node import health, queries
from coordd.store.node.models import DECOMMISSIONED, DOWN, PENDING, UNKNOWN, UP, Node, Project


@dataclass
class BeatChange:
    """What a beat changed that must be written now."""

    node_id: str
    time: datetime
    status: str | None
    reports: dict[str, tuple[str, str]] = field(default_factory=dict)


def apply_changes(tx: Tx, changes: list[BeatChange]) -> dict[str, str]:
    """Applies `changes` in order (a node's later change wins: UP after PENDING, both
    stored). Returns each node's stored status (DECOMMISSIONED: nothing was written)."""
    nodes = queries.nodes_with_projects({c.node_id for c in changes})
    out: dict[str, str] = {}
    transitions: list[dict[str, object]] = []
    changed: dict[str, Node] = {}
    came_up: dict[str, dict[str, Node]] = defaultdict(dict)
    for change in changes:
        node = nodes.get(change.node_id)
        if node is None or node.status == DECOMMISSIONED:
            out[change.node_id] = DECOMMISSIONED
            continue
        if change.status is not None and node.status in (UNKNOWN, PENDING, DOWN):
            project = node.project
            if change.status == UP:
                reason = f"{project.successes_before_up} consecutive heartbeats"
            else:
                reason = "heartbeat received"
            if _set_status(tx, node, project, change.status, reason, transitions) and node.status == UP:
                came_up[project.id][node.id] = node
            node.last_seen_time = change.time
            changed[node.id] = node
        out[change.node_id] = node.status
    health.insert_transitions(transitions)
    health.save_node_statuses(list(changed.values()))
    for project_nodes in came_up.values():
        up = [n for n in project_nodes.values() if n.status == UP]
        if up:
            after_up(tx, up[0].project, up)
    _apply_reports(tx, changes, nodes)
    return {n: status if status == DECOMMISSIONED else nodes[n].status for n, status in out.items()}


def _set_status(
    tx: Tx, node: Node, project: Project, to: str, reason: str, transitions: list[dict[str, object]]
) -> bool:
    """`machine.set_node_status` for a beat's change (PENDING or UP), written by the batch."""
    if node.status == to:
        return False
    before = node.status
    transitions.append(
        {
            "kind": "node",
            "subject_id": node.id,
            "project_id": project.id,
            "from_status": before,
            "to_status": to,
            "reason": reason[:500],
            "time": tx.now,
            "excluded": False,
            "effective_time": None,
        }
    )
    node.status = to
    node.status_reason = reason[:500]
    node.status_time = tx.now
    node.suppressed = False
    # Heard from: the node can fall silent from now on.
    node.deadline_time = tx.now + timedelta(seconds=project.window_s)
    node.update_time = tx.now
    emit_status_changed(tx, node.id, project.id, before, to, reason)
    return True


def _apply_reports(tx: Tx, changes: list[BeatChange], nodes: dict[str, Node]) -> None:
    """Replica reports, after the statuses (a workload counts replicas on UP nodes)."""
    for change in changes:
        node = nodes.get(change.node_id)
        if node is None or node.status == DECOMMISSIONED or not change.reports:
            continue
        affected: set[str] = set()
        for workload_id, (state, message) in change.reports.items():
            if health.report_replica(workload_id, node.id, state, message[:500], tx.now):
                affected.add(workload_id)
        if affected:
            refresh_workloads(
                tx, affected, f"replica on nodes/{node.id} reported", inhibited=node.status != UP
            )
