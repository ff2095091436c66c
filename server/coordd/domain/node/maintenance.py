"""Maintenance windows: planned periods of a node or a whole project without incidents or
uptime debit. The scheduler starts and ends them when due (`run_maintenance`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from coordd.core.errors import FailedPrecondition, Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.node.access import owned_project, require_operator, visible_node
from coordd.domain.node.detection import freshest
from coordd.domain.node.heartbeats import LastSeen
from coordd.domain.node.machine import close_incident, node_down, node_up, set_node_status
from coordd.runtime import Runtime
from coordd.store.node import health, queries
from coordd.store.node.models import (
    ACTIVE,
    DECOMMISSIONED,
    ENDED,
    MAINTENANCE,
    SCHEDULED,
    UNKNOWN,
    MaintenanceWindow,
    Node,
    Project,
)

MAX_WINDOW = timedelta(days=366)


def create_maintenance_window(
    rt: Runtime, who: Principal, kind: str, target_id: str, start: datetime, end: datetime, reason: str
) -> MaintenanceWindow:
    require_operator(who)
    now = rt.now()
    v = Violations()
    if end <= start:
        v.add("end_time", "must be after start_time")
    elif end <= now:
        v.add("end_time", "must be in the future")
    elif end - start > MAX_WINDOW:
        v.add("end_time", "a window lasts at most 366 days")
    if len(reason) > 400:
        v.add("reason", "at most 400 characters")
    v.raise_if_any()
    with rt.store.write() as tx:
        if kind == "nodes":
            node = visible_node(who, target_id)
            if node.status == DECOMMISSIONED:
                raise FailedPrecondition("the node is decommissioned", reason="NODE_DECOMMISSIONED")
            project_id, node_id = node.project_id, node.id
        else:
            project_id, node_id = owned_project(who, target_id).id, None
        window = health.insert_window(
            project=project_id,
            node=node_id,
            created_by=who.user_id,
            start_time=start,
            end_time=end,
            reason=reason,
            state=SCHEDULED,
            next_action_time=start,
            create_time=tx.now,
        )
        tx.emit(
            "node.maintenance.created", f"maintenanceWindows/{window.id}", {"target": f"{kind}/{target_id}"}
        )
    return window


def list_maintenance_windows(
    who: Principal, kind: str, target_id: str, page: PageRequest
) -> Page[MaintenanceWindow]:
    require_operator(who)
    target: Node | Project
    target = visible_node(who, target_id) if kind == "nodes" else owned_project(who, target_id)
    return health.page_windows(kind, target, page)


def run_maintenance(rt: Runtime, latest_seen: LastSeen, batch: int = 100) -> int:
    """Scheduler task: starts and ends due maintenance windows."""
    done = 0
    with rt.store.write() as tx:
        for window in health.due_windows(tx.now, batch):
            project = queries.get_project(window.project_id)
            nodes = health.nodes_covered_by(window)
            if window.state == SCHEDULED:
                window.state, window.next_action_time = ACTIVE, window.end_time
                for node in nodes:
                    if node.status == MAINTENANCE:
                        continue
                    # An outage that runs into planned maintenance ends there: no debit after.
                    close_incident(
                        tx, node.id, "maintenance", recipients=set(), event_type="", data={}, notify=False
                    )
                    set_node_status(
                        tx,
                        node,
                        project,
                        MAINTENANCE,
                        f"maintenance window {window.id} started: {window.reason}",
                    )
            else:
                window.state, window.next_action_time = ENDED, None
                fresh = latest_seen([n.id for n in nodes])
                for node in nodes:
                    if node.status != MAINTENANCE or health.other_window_in_state(node, window, ACTIVE):
                        continue
                    seen = freshest(node, fresh)
                    if seen is None:
                        set_node_status(tx, node, project, UNKNOWN, "maintenance ended; never heard from")
                    elif seen + timedelta(seconds=project.window_s) > tx.now:
                        node.last_seen_time = seen
                        node_up(tx, node, project, "maintenance ended; heartbeats current")
                    else:
                        node_down(
                            tx,
                            node,
                            project,
                            "still down when the maintenance window ended",
                            suppressed=False,
                            # Down all along: the outage that counts starts when the window ends.
                            since=max(seen, window.end_time),
                        )
            window.save()
            tx.emit(
                "node.maintenance." + window.state,
                f"maintenanceWindows/{window.id}",
                {"project": f"projects/{project.id}"},
            )
            done += 1
    return done
