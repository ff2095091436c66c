"""The node/workload state machine and what every transition brings with it: the stored
transition, incidents (one per outage), notifications through the outbox, placement.

Every function here runs inside the caller's write transaction (`tx`), so a transition,
its incident, its notifications and its event commit together or not at all.

    UNKNOWN --beat--> PENDING --successes_before_up beats--> UP --silence--> DOWN --beat--> PENDING
    any (but DECOMMISSIONED) --window starts--> MAINTENANCE --window ends--> UP | DOWN
    any --decommission--> DECOMMISSIONED (final)
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog

import coordd.domain.node.alerts as alerts
import coordd.domain.node.flapping as flapping
from coordd.domain.node.placement import place_project
from coordd.domain.node.policies import MonitoringPolicy
from coordd.domain.notify import channels_told, enqueue, enqueue_to_channels
from coordd.store.db import Tx
from coordd.store.node import health, monitoring, queries
from coordd.store.node.models import DOWN, PENDING, UP, Incident, Node, Project, Silence, Workload

log = structlog.get_logger("coordd.node")

STATUS_CHANGED = "node.status_changed"
WORKLOAD_STATUS_CHANGED = "node.workload.status_changed"


def nodes_key(project_id: str) -> str:
    """Notifier key WatchNodes waits on: every node transition of the project wakes it."""
    return f"projects/{project_id}/nodes"


def set_node_status(
    tx: Tx,
    node: Node,
    project: Project,
    to: str,
    reason: str,
    *,
    excluded: bool = False,
    since: datetime | None = None,
) -> bool:
    """Stores the transition with its reason; returns False when the node is already there.
    `since`: when the state really began, if earlier than now (a DOWN: the last beat),
    never before the node's previous transition."""
    if node.status == to:
        return False
    before = node.status
    if since is not None:
        since = min(max(since, node.status_time), tx.now)
    health.insert_transition(
        effective_time=since,
        kind="node",
        subject_id=node.id,
        project_id=project.id,
        from_status=before,
        to_status=to,
        reason=reason[:500],
        time=tx.now,
        excluded=excluded,
    )
    node.status = to
    node.status_reason = reason[:500]
    node.status_time = tx.now
    node.suppressed = excluded and to == DOWN
    # Only a node that is heard from can fall silent: others have no deadline.
    if to in (UP, PENDING):
        node.deadline_time = tx.now + timedelta(seconds=project.window_s)
    else:
        node.deadline_time = None
    node.update_time = tx.now
    node.save()
    emit_status_changed(tx, node.id, project.id, before, to, reason)
    return True


def emit_status_changed(tx: Tx, node_id: str, project_id: str, before: str, to: str, reason: str) -> None:
    """The event of a node's transition (WatchNodes wakes on the project's key)."""
    tx.emit(
        STATUS_CHANGED,
        f"nodes/{node_id}",
        {
            "from": before,
            "to": to,
            "reason": reason[:500],
            "project": f"projects/{project_id}",
            "watch_keys": [nodes_key(project_id)],
        },
    )


def open_incident(
    tx: Tx,
    kind: str,
    subject_id: str,
    project_id: str,
    cause: str,
    *,
    inhibited: bool,
    recipients: set[str],
    event_type: str,
    data: dict[str, Any],
    start_time: datetime | None = None,
    held: bool = False,
) -> Incident:
    """One incident per outage: an open one is returned as is, and notified only once
    (the outbox key is the incident id). It starts at `start_time` (the last beat) when
    given; `held`: its notification is held back (alerts.py) until the hold ends."""
    existing = health.open_incident_of(subject_id)
    if existing is not None:
        return existing
    incident = health.insert_incident(
        kind=kind,
        subject_id=subject_id,
        project_id=project_id,
        start_time=start_time or tx.now,
        cause=cause[:500],
        inhibited=inhibited,
        held_since=tx.now if held and not inhibited else None,
        notified_time=tx.now if not held and not inhibited else None,
    )
    if incident.notified_time is not None:
        enqueue(tx, recipients, event_type, f"{incident.id}:opened", alerts.opened_payload(incident, data))
    tx.emit(
        "node.incident.opened",
        f"incidents/{incident.id}",
        {"subject": data.get("subject", ""), "inhibited": inhibited},
    )
    return incident


def close_incident(
    tx: Tx,
    subject_id: str,
    resolution: str,
    *,
    recipients: set[str],
    event_type: str,
    data: dict[str, Any],
    notify: bool = True,
) -> Incident | None:
    incident = health.open_incident_of(subject_id)
    if incident is None:
        return None
    incident.end_time = tx.now
    incident.resolution = resolution
    incident.next_notify_time = None
    incident.save()
    duration = (tx.now - incident.start_time).total_seconds()
    # A recovery is notified exactly when the outage was, to every channel told of it.
    if notify and not incident.inhibited and incident.held_since is None:
        payload = {
            **data,
            "incident": f"incidents/{incident.id}",
            "cause": incident.cause,
            "start_time": incident.start_time.isoformat(),
            "end_time": tx.now.isoformat(),
            "outage_seconds": duration,
        }
        key = f"{incident.id}:resolved"
        enqueue(tx, recipients, event_type, key, payload)
        told = channels_told([f"{incident.id}:opened", f"{incident.id}:escalated"])
        enqueue_to_channels(tx, told, event_type, key, payload)
    tx.emit("node.incident.closed", f"incidents/{incident.id}", {"resolution": resolution})
    return incident


def node_down(
    tx: Tx,
    node: Node,
    project: Project,
    reason: str,
    *,
    suppressed: bool,
    since: datetime | None = None,
    policy: MonitoringPolicy | None = None,
    silences: list[Silence] | None = None,
) -> None:
    """DOWN: an incident (unless a mass outage suppresses it) and its replicas move away.
    `since`: when the outage began (the last beat that arrived), if known; `policy` and
    `silences` (the project's in force), when the caller read them once for many nodes."""
    if since is not None:
        since = min(max(since, node.status_time), tx.now)
    if not set_node_status(tx, node, project, DOWN, reason, excluded=suppressed, since=since):
        return
    if not suppressed:
        policy = policy or alerts.policy_for(project.id)
        if silences is None:
            silences = monitoring.active_silences(project.id, tx.now)
        # FLAPPING or silenced: the incident is true, its notification held back.
        held = flapping.observe(tx, node, project, policy) or any(alerts.covers(s, node) for s in silences)
        incident = open_incident(
            tx,
            "node",
            node.id,
            project.id,
            reason,
            inhibited=False,
            recipients=alerts.recipients(node, project),
            event_type="node.down",
            data=alerts.node_data(node, project),
            start_time=since,
            held=held,
        )
        if incident.notified_time is not None and incident.end_time is None:
            before = incident.next_notify_time
            alerts.schedule(incident, policy)
            if incident.next_notify_time != before:
                incident.save()
    release_node(tx, node, project, f"node nodes/{node.id} is down", since=since)


def node_up(tx: Tx, node: Node, project: Project, reason: str) -> None:
    """UP: the outage's incident closes with a recovery notification, and waiting
    replicas may now be placed here."""
    if set_node_status(tx, node, project, UP, reason):
        after_up(tx, project, [node])


def after_up(tx: Tx, project: Project, nodes: list[Node]) -> None:
    """What follows the UP transitions of `nodes` (one project; one node, or a batch of
    beats, domain/node/beat_batch.py): flapping, each outage's recovery notice, the mass
    outage's end (the nodes may have gone DOWN in one), placement, the workloads."""
    flapping.observe_many(tx, nodes, project, alerts.policy_for(project.id))
    open_incidents = health.open_incidents_of([n.id for n in nodes])
    for node in nodes:
        if node.id in open_incidents:
            close_incident(
                tx,
                node.id,
                "recovered",
                recipients=alerts.recipients(node, project),
                event_type="node.recovered",
                data=alerts.node_data(node, project),
            )
    resolve_mass_outage(tx, project)
    touched = place_project(tx, project)
    hosted = queries.workload_ids_on_nodes([n.id for n in nodes])
    refresh_workloads(tx, touched | hosted, "node is up", inhibited=False)


def release_node(tx: Tx, node: Node, project: Project, cause: str, *, since: datetime | None = None) -> None:
    """Removes the node's replicas, re-places them on other nodes, and re-evaluates the
    workloads. Their notifications are inhibited: the node's own incident says it all."""
    workload_ids = queries.workload_ids_on_node(node.id)
    if not workload_ids:
        return
    queries.delete_node_assignments(node.id)
    tx.emit("node.assignments_changed", f"nodes/{node.id}", {})
    place_project(tx, project)
    refresh_workloads(tx, set(workload_ids), cause, inhibited=True, since=since)


def resolve_mass_outage(tx: Tx, project: Project) -> None:
    """Ends the project's mass outage once none of the nodes it took down is still DOWN."""
    if not health.has_open_incident(project.id):
        return
    if health.has_suppressed_down(project.id, DOWN):
        return
    closed = close_incident(
        tx,
        project.id,
        "recovered",
        recipients={project.owner_id},
        event_type="project.mass_outage_resolved",
        data={"subject": f"projects/{project.id}", "project": f"projects/{project.id}"},
    )
    if closed is not None:
        log.warning("mass outage over", project=project.id, incident=closed.id)


def refresh_workloads(
    tx: Tx, workload_ids: set[str], cause: str, *, inhibited: bool, since: datetime | None = None
) -> None:
    for workload in queries.workloads_by_ids(workload_ids):
        refresh_workload(tx, workload, cause, inhibited=inhibited, since=since)


def refresh_workload(
    tx: Tx, workload: Workload, cause: str, *, inhibited: bool, since: datetime | None = None
) -> None:
    """`since`: when the cause began (a node's outage counts from its last beat), if earlier."""
    """A workload is UP when as many replicas run on UP nodes as it wants; once UP, any
    shortfall is DOWN (an outage with an incident) until they run again."""
    running = health.running_replicas(workload.id)
    if running >= workload.replicas:
        to = UP
    elif workload.status in (UP, DOWN):
        to = DOWN
    else:
        to = PENDING
    if to == workload.status:
        return
    before = workload.status
    reason = f"{running} of {workload.replicas} replicas running" + (f": {cause}" if to == DOWN else "")
    began = min(max(since, workload.status_time), tx.now) if since is not None and to == DOWN else None
    health.insert_transition(
        kind="workload",
        subject_id=workload.id,
        project_id=workload.project_id,
        from_status=before,
        to_status=to,
        reason=reason[:500],
        time=tx.now,
        effective_time=began,
    )
    workload.status = to
    workload.status_reason = reason[:500]
    workload.status_time = tx.now
    workload.save()
    project = queries.get_project(workload.project_id)
    data = {
        "subject": f"workloads/{workload.id}",
        "workload": f"workloads/{workload.id}",
        "workload_name": workload.display_name,
        "project": f"projects/{project.id}",
    }
    if to == DOWN:
        open_incident(
            tx,
            "workload",
            workload.id,
            project.id,
            reason,
            inhibited=inhibited,
            recipients={project.owner_id},
            event_type="workload.down",
            data=data,
            start_time=began,
        )
    elif to == UP:
        close_incident(
            tx,
            workload.id,
            "recovered",
            recipients={project.owner_id},
            event_type="workload.recovered",
            data=data,
        )
    tx.emit(
        WORKLOAD_STATUS_CHANGED,
        f"workloads/{workload.id}",
        {"from": before, "to": to, "project": f"projects/{project.id}"},
    )
