"""Scheduler tasks of the node domain. Each selects what is due through an indexed column."""

from __future__ import annotations

import peewee

from coordd.domain import node_health, node_placement, node_state, node_uptime
from coordd.runtime import Runtime
from coordd.scheduler.core import Task
from coordd.store.node_models import Assignment, Project, Workload


def place_all(rt: Runtime) -> int:
    """Safety net: places replicas that could not be placed when they were created.
    Cheap: one query per project that has workloads waiting."""
    placed = 0
    waiting = (
        Workload.select(Workload.project)
        .join(Assignment, join_type=peewee.JOIN.LEFT_OUTER, on=(Assignment.workload == Workload.id))
        .group_by(Workload.id, Workload.project, Workload.replicas)
        .having(Workload.replicas > peewee.fn.COUNT(Assignment.id))
    )
    for project_id in sorted({w.project_id for w in waiting}):
        with rt.store.write() as tx:
            project = Project.get_by_id(project_id)
            touched = node_placement.place_project(tx, project)
            node_state.refresh_workloads(tx, touched, "replicas placed", inhibited=False)
            placed += len(touched)
    return placed


def tasks() -> list[Task]:
    return [
        # Detection latency is at most this interval past a node's deadline.
        Task("node-detect-down", 0.5, node_health.detect_down),
        Task("node-maintenance", 1.0, node_health.run_maintenance),
        Task("node-place", 5.0, place_all),
        Task("node-rewards", 60.0, node_uptime.credit_rewards),
    ]
