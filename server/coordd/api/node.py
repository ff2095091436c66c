"""NodeService: projects, nodes, workloads, heartbeats, uptime, incidents, maintenance,
notification channels, rewards and WatchNodes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from google.protobuf import field_mask_pb2

from coordd.api.convert import duration, from_ts, parse_name, ts
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import node, node_health, node_state, node_uptime
from coordd.notify import outbox
from coordd.notify.models import Channel, Delivery
from coordd.runtime import Runtime
from coordd.store.node_models import (
    Assignment,
    Incident,
    MaintenanceWindow,
    Node,
    Project,
    RewardEntry,
    Transition,
    Workload,
)
from coordd_client.v1 import node_pb2, node_pb2_grpc

_STATUS_PREFIX = "HEALTH_STATUS_"
_REPLICA_PREFIX = "REPLICA_STATE_"
# Streams re-read state at least this often even when no event arrives.
WATCH_REFRESH_S = 5.0


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


def channel_to_proto(c: Channel) -> node_pb2.Channel:
    return node_pb2.Channel(
        name=f"channels/{c.id}",
        owner=f"users/{c.owner_id}",
        display_name=c.display_name,
        url=c.url,
        event_types=c.event_types or [],
        create_time=ts(c.create_time),
    )


def delivery_to_proto(d: Delivery) -> node_pb2.Delivery:
    return node_pb2.Delivery(
        name=f"deliveries/{d.id}",
        channel=f"channels/{d.channel_id}",
        event_type=d.event_type,
        dedup_key=d.dedup_key,
        state=node_pb2.DeliveryState.Value("DELIVERY_STATE_" + d.state.upper()),
        attempts=d.attempts,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        create_time=ts(d.create_time),
        next_attempt_time=ts(d.next_attempt_time),
        delivered_time=ts(d.delivered_time),
        body=d.body,
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


def assigned_to_proto(views: list[node_health.AssignedView]) -> list[node_pb2.AssignedWorkload]:
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


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.tracker = node_health.tracker_for(rt)
        self.tracker.start()

    # -- projects --

    async def CreateProject(
        self, request: node_pb2.CreateProjectRequest, context: Any
    ) -> node_pb2.CreateProjectResponse:
        who = require_user()
        project = await self.rt.run(
            node.create_project,
            self.rt,
            who,
            request.display_name,
            request.slug,
            health_from_proto(request.health_policy),
            reward_from_proto(request.reward_policy),
        )
        return node_pb2.CreateProjectResponse(project=project_to_proto(project))

    async def GetProject(
        self, request: node_pb2.GetProjectRequest, context: Any
    ) -> node_pb2.GetProjectResponse:
        require_user()
        project = await self.rt.run(node.get_project, parse_name(request.name, "projects"))
        return node_pb2.GetProjectResponse(project=project_to_proto(project))

    async def ListProjects(
        self, request: node_pb2.ListProjectsRequest, context: Any
    ) -> node_pb2.ListProjectsResponse:
        require_user()
        page = await self.rt.run(node.list_projects, PageRequest.of(request.page_size, request.page_token))
        return node_pb2.ListProjectsResponse(
            projects=[project_to_proto(p) for p in page.items], next_page_token=page.next_token
        )

    async def UpdateProject(
        self, request: node_pb2.UpdateProjectRequest, context: Any
    ) -> node_pb2.UpdateProjectResponse:
        who = require_user()
        project_id = parse_name(request.project.name, "projects", "project.name")
        paths = mask_paths(request.update_mask, {"display_name", "health_policy", "reward_policy"})
        p = request.project
        project = await self.rt.run(
            node.update_project,
            self.rt,
            who,
            project_id,
            p.display_name if "display_name" in paths else None,
            health_from_proto(p.health_policy) if "health_policy" in paths else None,
            reward_from_proto(p.reward_policy) if "reward_policy" in paths else None,
        )
        return node_pb2.UpdateProjectResponse(project=project_to_proto(project))

    # -- nodes --

    async def RegisterNode(
        self, request: node_pb2.RegisterNodeRequest, context: Any
    ) -> node_pb2.RegisterNodeResponse:
        who = require_user()
        project_id = parse_name(request.project, "projects", "project")
        created, secret = await self.rt.run(
            node.register_node,
            self.rt,
            who,
            project_id,
            request.display_name,
            request.region,
            inventory_from_proto(request.inventory),
            dict(request.labels),
        )
        return node_pb2.RegisterNodeResponse(node=node_to_proto(created), api_key_secret=secret)

    async def GetNode(self, request: node_pb2.GetNodeRequest, context: Any) -> node_pb2.GetNodeResponse:
        who = require_user()
        found = await self.rt.run(node.get_node, who, parse_name(request.name, "nodes"))
        return node_pb2.GetNodeResponse(node=node_to_proto(found))

    async def ListNodes(self, request: node_pb2.ListNodesRequest, context: Any) -> node_pb2.ListNodesResponse:
        who = require_user()
        project_id = parse_name(request.project, "projects", "project") if request.project else ""
        page = await self.rt.run(
            node.list_nodes,
            who,
            project_id,
            status_from_proto(request.status, "status"),
            request.region,
            request.label,
            PageRequest.of(request.page_size, request.page_token),
        )
        return node_pb2.ListNodesResponse(
            nodes=[node_to_proto(n) for n in page.items], next_page_token=page.next_token
        )

    async def UpdateNode(
        self, request: node_pb2.UpdateNodeRequest, context: Any
    ) -> node_pb2.UpdateNodeResponse:
        who = require_user()
        node_id = parse_name(request.node.name, "nodes", "node.name")
        paths = mask_paths(request.update_mask, {"display_name", "region", "inventory", "labels"})
        n = request.node
        updated = await self.rt.run(
            node.update_node,
            self.rt,
            who,
            node_id,
            n.display_name if "display_name" in paths else None,
            n.region if "region" in paths else None,
            inventory_from_proto(n.inventory) if "inventory" in paths else None,
            dict(n.labels) if "labels" in paths else None,
        )
        return node_pb2.UpdateNodeResponse(node=node_to_proto(updated))

    async def DecommissionNode(
        self, request: node_pb2.DecommissionNodeRequest, context: Any
    ) -> node_pb2.DecommissionNodeResponse:
        who = require_user()
        done = await self.rt.run(
            node.decommission_node, self.rt, who, parse_name(request.name, "nodes"), request.reason
        )
        return node_pb2.DecommissionNodeResponse(node=node_to_proto(done))

    # -- workloads --

    async def _workload(self, w: Workload) -> node_pb2.Workload:
        assignments = await self.rt.run(node.workload_assignments, [w.id])
        return workload_to_proto(w, assignments[w.id])

    async def CreateWorkload(
        self, request: node_pb2.CreateWorkloadRequest, context: Any
    ) -> node_pb2.CreateWorkloadResponse:
        who = require_user()
        project_id = parse_name(request.project, "projects", "project")
        w = await self.rt.run(
            node.create_workload,
            self.rt,
            who,
            project_id,
            request.display_name,
            request.spec,
            request.replicas,
            resources_from_proto(request.resources),
            dict(request.placement_labels),
        )
        return node_pb2.CreateWorkloadResponse(workload=await self._workload(w))

    async def GetWorkload(
        self, request: node_pb2.GetWorkloadRequest, context: Any
    ) -> node_pb2.GetWorkloadResponse:
        who = require_user()
        workload_id = parse_name(request.name, "workloads")
        w = await self.rt.run(node.get_workload, who, workload_id)
        return node_pb2.GetWorkloadResponse(workload=await self._workload(w))

    async def ListWorkloads(
        self, request: node_pb2.ListWorkloadsRequest, context: Any
    ) -> node_pb2.ListWorkloadsResponse:
        who = require_user()
        project_id = parse_name(request.project, "projects", "project")
        page = await self.rt.run(
            node.list_workloads, who, project_id, PageRequest.of(request.page_size, request.page_token)
        )
        assignments = await self.rt.run(node.workload_assignments, [w.id for w in page.items])
        return node_pb2.ListWorkloadsResponse(
            workloads=[workload_to_proto(w, assignments[w.id]) for w in page.items],
            next_page_token=page.next_token,
        )

    async def UpdateWorkload(
        self, request: node_pb2.UpdateWorkloadRequest, context: Any
    ) -> node_pb2.UpdateWorkloadResponse:
        who = require_user()
        workload_id = parse_name(request.workload.name, "workloads", "workload.name")
        paths = mask_paths(
            request.update_mask, {"display_name", "spec", "replicas", "resources", "placement_labels"}
        )
        w = request.workload
        updated = await self.rt.run(
            node.update_workload,
            self.rt,
            who,
            workload_id,
            w.display_name if "display_name" in paths else None,
            w.spec if "spec" in paths else None,
            w.replicas if "replicas" in paths else None,
            resources_from_proto(w.resources) if "resources" in paths else None,
            dict(w.placement_labels) if "placement_labels" in paths else None,
        )
        return node_pb2.UpdateWorkloadResponse(workload=await self._workload(updated))

    async def DeleteWorkload(
        self, request: node_pb2.DeleteWorkloadRequest, context: Any
    ) -> node_pb2.DeleteWorkloadResponse:
        who = require_user()
        await self.rt.run(node.delete_workload, self.rt, who, parse_name(request.name, "workloads"))
        return node_pb2.DeleteWorkloadResponse()

    async def ListAssignments(
        self, request: node_pb2.ListAssignmentsRequest, context: Any
    ) -> node_pb2.ListAssignmentsResponse:
        who = require_user()
        kind, parent_id = parse_parent(request.parent, ("workloads", "nodes"), "parent")
        page = await self.rt.run(
            node.list_assignments, who, kind, parent_id, PageRequest.of(request.page_size, request.page_token)
        )
        return node_pb2.ListAssignmentsResponse(
            assignments=[assignment_to_proto(a) for a in page.items], next_page_token=page.next_token
        )

    # -- heartbeats --

    async def _node_info(self) -> node_health.NodeInfo:
        who = require_user()
        info = self.tracker.cached_node(who.api_key_id) if who.api_key_id else None
        if info is None:
            info = await self.rt.run(node_health.node_for_key, self.rt, who)
            self.tracker.remember(who.api_key_id, info)
        return info

    async def _beat(self, info: node_health.NodeInfo, request: Any) -> None:
        reports = []
        for index, report in enumerate(request.workloads):
            workload_id = parse_name(report.workload, "workloads", f"workloads[{index}].workload")
            reports.append(
                (workload_id, replica_from_proto(report.state, f"workloads[{index}].state"), report.message)
            )
        if reports:
            node_health.check_reports(reports)
        change = self.tracker.beat(info, self.rt.now(), reports, dict(request.metrics))
        if change is not None:
            status = await self.rt.run(node_health.apply_beat, self.rt, change)
            self.tracker.applied(change, status)

    async def _assignments(self, node_id: str) -> list[node_health.AssignedView]:
        views = self.tracker.cached_assignments(node_id)
        if views is None:
            views = await self.rt.run(node_health.load_assignments, node_id)
            self.tracker.cache_assignments(node_id, views)
        return views

    async def Heartbeat(self, request: node_pb2.HeartbeatRequest, context: Any) -> node_pb2.HeartbeatResponse:
        info = await self._node_info()
        await self._beat(info, request)
        views = await self._assignments(info.node_id)
        return node_pb2.HeartbeatResponse(
            node=f"nodes/{info.node_id}",
            status=status_to_proto(info.status),
            assignments=assigned_to_proto(views),
            next_interval=duration(info.interval_s),
        )

    async def StreamHeartbeats(
        self, request_iterator: AsyncIterator[node_pb2.StreamHeartbeatsRequest], context: Any
    ) -> node_pb2.StreamHeartbeatsResponse:
        info = await self._node_info()
        beats = 0
        async for request in request_iterator:
            # Re-read from the cache: a status change made elsewhere shows up here.
            info = self.tracker.info.get(info.node_id, info)
            await self._beat(info, request)
            beats += 1
        views = await self._assignments(info.node_id)
        return node_pb2.StreamHeartbeatsResponse(
            node=f"nodes/{info.node_id}",
            beats=beats,
            status=status_to_proto(info.status),
            assignments=assigned_to_proto(views),
            next_interval=duration(info.interval_s),
        )

    # -- uptime, incidents, transitions --

    async def GetUptime(self, request: node_pb2.GetUptimeRequest, context: Any) -> node_pb2.GetUptimeResponse:
        who = require_user()
        kind, subject_id = parse_parent(request.name, ("nodes", "workloads"), "name")
        windows = await self.rt.run(node_uptime.uptime, self.rt, who, kind, subject_id)
        return node_pb2.GetUptimeResponse(
            name=request.name,
            windows=[
                node_pb2.UptimeWindow(
                    window=duration(w.window_s),
                    uptime_percent=w.percent,
                    up=duration(w.up_s),
                    observed=duration(w.observed_s),
                )
                for w in windows
            ],
        )

    async def ListIncidents(
        self, request: node_pb2.ListIncidentsRequest, context: Any
    ) -> node_pb2.ListIncidentsResponse:
        who = require_user()
        kind, parent_id = parse_parent(request.parent, ("nodes", "workloads", "projects"), "parent")
        page = await self.rt.run(
            node_uptime.list_incidents,
            who,
            kind,
            parent_id,
            request.open_only,
            PageRequest.of(request.page_size, request.page_token),
        )
        now = self.rt.now()
        return node_pb2.ListIncidentsResponse(
            incidents=[incident_to_proto(i, now) for i in page.items], next_page_token=page.next_token
        )

    async def ListTransitions(
        self, request: node_pb2.ListTransitionsRequest, context: Any
    ) -> node_pb2.ListTransitionsResponse:
        who = require_user()
        kind, parent_id = parse_parent(request.parent, ("nodes", "workloads"), "parent")
        page = await self.rt.run(
            node_uptime.list_transitions,
            who,
            kind,
            parent_id,
            PageRequest.of(request.page_size, request.page_token),
        )
        return node_pb2.ListTransitionsResponse(
            transitions=[transition_to_proto(t) for t in page.items], next_page_token=page.next_token
        )

    # -- maintenance --

    async def CreateMaintenanceWindow(
        self, request: node_pb2.CreateMaintenanceWindowRequest, context: Any
    ) -> node_pb2.CreateMaintenanceWindowResponse:
        who = require_user()
        kind, target_id = parse_parent(request.target, ("nodes", "projects"), "target")
        missing = [f for f in ("start_time", "end_time") if not request.HasField(f)]
        if missing:
            raise InvalidArgument(
                f"required: {', '.join(missing)}", violations=[FieldViolation(f, "required") for f in missing]
            )
        window = await self.rt.run(
            node_uptime.create_maintenance_window,
            self.rt,
            who,
            kind,
            target_id,
            from_ts(request.start_time),
            from_ts(request.end_time),
            request.reason,
        )
        return node_pb2.CreateMaintenanceWindowResponse(maintenance_window=window_to_proto(window))

    async def ListMaintenanceWindows(
        self, request: node_pb2.ListMaintenanceWindowsRequest, context: Any
    ) -> node_pb2.ListMaintenanceWindowsResponse:
        who = require_user()
        kind, target_id = parse_parent(request.target, ("nodes", "projects"), "target")
        page = await self.rt.run(
            node_uptime.list_maintenance_windows,
            who,
            kind,
            target_id,
            PageRequest.of(request.page_size, request.page_token),
        )
        return node_pb2.ListMaintenanceWindowsResponse(
            maintenance_windows=[window_to_proto(w) for w in page.items], next_page_token=page.next_token
        )

    # -- channels --

    async def CreateChannel(
        self, request: node_pb2.CreateChannelRequest, context: Any
    ) -> node_pb2.CreateChannelResponse:
        who = require_user()
        channel, secret = await self.rt.run(
            outbox.create_channel,
            self.rt,
            who,
            request.display_name,
            request.url,
            request.secret,
            list(request.event_types),
        )
        return node_pb2.CreateChannelResponse(channel=channel_to_proto(channel), secret=secret)

    async def ListChannels(
        self, request: node_pb2.ListChannelsRequest, context: Any
    ) -> node_pb2.ListChannelsResponse:
        who = require_user()
        page = await self.rt.run(
            outbox.list_channels, who, PageRequest.of(request.page_size, request.page_token)
        )
        return node_pb2.ListChannelsResponse(
            channels=[channel_to_proto(c) for c in page.items], next_page_token=page.next_token
        )

    async def DeleteChannel(
        self, request: node_pb2.DeleteChannelRequest, context: Any
    ) -> node_pb2.DeleteChannelResponse:
        who = require_user()
        await self.rt.run(outbox.delete_channel, self.rt, who, parse_name(request.name, "channels"))
        return node_pb2.DeleteChannelResponse()

    async def TestChannel(
        self, request: node_pb2.TestChannelRequest, context: Any
    ) -> node_pb2.TestChannelResponse:
        who = require_user()
        delivery = await self.rt.run(outbox.test_channel, self.rt, who, parse_name(request.name, "channels"))
        return node_pb2.TestChannelResponse(delivery=delivery_to_proto(delivery))

    async def ListDeliveries(
        self, request: node_pb2.ListDeliveriesRequest, context: Any
    ) -> node_pb2.ListDeliveriesResponse:
        who = require_user()
        channel_id = parse_name(request.channel, "channels", "channel")
        page = await self.rt.run(
            outbox.list_deliveries, who, channel_id, PageRequest.of(request.page_size, request.page_token)
        )
        return node_pb2.ListDeliveriesResponse(
            deliveries=[delivery_to_proto(d) for d in page.items], next_page_token=page.next_token
        )

    # -- rewards --

    async def GetRewardBalance(
        self, request: node_pb2.GetRewardBalanceRequest, context: Any
    ) -> node_pb2.GetRewardBalanceResponse:
        who = require_user()
        owner_id = parse_name(request.owner, "users", "owner") if request.owner else ""
        owner, points, entries = await self.rt.run(node_uptime.reward_balance, who, owner_id)
        return node_pb2.GetRewardBalanceResponse(owner=f"users/{owner}", points=points, entries=entries)

    async def ListRewardEntries(
        self, request: node_pb2.ListRewardEntriesRequest, context: Any
    ) -> node_pb2.ListRewardEntriesResponse:
        who = require_user()
        owner_id = parse_name(request.owner, "users", "owner") if request.owner else ""
        page = await self.rt.run(
            node_uptime.list_reward_entries,
            who,
            owner_id,
            PageRequest.of(request.page_size, request.page_token),
        )
        return node_pb2.ListRewardEntriesResponse(
            entries=[reward_to_proto(e) for e in page.items], next_page_token=page.next_token
        )

    # -- watch --

    async def WatchNodes(
        self, request: node_pb2.WatchNodesRequest, context: Any
    ) -> AsyncIterator[node_pb2.WatchNodesResponse]:
        who = require_user()
        project_id = parse_name(request.project, "projects", "project")
        await self.rt.run(node.watchable_project, who, project_id)
        cursor = await self.rt.run(node_uptime.last_transition_id, project_id)
        # The interceptor has sent the headers already: the client knows the watch is live.
        key = node_state.nodes_key(project_id)
        while True:
            # Wait first, read second: a change committed while we read still wakes us.
            waiter = asyncio.ensure_future(self.rt.notifier.wait([key], WATCH_REFRESH_S))
            await asyncio.sleep(0)
            try:
                rows = await self.rt.run(node_uptime.transitions_after, project_id, cursor)
                for transition, current in rows:
                    cursor = transition.id
                    yield node_pb2.WatchNodesResponse(
                        transition=transition_to_proto(transition), node=node_to_proto(current)
                    )
                if not rows:
                    with contextlib.suppress(Exception):
                        await waiter
            finally:
                waiter.cancel()
