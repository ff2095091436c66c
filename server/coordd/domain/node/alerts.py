"""What a node incident tells whom, and when (issue 14): the shared rules of flapping
(flapping.py), silences (silences.py) and escalation (escalation.py).

An incident's opening is notified at once unless held back (the node is FLAPPING, or a
silence covers it): then `held_since` is set and nothing is sent until the hold ends
(the silence ends or the flapping settles while still DOWN: notified once). Its recovery
is notified exactly when its opening was, to every channel that heard of it (the
escalation channel included), with the downtime in the payload. Once notified and
until acknowledged or closed, `next_notify_time` says when escalation or the next
reminder is due.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from coordd.domain.node.policies import MonitoringPolicy
from coordd.domain.notify import enqueue
from coordd.store.db import Tx
from coordd.store.node import monitoring
from coordd.store.node.models import Incident, Node, Project, Silence


def policy_for(project_id: str) -> MonitoringPolicy:
    row = monitoring.policy_of(project_id)
    if row is None:
        return MonitoringPolicy()
    return MonitoringPolicy(
        row.flap_changes,
        row.flap_window_s,
        row.flap_settle_s,
        row.escalate_after_s,
        row.escalation_channel_id,
        row.repeat_every_s,
    )


def covers(silence: Silence, node: Node) -> bool:
    if silence.node_id:
        return silence.node_id == node.id
    if silence.label_key:
        return (node.labels or {}).get(silence.label_key) == silence.label_value
    return True


def silence_over(node: Node, now: datetime, *, ignoring: str = "") -> Silence | None:
    """The silence in force over the node now, if any (`ignoring` one that is ending)."""
    for silence in monitoring.active_silences(node.project_id, now):
        if silence.id != ignoring and covers(silence, node):
            return silence
    return None


def node_data(node: Node, project: Project) -> dict[str, Any]:
    return {
        "subject": f"nodes/{node.id}",
        "node": f"nodes/{node.id}",
        "node_name": node.display_name,
        "project": f"projects/{project.id}",
    }


def recipients(node: Node, project: Project) -> set[str]:
    return {node.owner_id, project.owner_id}


def opened_payload(incident: Incident, data: dict[str, Any]) -> dict[str, Any]:
    return {
        **data,
        "incident": f"incidents/{incident.id}",
        "cause": incident.cause,
        "start_time": incident.start_time.isoformat(),
    }


def announce_held(
    tx: Tx, incident: Incident, node: Node, project: Project, why: str, *, event_type: str = "node.down"
) -> bool:
    """Sends a held-back opening once (its dedup key is the opening's) and starts its
    escalation clock. False when it was not held (or is closed)."""
    if incident.held_since is None or incident.end_time is not None:
        return False
    payload = {**opened_payload(incident, node_data(node, project)), "held_back": why}
    enqueue(tx, recipients(node, project), event_type, f"{incident.id}:opened", payload)
    incident.held_since = None
    incident.notified_time = tx.now
    schedule(incident, policy_for(project.id))
    monitoring.save_incident(incident)
    return True


def schedule(incident: Incident, policy: MonitoringPolicy) -> None:
    """When escalation or the next reminder is due (None: nothing more to send)."""
    if (
        incident.end_time is not None
        or incident.acknowledged_time is not None
        or incident.notified_time is None
    ):
        incident.next_notify_time = None
        return
    base = incident.notified_time
    due: list[datetime] = []
    if policy.escalate_after_s and policy.escalation_channel and incident.escalated_time is None:
        due.append(base + timedelta(seconds=policy.escalate_after_s))
    if policy.repeat_every_s:
        due.append(base + timedelta(seconds=policy.repeat_every_s * (incident.reminders + 1)))
    incident.next_notify_time = min(due) if due else None
