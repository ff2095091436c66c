"""NodeService: projects, nodes, workloads, heartbeats, uptime, incidents, maintenance,
rewards and WatchNodes; membership and key rotation come from api/node_members.py.
(Notification channels: NotificationService, api/notification.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from coordd.adapters.heartbeats import tracker_for
from coordd.api.convert import from_ts, parse_name
from coordd.api.node_beats import HeartbeatRpcs
from coordd.api.node_convert import (
    assignment_to_proto,
    health_from_proto,
    incident_to_proto,
    inventory_from_proto,
    mask_paths,
    node_to_proto,
    parse_parent,
    project_to_proto,
    resources_from_proto,
    reward_from_proto,
    reward_to_proto,
    status_from_proto,
    transition_to_proto,
    window_to_proto,
    workload_to_proto,
)
from coordd.api.node_members import MembershipRpcs
from coordd.api.node_monitoring import MonitoringRpcs, uptime_to_proto
from coordd.api.stream_ready import STREAM_READY, ready_first
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import node
from coordd.runtime import Runtime
from coordd_client.v1 import node_pb2, node_pb2_grpc

# Streams re-read state at least this often even when no event arrives.
WATCH_REFRESH_S = 5.0


class NodeServicer(HeartbeatRpcs, MembershipRpcs, MonitoringRpcs, node_pb2_grpc.NodeServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.tracker = tracker_for(rt)
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
        paths = mask_paths(
            request.update_mask, {"display_name", "health_policy", "reward_policy", "public_status"}
        )
        p = request.project
        project = await self.rt.run(
            node.update_project,
            self.rt,
            who,
            project_id,
            p.display_name if "display_name" in paths else None,
            health_from_proto(p.health_policy) if "health_policy" in paths else None,
            reward_from_proto(p.reward_policy) if "reward_policy" in paths else None,
            p.public_status if "public_status" in paths else None,
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

    async def _workload(self, w: node.Workload) -> node_pb2.Workload:
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

    # -- uptime, incidents, transitions --

    async def GetUptime(self, request: node_pb2.GetUptimeRequest, context: Any) -> node_pb2.GetUptimeResponse:
        who = require_user()
        kind, subject_id = parse_parent(request.name, ("nodes", "workloads"), "name")
        windows = await self.rt.run(node.get_uptime, self.rt, who, kind, subject_id, request.month)
        return node_pb2.GetUptimeResponse(name=request.name, windows=[uptime_to_proto(w) for w in windows])

    async def ListIncidents(
        self, request: node_pb2.ListIncidentsRequest, context: Any
    ) -> node_pb2.ListIncidentsResponse:
        who = require_user()
        kind, parent_id = parse_parent(request.parent, ("nodes", "workloads", "projects"), "parent")
        page = await self.rt.run(
            node.list_incidents,
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
            node.list_transitions,
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
            node.create_maintenance_window,
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
            node.list_maintenance_windows,
            who,
            kind,
            target_id,
            PageRequest.of(request.page_size, request.page_token),
        )
        return node_pb2.ListMaintenanceWindowsResponse(
            maintenance_windows=[window_to_proto(w) for w in page.items], next_page_token=page.next_token
        )

    # -- rewards --

    async def GetRewardBalance(
        self, request: node_pb2.GetRewardBalanceRequest, context: Any
    ) -> node_pb2.GetRewardBalanceResponse:
        who = require_user()
        owner_id = parse_name(request.owner, "users", "owner") if request.owner else ""
        owner, points, entries = await self.rt.run(node.reward_balance, who, owner_id)
        return node_pb2.GetRewardBalanceResponse(owner=f"users/{owner}", points=points, entries=entries)

    async def ListRewardEntries(
        self, request: node_pb2.ListRewardEntriesRequest, context: Any
    ) -> node_pb2.ListRewardEntriesResponse:
        who = require_user()
        owner_id = parse_name(request.owner, "users", "owner") if request.owner else ""
        page = await self.rt.run(
            node.list_reward_entries,
            who,
            owner_id,
            PageRequest.of(request.page_size, request.page_token),
        )
        return node_pb2.ListRewardEntriesResponse(
            entries=[reward_to_proto(e) for e in page.items], next_page_token=page.next_token
        )

    # -- watch --

    @ready_first
    async def WatchNodes(self, request: node_pb2.WatchNodesRequest, context: Any) -> AsyncIterator[Any]:
        who = require_user()
        project_id = parse_name(request.project, "projects", "project")
        await self.rt.run(node.watchable_project, who, project_id)
        cursor = await self.rt.run(node.last_transition_id, project_id)
        # Live from here: the pipeline sends the headers now (the client may act on them).
        yield STREAM_READY
        key = node.nodes_key(project_id)
        while True:
            # Wait first, read second: a change committed while we read still wakes us.
            waiter = asyncio.ensure_future(self.rt.notifier.wait([key], WATCH_REFRESH_S))
            await asyncio.sleep(0)
            try:
                rows = await self.rt.run(node.transitions_after, project_id, cursor)
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
