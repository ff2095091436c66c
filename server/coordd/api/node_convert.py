"""NodeService messages <-> domain values: request parsing (statuses, resource names,
update masks, policies) and the `*_to_proto` converters, which take the rows and views the
node domain returns."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import field_mask_pb2

from coordd.api.convert import duration, parse_name, ts
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.domain import node
from coordd.domain.node import (
    AssignedView,
    Assignment,
    Incident,
    MaintenanceWindow,
    Node,
    Project,
    RewardEntry,
    Transition,
    Workload,
)
from coordd_client.v1 import node_pb2

_STATUS_PREFIX = "HEALTH_STATUS_"
_REPLICA_PREFIX = "REPLICA_STATE_"


def status_to_proto(status: str) -> int:
    return node_pb2.HealthStatus.Value(_STATUS_PREFIX + status.upper())


def status_from_proto(value: int, field: str) -> str:
    if value == node_pb2.HEALTH_STATUS_UNSPECIFIED:
        return ""
    if value not in node_pb2.HealthStatus.values():
        raise InvalidArgument(
            f"{field} is not a valid status", violations=[FieldViolation(field, "unknown status")]
        )
    return node_pb2.HealthStatus.Name(value)[len(_STATUS_PREFIX) :].lower()


def replica_from_proto(value: int, field: str) -> str:
    if value == node_pb2.REPLICA_STATE_UNSPECIFIED or value not in node_pb2.ReplicaState.values():
        raise InvalidArgument(
            f"{field} is not a valid replica state",
            violations=[FieldViolation(field, "unknown replica state")],
        )
    return node_pb2.ReplicaState.Name(value)[len(_REPLICA_PREFIX) :].lower()


def parse_parent(name: str, collections: tuple[str, ...], field: str) -> tuple[str, str]:
    """`nodes/abc` -> ("nodes", "abc") when the collection is one of those allowed."""
    collection = name.partition("/")[0]
    if collection not in collections:
        allowed = " or ".join(f"{c}/{{id}}" for c in collections)
        raise InvalidArgument(
            f"{field} must look like {allowed}, got {name!r}",
            violations=[FieldViolation(field, f"expected {allowed}")],
        )
    return collection, parse_name(name, collection, field)


def mask_paths(mask: field_mask_pb2.FieldMask, allowed: set[str], field: str = "update_mask") -> set[str]:
    paths = set(mask.paths)
    if not paths:
        raise InvalidArgument(
            f"{field} is required",
            violations=[FieldViolation(field, f"list some of: {', '.join(sorted(allowed))}")],
        )
    unknown = sorted(paths - allowed)
    if unknown:
        raise InvalidArgument(
            f"{field} has unknown paths: {', '.join(unknown)}",
            violations=[FieldViolation(field, f"allowed: {', '.join(sorted(allowed))}")],
        )
    return paths


# -- messages <-> domain values ----------------------------------------------------------


def health_from_proto(p: node_pb2.HealthPolicy) -> node.HealthPolicy:
    d = node.HealthPolicy()
    return node.HealthPolicy(
        interval_s=p.heartbeat_interval.ToTimedelta().total_seconds()
        if p.HasField("heartbeat_interval")
        else d.interval_s,
        misses=p.misses or d.misses,
        grace_s=p.grace.ToTimedelta().total_seconds() if p.HasField("grace") else d.grace_s,
        successes_before_up=p.successes_before_up or d.successes_before_up,
        mass_outage_share=p.mass_outage_share or d.mass_outage_share,
        mass_outage_min_nodes=p.mass_outage_min_nodes or d.mass_outage_min_nodes,
    )


def reward_from_proto(p: node_pb2.RewardPolicy) -> node.RewardPolicy:
    d = node.RewardPolicy()
    return node.RewardPolicy(p.points_per_up_hour or d.points_per_up_hour, p.cap_per_day or d.cap_per_day)


def inventory_from_proto(p: node_pb2.Inventory) -> node.Inventory:
    return node.Inventory(
        p.cpu_cores, p.memory_mb, p.disk_gb, [{"model": g.model, "count": g.count} for g in p.gpus]
    )


def resources_from_proto(p: node_pb2.ResourceRequest) -> node.Resources:
    return node.Resources(p.cpu_millis, p.memory_mb, p.disk_gb, p.gpu_count, p.gpu_model)


def project_to_proto(p: Project) -> node_pb2.Project:
    return node_pb2.Project(
        name=f"projects/{p.id}",
        owner=f"users/{p.owner_id}",
        display_name=p.display_name,
        slug=p.slug,
        health_policy=node_pb2.HealthPolicy(
            heartbeat_interval=duration(p.heartbeat_interval_s),
            misses=p.misses,
            grace=duration(p.grace_s),
            successes_before_up=p.successes_before_up,
            mass_outage_share=p.mass_outage_share,
            mass_outage_min_nodes=p.mass_outage_min_nodes,
        ),
        reward_policy=node_pb2.RewardPolicy(
            points_per_up_hour=p.points_per_up_hour, cap_per_day=p.reward_cap_per_day
        ),
        create_time=ts(p.create_time),
        update_time=ts(p.update_time),
        public_status=bool(p.public_status),
    )


def node_to_proto(n: Node) -> node_pb2.Node:
    return node_pb2.Node(
        name=f"nodes/{n.id}",
        project=f"projects/{n.project_id}",
        owner=f"users/{n.owner_id}",
        display_name=n.display_name,
        region=n.region,
        inventory=node_pb2.Inventory(
            cpu_cores=n.cpu_cores,
            memory_mb=n.memory_mb,
            disk_gb=n.disk_gb,
            gpus=[node_pb2.Gpu(model=g["model"], count=g["count"]) for g in n.gpus or []],
        ),
        labels=n.labels or {},
        status=status_to_proto(n.status),
        status_reason=n.status_reason,
        status_change_time=ts(n.status_time),
        last_heartbeat_time=ts(n.last_seen_time),
        api_key=f"apiKeys/{n.api_key_id}" if n.api_key_id else "",
        create_time=ts(n.create_time),
        flapping=n.flapping_since is not None,
        flapping_since=ts(n.flapping_since),
    )


def assignment_to_proto(a: Assignment) -> node_pb2.Assignment:
    return node_pb2.Assignment(
        name=f"assignments/{a.id}",
        workload=f"workloads/{a.workload_id}",
        node=f"nodes/{a.node_id}",
        state=node_pb2.ReplicaState.Value(_REPLICA_PREFIX + a.state.upper()),
        message=a.message,
        create_time=ts(a.create_time),
        update_time=ts(a.update_time),
    )


def workload_to_proto(w: Workload, assignments: list[Assignment]) -> node_pb2.Workload:
    return node_pb2.Workload(
        name=f"workloads/{w.id}",
        project=f"projects/{w.project_id}",
        display_name=w.display_name,
        spec=w.spec,
        replicas=w.replicas,
        resources=node_pb2.ResourceRequest(
            cpu_millis=w.cpu_millis,
            memory_mb=w.memory_mb,
            disk_gb=w.disk_gb,
            gpu_count=w.gpu_count,
            gpu_model=w.gpu_model,
        ),
        placement_labels=w.placement_labels or {},
        status=status_to_proto(w.status),
        status_reason=w.status_reason,
        assignments=[assignment_to_proto(a) for a in assignments],
        create_time=ts(w.create_time),
        update_time=ts(w.update_time),
    )


def transition_to_proto(t: Transition) -> node_pb2.Transition:
    collection = "nodes" if t.kind == "node" else "workloads"
    return node_pb2.Transition(
        name=f"transitions/{t.id}",
        subject=f"{collection}/{t.subject_id}",
        from_status=status_to_proto(t.from_status),
        to_status=status_to_proto(t.to_status),
        reason=t.reason,
        time=ts(t.time),
        uptime_excluded=t.excluded,
        effective_time=ts(t.effective_time or t.time),
    )


def incident_to_proto(i: Incident, now: datetime) -> node_pb2.Incident:
    collection = {"node": "nodes", "workload": "workloads", "project": "projects"}[i.kind]
    return node_pb2.Incident(
        name=f"incidents/{i.id}",
        subject=f"{collection}/{i.subject_id}",
        project=f"projects/{i.project_id}",
        start_time=ts(i.start_time),
        end_time=ts(i.end_time),
        duration=duration((i.end_time or now) - i.start_time),
        cause=i.cause,
        notifications_inhibited=i.inhibited,
        resolution=i.resolution,
        acknowledge_time=ts(i.acknowledged_time),
        acknowledged_by=f"users/{i.acknowledged_by}" if i.acknowledged_by else "",
        escalate_time=ts(i.escalated_time),
        notification_held=i.held_since is not None,
        notify_time=ts(i.notified_time),
        reminders=i.reminders,
    )


def window_to_proto(w: MaintenanceWindow) -> node_pb2.MaintenanceWindow:
    return node_pb2.MaintenanceWindow(
        name=f"maintenanceWindows/{w.id}",
        target=f"nodes/{w.node_id}" if w.node_id else f"projects/{w.project_id}",
        start_time=ts(w.start_time),
        end_time=ts(w.end_time),
        reason=w.reason,
        state=node_pb2.MaintenanceState.Value("MAINTENANCE_STATE_" + w.state.upper()),
        create_time=ts(w.create_time),
    )


def reward_to_proto(e: RewardEntry) -> node_pb2.RewardEntry:
    return node_pb2.RewardEntry(
        name=f"rewardEntries/{e.id}",
        owner=f"users/{e.owner_id}",
        node=f"nodes/{e.node_id}",
        project=f"projects/{e.project_id}",
        bucket_start_time=ts(e.bucket_start),
        bucket_end_time=ts(e.bucket_end),
        up=duration(e.up_seconds),
        points=e.points,
        capped=e.capped,
        bucket_key=e.bucket_key,
        create_time=ts(e.create_time),
    )


def assigned_to_proto(views: list[AssignedView]) -> list[node_pb2.AssignedWorkload]:
    return [
        node_pb2.AssignedWorkload(
            workload=f"workloads/{v.workload_id}",
            assignment=f"assignments/{v.assignment_id}",
            spec=v.spec,
            resources=node_pb2.ResourceRequest(
                cpu_millis=v.cpu_millis,
                memory_mb=v.memory_mb,
                disk_gb=v.disk_gb,
                gpu_count=v.gpu_count,
                gpu_model=v.gpu_model,
            ),
        )
        for v in views
    ]
