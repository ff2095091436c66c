"""Workloads and their assignments: what runs on a project's nodes. Every change re-places
replicas (placement.py) and re-evaluates the workload's status (machine.py)."""

from __future__ import annotations

from coordd.core.errors import Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.node.access import owned_project, require_operator, visible_node, visible_workload
from coordd.domain.node.machine import close_incident, refresh_workload, refresh_workloads
from coordd.domain.node.placement import place_project
from coordd.domain.node.policies import Resources, check_workload
from coordd.runtime import Runtime
from coordd.store.node import queries
from coordd.store.node.models import Assignment, Workload


def _apply_resources(w: Workload, r: Resources) -> None:
    w.cpu_millis, w.memory_mb, w.disk_gb = r.cpu_millis, r.memory_mb, r.disk_gb
    w.gpu_count, w.gpu_model = r.gpu_count, r.gpu_model


def create_workload(
    rt: Runtime,
    who: Principal,
    project_id: str,
    display_name: str,
    spec: str,
    replicas: int,
    resources: Resources,
    labels: dict[str, str],
) -> Workload:
    require_operator(who)
    v = Violations()
    check_workload(v, display_name, spec, replicas, resources, labels)
    v.raise_if_any()
    with rt.store.write() as tx:
        project = owned_project(who, project_id)
        # Lock order: the project row first, before the insert that references it (an
        # insert takes a key-share lock on it; taking the placement lock after that
        # deadlocked two concurrent creates on PostgreSQL).
        queries.lock_project(project.id)
        workload = Workload(
            project=project.id,
            display_name=display_name,
            spec=spec,
            replicas=replicas,
            placement_labels=dict(sorted(labels.items())),
            status_time=tx.now,
            create_time=tx.now,
            update_time=tx.now,
        )
        _apply_resources(workload, resources)
        queries.insert_workload(workload)
        tx.emit("node.workload.created", f"workloads/{workload.id}", {"project": f"projects/{project.id}"})
        place_project(tx, project)
        refresh_workload(tx, workload, "created", inhibited=False)
    return queries.get_workload(workload.id)


def get_workload(who: Principal, workload_id: str) -> Workload:
    require_operator(who)
    return visible_workload(who, workload_id)


def list_workloads(who: Principal, project_id: str, page: PageRequest) -> Page[Workload]:
    require_operator(who)
    owned_project(who, project_id)
    return queries.page_workloads(project_id, page)


def update_workload(
    rt: Runtime,
    who: Principal,
    workload_id: str,
    display_name: str | None,
    spec: str | None,
    replicas: int | None,
    resources: Resources | None,
    labels: dict[str, str] | None,
) -> Workload:
    require_operator(who)
    v = Violations()
    check_workload(v, display_name, spec, replicas, resources, labels, prefix="workload.")
    v.raise_if_any()
    with rt.store.write() as tx:
        workload = visible_workload(who, workload_id)
        if display_name is not None:
            workload.display_name = display_name
        if spec is not None:
            workload.spec = spec
        if replicas is not None:
            workload.replicas = replicas
        if resources is not None:
            _apply_resources(workload, resources)
        if labels is not None:
            workload.placement_labels = dict(sorted(labels.items()))
        workload.update_time = tx.now
        workload.save()
        if resources is not None or labels is not None or spec is not None:
            # A changed request re-places every replica from scratch.
            for a in queries.assignments_of_workload(workload.id):
                tx.emit("node.assignments_changed", f"nodes/{a.node_id}", {})
            queries.delete_workload_assignments(workload.id)
        tx.emit("node.workload.updated", f"workloads/{workload.id}", {})
        place_project(tx, workload.project)
        refresh_workload(tx, workload, "updated", inhibited=False)
    return queries.get_workload(workload.id)


def delete_workload(rt: Runtime, who: Principal, workload_id: str) -> None:
    require_operator(who)
    with rt.store.write() as tx:
        workload = visible_workload(who, workload_id)
        for a in queries.assignments_of_workload(workload.id):
            tx.emit("node.assignments_changed", f"nodes/{a.node_id}", {})
        close_incident(
            tx,
            workload.id,
            "deleted",
            recipients=set(),
            event_type="workload.recovered",
            data={},
            notify=False,
        )
        queries.delete_workload(workload)
        tx.emit("node.workload.deleted", f"workloads/{workload.id}", {})


def workload_assignments(workload_ids: list[str]) -> dict[str, list[Assignment]]:
    out: dict[str, list[Assignment]] = {w: [] for w in workload_ids}
    for a in queries.assignments_of_workloads(workload_ids):
        out[a.workload_id].append(a)
    return out


def list_assignments(who: Principal, kind: str, parent_id: str, page: PageRequest) -> Page[Assignment]:
    require_operator(who)
    if kind == "workloads":
        visible_workload(who, parent_id)
    else:
        visible_node(who, parent_id)
    return queries.page_assignments(kind, parent_id, page)


def place_all(rt: Runtime) -> int:
    """Scheduler task, a safety net: places replicas that could not be placed when they were
    created. Cheap: one query per project that has workloads waiting."""
    placed = 0
    for project_id in queries.projects_with_waiting_workloads():
        with rt.store.write() as tx:
            project = queries.get_project(project_id)
            touched = place_project(tx, project)
            refresh_workloads(tx, touched, "replicas placed", inhibited=False)
            placed += len(touched)
    return placed
