"""Flapping: a node that changes state more than the project's `flap_changes` times
within `flap_window_s` is FLAPPING. One notice when it starts (`node.flapping`) and one
when it settles (`node.flapping_settled`, after `flap_settle_s` without a change); in
between its incidents are still opened and closed (states, incidents and uptime stay
true) but their notifications are held back. Settling while DOWN notifies the open
outage through the settle notice, which then counts as its opening (escalation and the
recovery follow as for any notified outage).
"""

from __future__ import annotations

from datetime import timedelta

import structlog

import coordd.domain.node.alerts as alerts
from coordd.domain.node.policies import MonitoringPolicy
from coordd.domain.notify import enqueue
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.node import health, monitoring, queries
from coordd.store.node.models import DOWN, Node, Project

log = structlog.get_logger("coordd.node")

STARTED = "node.flapping"
SETTLED = "node.flapping_settled"


def observe(tx: Tx, node: Node, project: Project, policy: MonitoringPolicy) -> bool:
    """After one of the node's UP/DOWN changes: is it FLAPPING (now, or already)?"""
    if node.flapping_since is not None:
        return True
    since = tx.now - timedelta(seconds=policy.flap_window_s)
    return _judge(tx, node, project, policy, monitoring.count_changes_since(node.id, since))


def observe_many(tx: Tx, nodes: list[Node], project: Project, policy: MonitoringPolicy) -> None:
    """`observe` for many nodes of one project after their changes: one counting query."""
    counting = [n for n in nodes if n.flapping_since is None]
    if not counting:
        return
    since = tx.now - timedelta(seconds=policy.flap_window_s)
    counts = monitoring.count_changes_since_many([n.id for n in counting], since)
    for node in counting:
        _judge(tx, node, project, policy, counts.get(node.id, 0))


def _judge(tx: Tx, node: Node, project: Project, policy: MonitoringPolicy, changes: int) -> bool:
    """FLAPPING starts when the node changed more than the policy allows in its window."""
    if changes <= policy.flap_changes:
        return False
    node.flapping_since = tx.now
    monitoring.save_flapping(node)
    log.warning("node flapping", node=node.id, changes=changes, window_s=policy.flap_window_s)
    data = {**alerts.node_data(node, project), "changes": changes, "window_seconds": policy.flap_window_s}
    if alerts.silence_over(node, tx.now) is None:
        key = f"{node.id}:flapping:{tx.now.isoformat()}"
        enqueue(tx, alerts.recipients(node, project), STARTED, key, data)
    tx.emit("node.flapping", f"nodes/{node.id}", {"project": f"projects/{project.id}", "flapping": True})
    return True


def settle_flapping(rt: Runtime, batch: int = 500) -> int:
    """Scheduler task: ends FLAPPING for the nodes quiet for their project's settle time."""
    settled = 0
    with rt.store.write() as tx:
        for node in monitoring.flapping_nodes(batch):
            policy = alerts.policy_for(node.project_id)
            if node.status_time + timedelta(seconds=policy.flap_settle_s) > tx.now:
                continue
            project = queries.get_project(node.project_id)
            since = node.flapping_since
            node.flapping_since = None
            monitoring.save_flapping(node)
            data = {**alerts.node_data(node, project), "status": node.status.upper()}
            incident = health.open_incident_of(node.id) if node.status == DOWN else None
            if incident is not None:
                data.update(alerts.opened_payload(incident, data))
            silenced = alerts.silence_over(node, tx.now) is not None
            if not silenced:
                # Settled while DOWN: this notice is the outage's opening (its dedup key).
                key = (
                    f"{incident.id}:opened"
                    if incident is not None
                    else f"{node.id}:settled:{since.isoformat()}"
                )
                enqueue(tx, alerts.recipients(node, project), SETTLED, key, data)
                if incident is not None and incident.held_since is not None:
                    incident.held_since = None
                    incident.notified_time = tx.now
                    alerts.schedule(incident, policy)
                    monitoring.save_incident(incident)
            tx.emit(
                "node.flapping", f"nodes/{node.id}", {"project": f"projects/{project.id}", "flapping": False}
            )
            settled += 1
    return settled
