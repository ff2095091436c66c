"""Escalation and reminders (issue 14): a project's monitoring policy says when a DOWN
incident that nobody acknowledged is also sent to a second channel (`node.escalated`),
and how often a reminder (`node.reminder`) goes out while it stays open.
`acknowledge_incident` stops both; the recovery still reaches every channel told.
"""

from __future__ import annotations

from dataclasses import asdict

import coordd.domain.node.alerts as alerts
from coordd.core.errors import DomainError, FailedPrecondition, NotFound, Violations
from coordd.core.principal import Principal
from coordd.domain.node.access import owned_project, require_operator, visible_node
from coordd.domain.node.policies import MonitoringPolicy, check_monitoring_policy
from coordd.domain.notify import enqueue, enqueue_to_channels, owned_live_channel
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.node import monitoring, queries
from coordd.store.node.models import Incident

ESCALATED = "node.escalated"
REMINDER = "node.reminder"


def get_monitoring_policy(who: Principal, project_id: str) -> MonitoringPolicy:
    require_operator(who)
    owned_project(who, project_id)
    return alerts.policy_for(project_id)


def update_monitoring_policy(
    rt: Runtime, who: Principal, project_id: str, changes: dict[str, object]
) -> MonitoringPolicy:
    """Applies `changes` (field -> value) to the project's policy; the escalation channel
    must be one of the project owner's live channels."""
    require_operator(who)
    with rt.store.write() as tx:
        project = owned_project(who, project_id)
        policy = MonitoringPolicy(**{**asdict(alerts.policy_for(project_id)), **changes})
        v = Violations()
        check_monitoring_policy(v, policy)
        if (
            policy.escalation_channel
            and owned_live_channel(project.owner_id, policy.escalation_channel) is None
        ):
            v.add("monitoring_policy.escalation_channel", "one of the project owner's channels")
        v.raise_if_any()
        values = asdict(policy)
        values["escalation_channel_id"] = values.pop("escalation_channel")
        monitoring.save_policy(project_id, {**values, "update_time": tx.now})
        tx.emit(
            "node.monitoring_policy.updated", f"projects/{project_id}", {"project": f"projects/{project_id}"}
        )
    return policy


def acknowledge_incident(rt: Runtime, who: Principal, incident_id: str) -> Incident:
    """Someone is on it: no escalation, no reminders. Idempotent."""
    require_operator(who)
    with rt.store.write() as tx:
        incident = monitoring.get_incident(incident_id)
        if incident is None:
            raise NotFound(
                f"incidents/{incident_id} not found", metadata={"resource": f"incidents/{incident_id}"}
            )
        try:
            if incident.kind == "node":
                visible_node(who, incident.subject_id)
            else:
                owned_project(who, incident.project_id)
        except DomainError:  # someone else's incident is reported as missing
            raise NotFound(
                f"incidents/{incident_id} not found", metadata={"resource": f"incidents/{incident_id}"}
            ) from None
        if incident.end_time is not None:
            raise FailedPrecondition("the incident is closed already", reason="INCIDENT_CLOSED")
        if incident.acknowledged_time is None:
            incident.acknowledged_time = tx.now
            incident.acknowledged_by = who.user_id
            incident.next_notify_time = None
            monitoring.save_incident(incident)
            tx.emit("node.incident.acknowledged", f"incidents/{incident.id}", {"by": f"users/{who.user_id}"})
    return incident


def run_escalations(rt: Runtime, batch: int = 200) -> int:
    """Scheduler task: escalations and reminders that are due. Returns how many were sent."""
    sent = 0
    with rt.store.write() as tx:
        for incident in monitoring.due_incidents(tx.now, batch):
            sent += _due(tx, incident)
    return sent


def _due(tx: Tx, incident: Incident) -> int:
    if incident.end_time is not None or incident.acknowledged_time is not None or incident.kind != "node":
        incident.next_notify_time = None
        monitoring.save_incident(incident)
        return 0
    node = queries.node_with_project(incident.subject_id)
    if node is None:
        incident.next_notify_time = None
        monitoring.save_incident(incident)
        return 0
    project = node.project
    policy = alerts.policy_for(project.id)
    base = incident.notified_time or incident.start_time
    payload = {
        **alerts.opened_payload(incident, alerts.node_data(node, project)),
        "down_seconds": (tx.now - incident.start_time).total_seconds(),
    }
    sent = 0
    silenced = alerts.silence_over(node, tx.now) is not None
    if (
        policy.escalate_after_s
        and policy.escalation_channel
        and incident.escalated_time is None
        and (tx.now - base).total_seconds() >= policy.escalate_after_s
    ):
        incident.escalated_time = tx.now
        if not silenced:
            key = f"{incident.id}:escalated"
            sent += enqueue_to_channels(tx, {policy.escalation_channel}, ESCALATED, key, payload)
    if policy.repeat_every_s and (tx.now - base).total_seconds() >= policy.repeat_every_s * (
        incident.reminders + 1
    ):
        incident.reminders += 1
        if not silenced:
            key = f"{incident.id}:reminder:{incident.reminders}"
            sent += enqueue(tx, alerts.recipients(node, project), REMINDER, key, payload)
            if incident.escalated_time is not None:
                sent += enqueue_to_channels(tx, {policy.escalation_channel}, REMINDER, key, payload)
    alerts.schedule(incident, policy)
    monitoring.save_incident(incident)
    return sent
